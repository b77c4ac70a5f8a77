"""dtkd's C losses inside PyTorch: autograd Functions and ``nn.Module`` criteria for CPU tensors.

Drop the DTKD loss into an existing PyTorch training loop::

    import torch, dtkd.torch
    criterion = dtkd.torch.DTKDObjective(alpha=3.0, beta=1.0, gamma=1.0, temperature=4.0, warmup=20)
    for epoch in range(1, epochs + 1):
        for x, y in loader:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = criterion(student(x), teacher_logits, y, epoch=epoch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    criterion.last_result.t_student   # that batch's per-sample temperatures (NumPy), .dtkd, .kd, .ce

Forward runs the kernel behind :mod:`dtkd.losses` on the tensors' memory — zero-copy for
float32 C-contiguous CPU tensors (``Tensor.numpy()`` shares it), converted otherwise — and
returns the loss as a tensor of the student's dtype. Backward returns the kernel's exact
gradient with respect to the student logits (for DTKD: through the temperatures, as the official
code, unless ``detach_temperature=True``), scaled by the incoming gradient; the teacher logits
and the labels get none, as in mdistiller where the teacher runs under ``torch.no_grad()``.
The kernel computes in float32 whatever the input dtype.

Functions (same names and arguments as :mod:`dtkd.losses`, returning a tensor): :func:`dtkd`,
:func:`kd`, :func:`dkd`, :func:`cross_entropy`, :func:`dtkd_objective`, :func:`dkd_objective`.
Modules (keep the last :class:`dtkd.losses.LossResult` in ``last_result``): :class:`DTKDLoss`,
:class:`KDLoss`, :class:`DKDLoss`, :class:`DTKDObjective`, :class:`DKDObjective`.

This module imports torch; the rest of dtkd never does.
"""
try:
    import torch
except ImportError as _error:
    raise ImportError("dtkd.torch needs PyTorch (`pip install torch`, a CPU wheel is enough); "
                      "the rest of dtkd, NumPy API included, works without it") from _error

from torch.autograd.function import once_differentiable

from . import losses as _losses

__all__ = ["dtkd", "kd", "dkd", "cross_entropy", "dtkd_objective", "dkd_objective",
           "DTKDLoss", "KDLoss", "DKDLoss", "DTKDObjective", "DKDObjective", "LossFunction"]


def _check_cpu_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name}: dtkd's kernels run on the CPU, got a tensor on {x.device}; "
                         "move it with .cpu() (dtkd.torch is for CPU training)")
    if x.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense tensor, got layout {x.layout}")


def _logits(x, name):
    """A float32 C-contiguous NumPy view of ``x`` (a copy only if dtype or layout differ)."""
    _check_cpu_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating-point logits, got {x.dtype}")
    x = x.detach()
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return x.contiguous().numpy()


def _labels(y):
    if y is None:
        return None
    _check_cpu_tensor(y, "labels")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor (class indices), got {y.dtype}")
    y = y.detach()
    if y.dtype != torch.int64:
        y = y.to(torch.int64)
    return y.contiguous().numpy()


