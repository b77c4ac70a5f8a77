"""Optimizers. ``SGD`` reproduces ``torch.optim.SGD`` (momentum, dampening, weight decay,
Nesterov); the update of all parameters is one fused C call (``dtkd._C.sgd_step``)."""
import numpy as np

from . import _C
from ._validate import as_float

__all__ = ["SGD"]


class SGD:
    """Stochastic gradient descent with torch.optim.SGD's exact semantics.

    ``params``: an iterable of :class:`dtkd.nn.Parameter` (e.g. ``model.parameters()``).
    Weight decay is added to the gradient before momentum; on the first step each momentum
    buffer is the (decayed) gradient itself. ``lr`` may be changed between steps
    (``opt.lr = ...``), as LR schedules do.
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        self.params = list(params)
        if not self.params:
            raise ValueError("params: got an empty parameter list")
        for i, p in enumerate(self.params):
            data = getattr(p, "data", None)
            if not isinstance(data, np.ndarray) or data.dtype != np.float32 or not data.flags.c_contiguous:
                raise TypeError(f"params[{i}]: expected a Parameter with float32 C-contiguous .data")
        self.lr = lr
        self.momentum = _non_negative(momentum, "momentum")
        self.dampening = as_float(dampening, "dampening")
        self.weight_decay = _non_negative(weight_decay, "weight_decay")
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov: expected a bool, got {type(nesterov).__name__}")
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening == 0")
        self.nesterov = nesterov
        # Momentum buffers are created on the first step (torch: buffer = first gradient).
        self.momentum_buffers = None

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _non_negative(value, "lr")

    def zero_grad(self):
        """Set every parameter's gradient to zero (in place: the arrays are reused)."""
        for p in self.params:
            p.grad.fill(0.0)

    def step(self):
        """Apply one update to every parameter from its ``.grad``, in place."""
        first_step = self.momentum != 0 and self.momentum_buffers is None
        if first_step:
            self.momentum_buffers = [np.zeros_like(p.data) for p in self.params]
        _C.sgd_step([p.data for p in self.params], [p.grad for p in self.params],
                    self.momentum_buffers if self.momentum != 0 else None,
                    self._lr, self.momentum, self.dampening, self.weight_decay, self.nesterov,
                    first_step)

    def state_dict(self):
        """Hyper-parameters and momentum buffers (copies), indexed like ``self.params``."""
        return {
            "lr": self._lr, "momentum": self.momentum, "dampening": self.dampening,
            "weight_decay": self.weight_decay, "nesterov": self.nesterov,
            "momentum_buffers": (None if self.momentum_buffers is None
                                 else [b.copy() for b in self.momentum_buffers]),
        }

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (buffer shapes must match the params)."""
        missing = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "momentum_buffers"} - set(state)
        if missing:
            raise KeyError(f"state: missing keys {sorted(missing)}")
        buffers = state["momentum_buffers"]
        if buffers is not None:
            if len(buffers) != len(self.params):
                raise ValueError(f"state['momentum_buffers']: expected {len(self.params)} arrays, got {len(buffers)}")
            buffers = [np.array(b, dtype=np.float32, order="C") for b in buffers]
            for i, (b, p) in enumerate(zip(buffers, self.params)):
                if b.shape != p.data.shape:
                    raise ValueError(f"state['momentum_buffers'][{i}]: expected shape {p.data.shape}, got {b.shape}")
        nesterov = state["nesterov"]
        if nesterov and (state["momentum"] <= 0 or state["dampening"] != 0):
            raise ValueError("state['nesterov']: requires momentum > 0 and dampening == 0")
        self.lr = state["lr"]
        self.momentum = _non_negative(state["momentum"], "state['momentum']")
        self.dampening = as_float(state["dampening"], "state['dampening']")
        self.weight_decay = _non_negative(state["weight_decay"], "state['weight_decay']")
        self.nesterov = bool(nesterov)
        self.momentum_buffers = buffers


def _non_negative(x, name):
    x = as_float(x, name)
    if x < 0:
        raise ValueError(f"{name}: must be >= 0, got {x}")
    return x
