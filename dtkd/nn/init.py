"""Weight initialisation like PyTorch's, drawn from a seeded NumPy Generator.

Every layer takes ``rng`` (a ``numpy.random.Generator``); when it is None the layer draws from
this module's default generator, seeded with 0 at import and reseeded by ``manual_seed``.
"""
import math

import numpy as np

_default_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the default generator used by layers built without an explicit ``rng``."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def get_rng(rng):
    if rng is None:
        return _default_rng
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def fans(shape):
    """(fan_in, fan_out) of a weight in PyTorch layout: linear (out, in), conv (O, I/groups, kh, kw)."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform_fan_in(shape, fan_in, rng):
    """PyTorch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (kaiming_uniform with a=sqrt(5) reduces to this bound)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def kaiming_normal(shape, rng, mode="fan_out"):
    """torch.nn.init.kaiming_normal_(w, mode=mode, nonlinearity="relu"): N(0, 2 / fan)."""
    fan_in, fan_out = fans(shape)
    fan = fan_out if mode == "fan_out" else fan_in
    return (rng.standard_normal(size=shape) * math.sqrt(2.0 / fan)).astype(np.float32)
