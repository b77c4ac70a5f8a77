"""Argument conversion and checks shared by the Python layer.

Everything that reaches dtkd._C goes through these: array-likes become float32 (or int64)
C-contiguous arrays, and bad input raises an exception that names the argument.
"""
import numbers

import numpy as np


def as_float32(x, name, ndim=None, finite=True):
    """Convert an array-like to a float32 C-contiguous ndarray, checking ndim and finiteness."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name}: cannot convert to a numeric array ({e})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name}: complex values are not supported")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got {arr.ndim}-D with shape {arr.shape}")
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if finite and not np.isfinite(out).all():
        raise ValueError(f"{name}: values overflow float32 (Inf after conversion)")
    return out


def as_labels(y, name, n, num_classes):
    """Convert labels to int64 C-contiguous of shape (n,), each in [0, num_classes)."""
    if isinstance(y, (str, bytes)) or y is None:
        raise TypeError(f"{name}: expected an integer array, got {type(y).__name__}")
    arr = np.asarray(y)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise TypeError(f"{name}: expected integer class labels, got non-integer floats")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        bad = arr[(arr < 0) | (arr >= num_classes)][0]
        raise ValueError(f"{name}: labels must be in [0, {num_classes}), found {bad}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_positive_float(x, name):
    """A finite float > 0 (temperatures, warmup)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name}: must be finite and > 0, got {x}")
    return x


#: float32's largest finite value and the smallest temperature whose inverse is a float32: the
#: range a value handed to the float32 kernels must lie in.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def as_float32_temperature(x, name):
    """A temperature the float32 kernels can use: finite, > 0, in [1.2e-38, 3.4e38]."""
    x = as_positive_float(x, name)
    if not FLOAT32_TINY <= x <= FLOAT32_MAX:
        raise ValueError(f"{name}: {x:g} is outside float32's range for a temperature "
                         f"[{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}] (the loss kernels compute in "
                         "float32)")
    return x


def as_float32_weight(x, name):
    """A finite real number within float32's range (a loss weight the kernels multiply by)."""
    x = as_float(x, name)
    if abs(x) > FLOAT32_MAX:
        raise ValueError(f"{name}: {x:g} is beyond float32's range (|x| <= {FLOAT32_MAX:.3g}; "
                         "the loss kernels compute in float32)")
    return x


def as_float(x, name):
    """A finite real number (loss weights, epoch)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x):
        raise ValueError(f"{name}: must be finite, got {x}")
    return x


def check_normalization(mean, std, scale=255.0):
    """Per-channel ``mean``, ``std`` (tuples of floats) that the float32 kernels can apply as
    ``(v / scale - mean) / std`` for v in [0, scale]: finite, std > 0, and every normalized value
    -- including the multiplier ``1 / (scale * std)`` -- finite in float32. ValueError naming
    ``mean`` or ``std`` otherwise (std=1e-40 made every batch inf)."""
    for c, (m, s) in enumerate(zip(mean, std)):
        if not np.isfinite(m) or abs(m) > FLOAT32_MAX:
            raise ValueError(f"mean: channel {c}: {m:g} is not a finite float32")
        if not np.isfinite(s) or not s > 0:
            raise ValueError(f"std: channel {c}: must be finite with std > 0, got {s:g}")
        with np.errstate(all="ignore"):
            s32 = np.float32(s)
            reciprocals = (np.float32(1.0) / s32, np.float32(1.0) / (np.float32(scale) * s32))
        if not all(np.isfinite(r) and r > 0 for r in reciprocals):
            raise ValueError(f"std: channel {c}: {s:g} is outside float32's usable range: its "
                             f"reciprocal (1 / std or 1 / ({scale:g} std)) is not a finite "
                             f"nonzero float32 (normalized pixels would be inf or 0)")
        largest = max(abs(m), abs(1.0 - m)) / s
        if largest > FLOAT32_MAX:
            raise ValueError(f"std: channel {c}: {s:g} with mean {m:g} normalizes pixels to "
                             f"{largest:.3g}, beyond float32's range (|x| <= {FLOAT32_MAX:.3g})")


def nesting_depth(tree, limit):
    """How deeply ``tree``'s dicts, lists and tuples nest (a scalar: 0, ``{"a": 1}``: 1), without
    recursion on any input. Shared nodes (YAML aliases: a bomb shares one list a billion times)
    are measured once; the walk stops as soon as the depth passes ``limit``, and a structure
    that contains itself counts as deeper than ``limit``. Used by the config and checkpoint
    readers and writers, whose trees come from files."""
    kinds = (dict, list, tuple)

    def children(node):
        return [c for c in (node.values() if isinstance(node, dict) else node)
                if isinstance(c, kinds)]

    height, open_nodes, stack = {}, set(), [(tree, False)]
    while stack:
        node, finished = stack.pop()
        if not isinstance(node, kinds):
            continue
        key = id(node)
        if finished:
            open_nodes.discard(key)
            height[key] = 1 + max((height[id(c)] for c in children(node)), default=0)
            if height[key] > limit:
                return height[key]
        elif key in open_nodes:
            return limit + 1  # a recursive structure (&a [*a], or a list holding itself)
        elif key not in height:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children(node))
    return height.get(id(tree), 0)
