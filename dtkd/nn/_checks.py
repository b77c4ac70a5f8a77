"""Cheap per-layer input checks, so a wrong input fails with a message naming the layer and
the argument instead of deep inside a kernel. (Finiteness is checked once, at the model
boundary: scanning every activation would cost a pass over memory per layer.)"""
import numpy as np


def check_activation(x, name, layer, ndim, channels=None, channel_axis=1):
    """Require a float32 C-contiguous ndarray with `ndim` dims (and `channels` on axis 1)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: {name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{layer}: {name} must have dtype float32, got {x.dtype} "
                        f"(use {name}.astype(numpy.float32))")
    if x.ndim != ndim:
        raise ValueError(f"{layer}: {name} must be {ndim}-D, got shape {x.shape}")
    if channels is not None and x.shape[channel_axis] != channels:
        raise ValueError(f"{layer}: {name} must have {channels} channels on axis {channel_axis}, "
                         f"got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{layer}: {name} is empty (shape {x.shape})")
    if not x.flags.c_contiguous:
        raise ValueError(f"{layer}: {name} must be C-contiguous (use numpy.ascontiguousarray({name}))")
    return x


def check_grad(grad_out, expected_shape, layer):
    """The gradient coming back must match the forward output; converted to float32 C order."""
    if not isinstance(grad_out, np.ndarray):
        raise TypeError(f"{layer}: grad_out must be a numpy.ndarray, got {type(grad_out).__name__}")
    if grad_out.shape != tuple(expected_shape):
        raise ValueError(f"{layer}: grad_out must have the forward output's shape {tuple(expected_shape)}, "
                         f"got {grad_out.shape}")
    if grad_out.dtype.kind != "f":
        raise TypeError(f"{layer}: grad_out must be a float array, got dtype {grad_out.dtype}")
    return np.ascontiguousarray(grad_out, dtype=np.float32)


def check_positive_int(v, name, layer, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{layer}: {name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {v}")
    return int(v)


def pair(v, name, layer, minimum):
    """An int or a pair of ints -> (h, w), each >= minimum."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{layer}: {name} must be an int or a pair, got {v!r}")
        return (check_positive_int(v[0], name, layer, minimum), check_positive_int(v[1], name, layer, minimum))
    v = check_positive_int(v, name, layer, minimum)
    return (v, v)
