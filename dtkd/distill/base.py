"""The one step every distiller shares.

A distiller owns the student (and, for KD-style methods, a frozen teacher). ``train_step`` is the
whole data path of a step but the optimizer update::

    teacher forward (eval mode) -> student forward -> loss kernel -> student backward

Subclasses only say how the loss and its gradient w.r.t. the student logits are computed
(``loss_and_grad``), as in mdistiller where each method is one small file.
"""
import numpy as np

from ..nn.grad_mode import no_grad


class Distiller:
    """Base class: ``train_step(x, y, epoch) -> stats``; subclasses define ``loss_and_grad``."""

    name = "base"
    needs_teacher = True

    def __init__(self, student, teacher=None):
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__}: teacher: a teacher model is required")
        self.student = student
        self.teacher = teacher

    @classmethod
    def from_config(cls, cfg, student, teacher=None):
        """The distiller with its settings from ``cfg`` (the registry in dtkd.distill calls it)."""
        raise NotImplementedError

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        """Return (loss: float, grad: (N, C) float32 dL/dlogits_student, stats: dict)."""
        raise NotImplementedError

    def parameters(self):
        """What the optimizer updates: the student's parameters (and a distiller's own, e.g.
        CTKD's temperature module)."""
        return self.student.parameters()

    def extra_state_dict(self):
        """The distiller's own trainable state (checkpointed beside the student); {} for most."""
        return {}

    def load_extra_state_dict(self, state):
        if state:
            raise ValueError(f"{type(self).__name__}: has no state of its own, got keys {sorted(state)}")

    def teacher_logits(self, x):
        """Teacher forward in eval mode (running BN statistics, no gradient kept)."""
        if self.teacher is None:
            return None
        self.teacher.eval()
        with no_grad():  # nothing kept for a backward that never comes; BN folds into convs
            return self.teacher.forward(x)

    def train_step(self, x, y, epoch):
        """One step: forward both models, loss kernel, student backward (gradients accumulate in
        the student's parameters; the caller zeroes them and applies the optimizer).

        Returns a dict of statistics: ``loss`` and the separate loss terms, ``logits`` (for the
        trainer's accuracy), and for dynamic temperatures ``t_student_mean/min/max``,
        ``t_teacher_mean/min/max`` and ``n_fallback``.
        """
        logits_teacher = self.teacher_logits(x)
        self.student.train()
        logits_student = self.student.forward(x)
        loss, grad, stats = self.loss_and_grad(logits_student, logits_teacher, y, epoch)
        self.student.backward(grad)
        stats = dict(stats)
        stats["loss"] = float(loss)
        stats["logits"] = logits_student
        return stats

    def __repr__(self):
        return f"{type(self).__name__}(student={type(self.student).__name__})"


def temperature_stats(result):
    """Per-step statistics of the per-sample temperatures of a loss result (Figure 3 data)."""
    ts = np.asarray(result.t_student, dtype=np.float64)
    tt = np.asarray(result.t_teacher, dtype=np.float64)
    return {
        "t_student_mean": float(ts.mean()), "t_student_min": float(ts.min()),
        "t_student_max": float(ts.max()),
        "t_teacher_mean": float(tt.mean()), "t_teacher_min": float(tt.min()),
        "t_teacher_max": float(tt.max()),
        "n_fallback": int(result.n_fallback),
    }
