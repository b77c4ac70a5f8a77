"""``no_grad()``: forwards that will not be followed by backward (evaluation, a KD teacher).

Under it, modules keep nothing for backward (less memory), and the backbones fold each
eval-mode BatchNorm into the convolution before it (one pass instead of two).
"""
import threading

_state = threading.local()


def is_grad_enabled():
    """False inside a ``no_grad()`` block (per thread)."""
    return getattr(_state, "enabled", True)


class no_grad:
    """Context manager: ``with dtkd.nn.no_grad(): logits = teacher(x)``."""

    def __enter__(self):
        self._previous = is_grad_enabled()
        _state.enabled = False
        return self

    def __exit__(self, *exc):
        _state.enabled = self._previous
        return False
