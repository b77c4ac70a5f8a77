"""KD (Hinton et al., 2015) as mdistiller trains it: ``ce_weight CE + kd_weight T^2 KL``."""
from .. import losses
from .base import Distiller


class KD(Distiller):
    """``ce_weight * CE + kd_weight * T^2 KL(softmax(t/T) || softmax(s/T))`` (batch means).

    Defaults are mdistiller's (KD.TEMPERATURE 4, LOSS.CE_WEIGHT 0.1, LOSS.KD_WEIGHT 0.9);
    ``logit_stand``: the KD term on z-scored logits (Sun et al., CVPR 2024; KD.LOGIT_STAND).
    """

    name = "KD"

    def __init__(self, student, teacher, temperature=4.0, ce_weight=0.1, kd_weight=0.9,
                 logit_stand=False):
        super().__init__(student, teacher)
        self.temperature = float(temperature)
        self.ce_weight = float(ce_weight)
        self.kd_weight = float(kd_weight)
        self.logit_stand = bool(logit_stand)

    @classmethod
    def from_config(cls, cfg, student, teacher=None):
        return cls(student, teacher, temperature=cfg.KD.TEMPERATURE,
                   ce_weight=cfg.KD.LOSS.CE_WEIGHT, kd_weight=cfg.KD.LOSS.KD_WEIGHT,
                   logit_stand=cfg.KD.LOGIT_STAND)

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        ce = losses.cross_entropy(logits_student, labels)
        kd = losses.kd(logits_student, logits_teacher, temperature=self.temperature,
                       logit_stand=self.logit_stand)
        grad = self.ce_weight * ce.grad + self.kd_weight * kd.grad
        loss = self.ce_weight * ce.loss + self.kd_weight * kd.loss
        return loss, grad, {"loss_ce": ce.loss, "loss_kd": kd.loss}
