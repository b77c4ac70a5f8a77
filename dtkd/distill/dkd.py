"""DKD (Zhao et al., CVPR 2022) as mdistiller trains it:
``ce_weight CE + min(epoch / warmup, 1) (alpha TCKD + beta NCKD)``."""
from .. import losses
from .base import Distiller, temperature_stats


class DKD(Distiller):
    """Decoupled KD. ``dynamic_temperature`` (None, 'tckd', 'nckd', 'both') computes that term
    with DTKD's per-sample temperatures instead of T (used by the DTKD variants);
    ``logit_stand``: TCKD and NCKD on z-scored logits (Sun et al., CVPR 2024; DKD.LOGIT_STAND)."""

    name = "DKD"

    def __init__(self, student, teacher, alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0,
                 warmup=20, dynamic_temperature=None, detach_temperature=False, logit_stand=False):
        super().__init__(student, teacher)
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature, self.ce_weight, self.warmup = float(temperature), float(ce_weight), warmup
        self.dynamic_temperature = dynamic_temperature
        self.detach_temperature = bool(detach_temperature)
        self.logit_stand = bool(logit_stand)

    @classmethod
    def from_config(cls, cfg, student, teacher=None):
        c = cfg.DKD
        return cls(student, teacher, alpha=c.ALPHA, beta=c.BETA, temperature=c.T,
                   ce_weight=c.CE_WEIGHT, warmup=c.WARMUP, logit_stand=c.LOGIT_STAND)

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        r = losses.dkd_objective(
            logits_student, logits_teacher, labels, alpha=self.alpha, beta=self.beta,
            gamma=self.ce_weight, temperature=self.temperature, epoch=epoch, warmup=self.warmup,
            dynamic_temperature=self.dynamic_temperature,
            detach_temperature=self.detach_temperature, logit_stand=self.logit_stand)
        stats = {"loss_ce": r.ce, "loss_tckd": r.tckd, "loss_nckd": r.nckd,
                 "warmup_factor": r.warmup_factor}
        if self.dynamic_temperature is not None:
            stats.update(temperature_stats(r))
        return r.loss, r.grad, stats