class LossFunction(torch.autograd.Function):
    """``apply(student, teacher, labels, compute, sink)``: the loss ``compute(s, t, y)`` (a
    :mod:`dtkd.losses` call on NumPy arrays) as a tensor, differentiable in ``student``.
    ``sink`` (a list or None) receives the :class:`~dtkd.losses.LossResult`."""

    @staticmethod
    def forward(ctx, student, teacher, labels, compute, sink):
        s = _logits(student, "student")
        t = _logits(teacher, "teacher") if teacher is not None else None
        result = compute(s, t, _labels(labels))
        if sink is not None:
            sink.append(result)
        ctx.grad = torch.from_numpy(result.grad)  # shares the kernel's output, no copy
        ctx.student_dtype = student.dtype
        return torch.as_tensor(result.loss, dtype=student.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad = ctx.grad
        if grad_output.dim() == 1:  # reduction='none': one incoming gradient per sample
            grad = grad * grad_output.to(grad.dtype).unsqueeze(1)
        else:
            grad = grad * grad_output.to(grad.dtype)
        return grad.to(ctx.student_dtype), None, None, None, None


def _apply(compute, student, teacher, labels=None, sink=None):
    return LossFunction.apply(student, teacher, labels, compute, sink)


# ---- functions: dtkd.losses' names and arguments, tensors in and out ----

def cross_entropy(logits, labels, reduction="mean", _sink=None):
    """Cross-entropy of (N, C) logits with integer labels (see :func:`dtkd.losses.cross_entropy`)."""
    return _apply(lambda s, t, y: _losses.cross_entropy(s, y, reduction=reduction),
                  logits, None, labels, _sink)


def kd(student, teacher, temperature=4.0, reduction="mean", _sink=None):
    """Vanilla KD, ``T^2 KL(softmax(t/T) || softmax(s/T))`` (see :func:`dtkd.losses.kd`)."""
    return _apply(lambda s, t, y: _losses.kd(s, t, temperature, reduction), student, teacher,
                  None, _sink)


def dtkd(student, teacher, temperature=4.0, detach_temperature=False, reduction="mean",
         _sink=None):
    """The DTKD loss with per-sample temperatures (see :func:`dtkd.losses.dtkd`)."""
    return _apply(lambda s, t, y: _losses.dtkd(s, t, temperature, detach_temperature, reduction),
                  student, teacher, None, _sink)


def dkd(student, teacher, labels, alpha=1.0, beta=8.0, temperature=4.0, reduction="mean",
        dynamic_temperature=None, detach_temperature=False, _sink=None):
    """DKD, ``alpha TCKD + beta NCKD`` (see :func:`dtkd.losses.dkd`)."""
    return _apply(lambda s, t, y: _losses.dkd(s, t, y, alpha, beta, temperature, reduction,
                                              dynamic_temperature, detach_temperature),
                  student, teacher, labels, _sink)


def dtkd_objective(student, teacher, labels, alpha=3.0, beta=1.0, gamma=1.0, temperature=4.0,
                   epoch=1, warmup=20, detach_temperature=False, _sink=None):
    """The official DTKD trainer's loss, ``min(epoch/warmup, 1)(alpha L_DTKD + beta L_KD) +
    gamma L_CE`` (see :func:`dtkd.losses.dtkd_objective`)."""
    return _apply(lambda s, t, y: _losses.dtkd_objective(s, t, y, alpha, beta, gamma, temperature,
                                                         epoch, warmup, detach_temperature),
                  student, teacher, labels, _sink)


def dkd_objective(student, teacher, labels, alpha=1.0, beta=8.0, gamma=1.0, temperature=4.0,
                  epoch=1, warmup=20, dynamic_temperature=None, detach_temperature=False,
                  _sink=None):
    """mdistiller's DKD trainer loss (see :func:`dtkd.losses.dkd_objective`)."""
    return _apply(lambda s, t, y: _losses.dkd_objective(s, t, y, alpha, beta, gamma, temperature,
                                                        epoch, warmup, dynamic_temperature,
                                                        detach_temperature),
                  student, teacher, labels, _sink)


# ---- modules ----

class _Criterion(torch.nn.Module):
    """Holds the loss's options; ``last_result`` is the LossResult of the last call."""

    _function = None

    def __init__(self, **options):
        super().__init__()
        self.options = options
        self.last_result = None

    def _run(self, *args, **call_options):
        sink = []
        loss = type(self)._function(*args, **self.options, **call_options, _sink=sink)
        self.last_result = sink[0]
        return loss

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class KDLoss(_Criterion):
    """``KDLoss(temperature=4.0, reduction='mean')(student, teacher)``: vanilla KD."""
    _function = staticmethod(kd)

    def __init__(self, temperature=4.0, reduction="mean"):
        super().__init__(temperature=temperature, reduction=reduction)

    def forward(self, student, teacher):
        return self._run(student, teacher)


class DTKDLoss(_Criterion):
    """``DTKDLoss(temperature=4.0, detach_temperature=False, reduction='mean')(student,
    teacher)``: the DTKD term alone."""
    _function = staticmethod(dtkd)

    def __init__(self, temperature=4.0, detach_temperature=False, reduction="mean"):
        super().__init__(temperature=temperature, detach_temperature=detach_temperature,
                         reduction=reduction)

    def forward(self, student, teacher):
        return self._run(student, teacher)


class DKDLoss(_Criterion):
    """``DKDLoss(alpha=1.0, beta=8.0, temperature=4.0, ...)(student, teacher, labels)``."""
    _function = staticmethod(dkd)

    def __init__(self, alpha=1.0, beta=8.0, temperature=4.0, reduction="mean",
                 dynamic_temperature=None, detach_temperature=False):
        super().__init__(alpha=alpha, beta=beta, temperature=temperature, reduction=reduction,
                         dynamic_temperature=dynamic_temperature,
                         detach_temperature=detach_temperature)

    def forward(self, student, teacher, labels):
        return self._run(student, teacher, labels)


class DTKDObjective(_Criterion):
    """The official DTKD training loss; ``forward(student, teacher, labels, epoch)`` (epochs
    count from 1, as in mdistiller, for the warmup ramp)."""
    _function = staticmethod(dtkd_objective)

    def __init__(self, alpha=3.0, beta=1.0, gamma=1.0, temperature=4.0, warmup=20,
                 detach_temperature=False):
        super().__init__(alpha=alpha, beta=beta, gamma=gamma, temperature=temperature,
                         warmup=warmup, detach_temperature=detach_temperature)

    def forward(self, student, teacher, labels, epoch):
        return self._run(student, teacher, labels, epoch=epoch)


class DKDObjective(_Criterion):
    """mdistiller's DKD training loss; ``forward(student, teacher, labels, epoch)``."""
    _function = staticmethod(dkd_objective)

    def __init__(self, alpha=1.0, beta=8.0, gamma=1.0, temperature=4.0, warmup=20,
                 dynamic_temperature=None, detach_temperature=False):
        super().__init__(alpha=alpha, beta=beta, gamma=gamma, temperature=temperature,
                         warmup=warmup, dynamic_temperature=dynamic_temperature,
                         detach_temperature=detach_temperature)

    def forward(self, student, teacher, labels, epoch):
        return self._run(student, teacher, labels, epoch=epoch)
