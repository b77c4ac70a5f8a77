"""Fully connected layer, and the shape-only modules Flatten and Identity."""
import numpy as np

from .. import _C
from . import init
from ._checks import check_activation, check_grad, check_positive_int
from .module import Module, Parameter


class Linear(Module):
    """``Linear(in_features, out_features, bias=True, rng=None)``: y = x W^T + b, W (out, in).
    Initialised like PyTorch's default: weight and bias uniform in +-1/sqrt(in_features)."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features", "Linear")
        self.out_features = check_positive_int(out_features, "out_features", "Linear")
        rng = init.get_rng(rng)
        self.weight = Parameter(init.uniform_fan_in((out_features, in_features), in_features, rng))
        self.bias = Parameter(init.uniform_fan_in((out_features,), in_features, rng)) if bias else None
        self._saved = None

    def forward(self, x):
        check_activation(x, "x", "Linear", 2, self.in_features)
        y = _C.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        self._save_for_backward(x)
        return y

    def backward(self, grad_out):
        x = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, (x.shape[0], self.out_features), "Linear")
        dx = _C.linear_backward(dy, x, self.weight.data, self.weight.grad,
                                None if self.bias is None else self.bias.grad)
        self._saved = None
        return dx

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...), a view; backward restores the shape."""

    def __init__(self):
        super().__init__()
        self._saved = None

    def forward(self, x):
        check_activation(x, "x", "Flatten", x.ndim if hasattr(x, "ndim") else -1)
        self._save_for_backward(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        shape = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, (shape[0], int(np.prod(shape[1:]))), "Flatten")
        self._saved = None
        return dy.reshape(shape)


class Identity(Module):
    """Returns its input; its gradient passes through unchanged."""

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out
