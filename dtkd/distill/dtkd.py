"""DTKD (Wei & Bai, 2024), the official trainer's objective:
``min(epoch / warmup, 1) (alpha L_DTKD + beta L_KD) + ce_weight L_CE``,
and the variants the paper studies (dynamic temperatures inside DKD's terms)."""
from .. import losses
from .base import Distiller, temperature_stats
from .dkd import DKD

VARIANTS = ("official", "tckd", "nckd", "dkd")


class DTKD(Distiller):
    """Dynamic Temperature KD with the official objective (defaults: the official cfg.py).

    The gradient flows through the temperatures (as in the official code) unless
    ``detach_temperature=True``. Per-step stats include the mean/min/max of T_s and T_t and the
    number of fallback samples (m_s + m_t <= 0: T_s = T_t = T).
    """

    name = "DTKD"

    def __init__(self, student, teacher, alpha=3.0, beta=1.0, temperature=4.0, ce_weight=1.0,
                 warmup=20, detach_temperature=False):
        super().__init__(student, teacher)
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature, self.ce_weight, self.warmup = float(temperature), float(ce_weight), warmup
        self.detach_temperature = bool(detach_temperature)

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        r = losses.dtkd_objective(
            logits_student, logits_teacher, labels, alpha=self.alpha, beta=self.beta,
            gamma=self.ce_weight, temperature=self.temperature, epoch=epoch, warmup=self.warmup,
            detach_temperature=self.detach_temperature)
        stats = {"loss_ce": r.ce, "loss_dtkd": r.dtkd, "loss_kd": r.kd,
                 "warmup_factor": r.warmup_factor}
        stats.update(temperature_stats(r))
        return r.loss, r.grad, stats


def DTKDVariant(student, teacher, variant, alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0,
                warmup=20, detach_temperature=False):
    """The paper's ablations, as DKD with dynamic temperatures in some of its terms:

    - ``'tckd'``: DTKD applied to TCKD only (NCKD at the reference T);
    - ``'nckd'``: DTKD applied to NCKD only (TCKD at the reference T);
    - ``'dkd'``: DTKD combined with DKD: both TCKD and NCKD with the per-sample temperatures.

    ``alpha``/``beta`` weigh TCKD/NCKD as in DKD.
    """
    dynamic = {"tckd": "tckd", "nckd": "nckd", "dkd": "both"}.get(variant)
    if dynamic is None:
        raise ValueError(f"variant: expected one of {VARIANTS[1:]}, got {variant!r}")
    d = DKD(student, teacher, alpha=alpha, beta=beta, temperature=temperature,
            ce_weight=ce_weight, warmup=warmup, dynamic_temperature=dynamic,
            detach_temperature=detach_temperature)
    d.name = f"DTKD-{variant}"
    return d
