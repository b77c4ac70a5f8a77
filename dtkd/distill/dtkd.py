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
    number of fallback samples (m_s + m_t <= 0: T_s = T_t = T). ``rule='exact'`` (DTKD.RULE)
    solves the sharpness match exactly (dtkd.losses); ``logit_stand`` (DTKD.LOGIT_STAND)
    z-scores the logits of the distillation terms (Sun et al., CVPR 2024).
    """

    name = "DTKD"

    def __init__(self, student, teacher, alpha=3.0, beta=1.0, temperature=4.0, ce_weight=1.0,
                 warmup=20, detach_temperature=False, rule="official", logit_stand=False):
        super().__init__(student, teacher)
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature, self.ce_weight, self.warmup = float(temperature), float(ce_weight), warmup
        self.detach_temperature = bool(detach_temperature)
        if rule not in losses.RULES:
            raise ValueError(f"rule: expected one of {losses.RULES}, got {rule!r}")
        self.rule = rule
        self.logit_stand = bool(logit_stand)

    @classmethod
    def from_config(cls, cfg, student, teacher=None):
        c = cfg.DTKD
        if c.VARIANT == "official":
            return cls(student, teacher, alpha=c.ALPHA, beta=c.BETA, temperature=c.T,
                       ce_weight=c.CE_WEIGHT, warmup=c.WARMUP,
                       detach_temperature=c.DETACH_TEMPERATURE, rule=c.RULE,
                       logit_stand=c.LOGIT_STAND)
        if c.RULE != "official":
            raise ValueError(f"DTKD.RULE: {c.RULE!r} is implemented for DTKD.VARIANT 'official' "
                             f"only, got DTKD.VARIANT {c.VARIANT!r}")
        # the variants weigh DKD's terms with DKD.ALPHA / DKD.BETA, temperatures from DTKD.T
        return DTKDVariant(student, teacher, c.VARIANT, alpha=cfg.DKD.ALPHA, beta=cfg.DKD.BETA,
                           temperature=c.T, ce_weight=c.CE_WEIGHT, warmup=c.WARMUP,
                           detach_temperature=c.DETACH_TEMPERATURE, logit_stand=c.LOGIT_STAND)

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        r = losses.dtkd_objective(
            logits_student, logits_teacher, labels, alpha=self.alpha, beta=self.beta,
            gamma=self.ce_weight, temperature=self.temperature, epoch=epoch, warmup=self.warmup,
            detach_temperature=self.detach_temperature, rule=self.rule,
            logit_stand=self.logit_stand)
        stats = {"loss_ce": r.ce, "loss_dtkd": r.dtkd, "loss_kd": r.kd,
                 "warmup_factor": r.warmup_factor}
        stats.update(temperature_stats(r))
        return r.loss, r.grad, stats


def DTKDVariant(student, teacher, variant, alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0,
                warmup=20, detach_temperature=False, logit_stand=False):
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
            detach_temperature=detach_temperature, logit_stand=logit_stand)
    d.name = f"DTKD-{variant}"
    return d
