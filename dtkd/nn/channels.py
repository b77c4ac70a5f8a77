"""Channel concatenation, split and shuffle (ShuffleNet's ``torch.cat(dim=1)``, ``x[:, :c]`` /
``x[:, c:]`` and ``ShuffleBlock``), by one C kernel (csrc/kernels/channels.c) that gathers
whole (n, c) planes: ``y = shuffle_groups(cat(parts))``. A part is an array or a channel range
``(array, start, stop)`` of one, read in place, so a split half goes into a concatenation, and
a concatenation's gradient comes back into a slice of a larger gradient, without extra copies.

Channel shuffle with ``g`` groups: ``x.reshape(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)
.reshape(N, C, H, W)``; its inverse is the shuffle with ``C/g`` groups.
"""
import numpy as np

from .. import _C
from ._checks import check_activation, check_grad, check_positive_int
from .module import Module

__all__ = ["concat_shuffle", "concat_shuffle_backward", "channel_slice", "ChannelShuffle"]


def _part(part, i, layer):
    array, start, stop = part if isinstance(part, tuple) else (part, 0, None)
    check_activation(array, f"parts[{i}]", layer, 4)
    stop = array.shape[1] if stop is None else stop
    if not 0 <= start < stop <= array.shape[1]:
        raise ValueError(f"{layer}: parts[{i}]: channels [{start}, {stop}) are not a non-empty "
                         f"range of its {array.shape[1]}")
    return array, int(start), int(stop - start)


def concat_shuffle(parts, groups=1):
    """``shuffle_groups(cat(parts, axis=1))`` as a new (N, C, H, W) array; each part an NCHW
    float32 array or ``(array, start, stop)`` for ``array[:, start:stop]``. ``groups=1``: a
    plain concatenation; one part: a contiguous copy of a channel slice."""
    triples = [_part(p, i, "concat_shuffle") for i, p in enumerate(parts)]
    return _C.concat_shuffle_forward(triples, check_positive_int(groups, "groups", "concat_shuffle"))


def concat_shuffle_backward(grad_out, parts, groups=1):
    """Gradient of :func:`concat_shuffle` with respect to each part, written in place: each
    entry of ``parts`` is a channel count (a new (N, count, H, W) array is returned for it) or
    ``(array, start, stop)`` (its gradient is written into ``array[:, start:stop]``, and the
    array is returned). Returns the list of arrays, one per part."""
    dy = check_grad(grad_out, grad_out.shape if isinstance(grad_out, np.ndarray) else (),
                    "concat_shuffle")
    if dy.ndim != 4:
        raise ValueError(f"concat_shuffle: grad_out must be 4-D, got shape {dy.shape}")
    n, _, h, w = dy.shape
    arrays, triples = [], []
    for i, part in enumerate(parts):
        if not isinstance(part, tuple):
            part = (np.empty((n, check_positive_int(part, f"parts[{i}]", "concat_shuffle"), h, w),
                             dtype=np.float32), 0, None)
        triples.append(_part(part, i, "concat_shuffle"))
        arrays.append(part[0])
    _C.concat_shuffle_backward(dy, triples, check_positive_int(groups, "groups", "concat_shuffle"))
    return arrays


def channel_slice(x, start, stop):
    """``x[:, start:stop]`` as a C-contiguous copy (the input a split branch's conv reads)."""
    return concat_shuffle([(x, start, stop)], 1)


class ChannelShuffle(Module):
    """``ChannelShuffle(groups)``: mdistiller's ``ShuffleBlock`` (no parameters)."""

    def __init__(self, groups):
        super().__init__()
        self.groups = check_positive_int(groups, "groups", "ChannelShuffle")
        self._saved = None

    def forward(self, x):
        check_activation(x, "x", "ChannelShuffle", 4)
        if x.shape[1] % self.groups:
            raise ValueError(f"ChannelShuffle: x's {x.shape[1]} channels are not divisible by "
                             f"groups ({self.groups})")
        self._save_for_backward(x.shape)
        return _C.concat_shuffle_forward([(x, 0, x.shape[1])], self.groups)

    def backward(self, grad_out):
        shape = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, shape, "ChannelShuffle")
        self._saved = None
        dx = np.empty(shape, dtype=np.float32)
        _C.concat_shuffle_backward(dy, [(dx, 0, shape[1])], self.groups)
        return dx

    def extra_repr(self):
        return f"groups={self.groups}"
