"""Element-wise activations."""
from .. import _C
from ._checks import check_activation, check_grad
from .module import Module


class ReLU(Module):
    """``max(x, 0)`` on an array of any shape (float32, C-contiguous)."""

    def __init__(self):
        super().__init__()
        self._saved = None

    def forward(self, x):
        check_activation(x, "x", "ReLU", x.ndim if hasattr(x, "ndim") else -1)
        y = _C.relu_forward(x)
        self._save_for_backward(y)  # the output says where the gradient passes
        return y

    def backward(self, grad_out):
        y = self._saved_for_backward(self._saved)
        dx = _C.relu_backward(check_grad(grad_out, y.shape, "ReLU"), y)
        self._saved = None
        return dx
