"""Batch normalisation over NCHW activations (``torch.nn.BatchNorm2d``)."""
import numpy as np

from .. import _C
from .._validate import as_float, as_positive_float
from ._checks import check_activation, check_grad, check_positive_int
from .module import Module, Parameter


class BatchNorm2d(Module):
    """``BatchNorm2d(num_features, eps=1e-5, momentum=0.1)`` with affine weight (1) and bias (0).

    Training mode normalises with batch statistics and updates ``running_mean`` and
    ``running_var`` in place (running = (1 - momentum) * running + momentum * batch, the
    variance unbiased) and counts ``num_batches_tracked``; eval mode uses the running statistics.
    """

    _nonnegative_state = ("running_var",)  # load_state_dict refuses a negative variance

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = check_positive_int(num_features, "num_features", "BatchNorm2d")
        self.eps = as_positive_float(eps, "BatchNorm2d: eps")
        self.momentum = as_float(momentum, "BatchNorm2d: momentum")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"BatchNorm2d: momentum must be in [0, 1], got {momentum}")
        self.weight = Parameter(np.ones(num_features, dtype=np.float32))
        self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=np.float32))
        self.register_buffer("running_var", np.ones(num_features, dtype=np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        self._saved = None

    def forward(self, x, residual=None, relu=False):
        """``bn(x)``, or ``relu?(bn(x) + residual)`` when ``residual``/``relu`` are given (a
        ResNet block's tail, one fused pass in training). With a residual, ``backward`` returns
        ``(dx, d_residual)``."""
        check_activation(x, "x", "BatchNorm2d", 4, self.num_features)
        if residual is not None:
            check_activation(residual, "residual", "BatchNorm2d", 4, self.num_features)
            if residual.shape != x.shape:
                raise ValueError(f"BatchNorm2d: residual must have x's shape {x.shape}, "
                                 f"got {residual.shape}")
        if self.training:
            if x.shape[0] * x.shape[2] * x.shape[3] < 2:
                raise ValueError(f"BatchNorm2d: training needs more than one value per channel, "
                                 f"got x of shape {x.shape}")
            y, mean, invstd = _C.batchnorm2d_forward_train(
                x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                self.momentum, self.eps, residual, bool(relu))
            self.num_batches_tracked += 1
        else:
            y = _C.batchnorm2d_forward_eval(x, self.weight.data, self.bias.data, self.running_mean,
                                            self.running_var, self.eps)
            if residual is not None:
                y = _C.add_relu_forward(y, residual) if relu else _C.add_forward(y, residual)
            elif relu:
                y = _C.relu_forward(y)
            # Eval normalises with fixed statistics: an affine map whose backward is a scale.
            invstd = (1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)).astype(np.float32)
            mean = self.running_mean.copy()
        self._save_for_backward((x, mean, invstd, self.training, y if relu else None,
                                 residual is not None))
        return y

    def backward(self, grad_out):
        """dL/dx, or ``(dL/dx, dL/dresidual)`` after a forward with a residual."""
        x, mean, invstd, training, y, has_residual = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, x.shape, "BatchNorm2d")
        if training:
            dx, d_residual = _C.batchnorm2d_act_backward(
                dy, y, x, self.weight.data, mean, invstd, self.weight.grad, self.bias.grad,
                has_residual)
        else:
            g = dy if y is None else _C.relu_backward(dy, y)
            dx, d_residual = _eval_backward(g, x, self.weight, self.bias, mean, invstd), g
        self._saved = None
        return (dx, d_residual) if has_residual else dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def _eval_backward(dy, x, weight, bias, mean, invstd):
    """Backward of y = (x - mean) * invstd * gamma + beta with mean and invstd constants
    (eval mode; rare, so NumPy rather than a kernel)."""
    xhat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
    weight.grad += np.einsum("nchw,nchw->c", dy, xhat, dtype=np.float64).astype(np.float32)
    bias.grad += dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(dy * (weight.data * invstd)[None, :, None, None], dtype=np.float32)
