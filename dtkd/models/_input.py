"""The input check every CIFAR backbone runs once at its boundary (finiteness is checked here,
not per layer)."""
import numpy as np


def check_cifar_input(x, in_channels, sizes, model):
    """Raise a clear error unless ``x`` is a finite float32 C-contiguous (N, in_channels, H, W)
    batch with H and W in ``sizes`` (a range: the sizes for which the backbone's last pooling
    sees the map PyTorch's model does); ``model`` names the backbone in messages."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"x: expected dtype float32, got {x.dtype} (use x.astype(numpy.float32))")
    if x.ndim != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) batch, got shape {x.shape}")
    if x.shape[1] != in_channels:
        raise ValueError(f"x: expected {in_channels} channels (axis 1), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"x: empty batch (shape {x.shape})")
    if x.shape[2] not in sizes or x.shape[3] not in sizes:
        raise ValueError(f"x: spatial size {x.shape[2]}x{x.shape[3]} does not fit {model} "
                         f"(sizes {sizes.start}..{sizes.stop - 1} work; it is built for 32x32)")
    if not x.flags.c_contiguous:
        raise ValueError("x: expected a C-contiguous array (use numpy.ascontiguousarray(x))")
    if not np.isfinite(x).all():
        raise ValueError("x: contains NaN or Inf")
    return x
