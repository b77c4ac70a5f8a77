"""The one input check every backbone runs at its boundary (finiteness is checked here, once,
not per layer)."""
import numpy as np


def check_images(x, in_channels, min_size, max_size, fit_hint):
    """Raise a clear error unless ``x`` is a finite float32 C-contiguous (N, C, H, W) batch with
    ``in_channels`` channels and both spatial sizes in ``min_size..max_size`` (``max_size`` None:
    no upper bound); ``fit_hint`` ends the spatial-size message (why those sizes)."""
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
    for size in x.shape[2:]:
        if size < min_size or (max_size is not None and size > max_size):
            raise ValueError(f"x: spatial size {x.shape[2]}x{x.shape[3]} does not fit {fit_hint}")
    if not x.flags.c_contiguous:
        raise ValueError("x: expected a C-contiguous array (use numpy.ascontiguousarray(x))")
    if not np.isfinite(x).all():
        raise ValueError("x: contains NaN or Inf")
    return x
