"""DKD (Zhao et al., CVPR 2022) as mdistiller trains it:
``ce_weight CE + min(epoch / warmup, 1) (alpha TCKD + beta NCKD)``."""
from .. import losses
from .base import Distiller, temperature_stats


class DKD(Distiller):
    """Decoupled KD. ``dynamic_temperature`` (None, 'tckd', 'nckd', 'both') computes that term
    with DTKD's per-sample temperatures instead of T (used by the DTKD variants)."""

    name = "DKD"

    def __init__(self, student, teacher, alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0,
                 warmup=20, dynamic_temperature=None, detach_temperature=False):
        super().__init__(student, teacher)
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature, self.ce_weight, self.warmup = float(temperature), float(ce_weight), warmup
        self.dynamic_temperature = dynamic_temperature
        self.detach_temperature = bool(detach_temperature)

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        r = losses.dkd_objective(
            logits_student, logits_teacher, labels, alpha=self.alpha, beta=self.beta,
            gamma=self.ce_weight, temperature=self.temperature, epoch=epoch, warmup=self.warmup,
            dynamic_temperature=self.dynamic_temperature,
            detach_temperature=self.detach_temperature)
        stats = {"loss_ce": r.ce, "loss_tckd": r.tckd, "loss_nckd": r.nckd,
                 "warmup_factor": r.warmup_factor}
        if self.dynamic_temperature is not None:
            stats.update(temperature_stats(r))
        return r.loss, r.grad, stats
