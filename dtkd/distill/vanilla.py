"""Vanilla: cross-entropy training of the student alone (also how teachers are trained)."""
from .. import losses
from .base import Distiller


class Vanilla(Distiller):
    """``ce_weight * CE(student, labels)``; no teacher."""

    name = "NONE"
    needs_teacher = False

    def __init__(self, student, teacher=None, ce_weight=1.0):
        super().__init__(student, None)
        self.ce_weight = float(ce_weight)

    @classmethod
    def from_config(cls, cfg, student, teacher=None):
        # mdistiller's vanilla trainer uses plain CE (weight 1)
        return cls(student)

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        ce = losses.cross_entropy(logits_student, labels)
        grad = ce.grad * self.ce_weight if self.ce_weight != 1.0 else ce.grad
        return self.ce_weight * ce.loss, grad, {"loss_ce": ce.loss}
