"""Distillers by mdistiller name: a batch in, the student's gradients accumulated, stats out.

``NONE`` (vanilla CE), ``KD``, ``DKD``, ``DTKD`` (official objective), and the DTKD variants
(``DTKD.VARIANT``: ``tckd`` / ``nckd`` / ``dkd``). ``from_config(cfg, student, teacher)`` builds
the one a config names.
"""
from .base import Distiller, temperature_stats
from .dkd import DKD
from .dtkd import DTKD, VARIANTS, DTKDVariant
from .kd import KD
from .vanilla import Vanilla

__all__ = ["Distiller", "Vanilla", "KD", "DKD", "DTKD", "DTKDVariant", "VARIANTS",
           "from_config", "names", "temperature_stats"]

_TYPES = ("NONE", "KD", "DKD", "DTKD")


def names():
    """The DISTILLER.TYPE values this package trains."""
    return list(_TYPES)


def from_config(cfg, student, teacher=None):
    """The distiller ``cfg.DISTILLER.TYPE`` names, with its weights from the config."""
    kind = cfg.DISTILLER.TYPE
    if kind == "NONE":
        # mdistiller's vanilla trainer uses plain CE (weight 1)
        return Vanilla(student)
    if kind == "KD":
        return KD(student, teacher, temperature=cfg.KD.TEMPERATURE,
                  ce_weight=cfg.KD.LOSS.CE_WEIGHT, kd_weight=cfg.KD.LOSS.KD_WEIGHT)
    if kind == "DKD":
        return DKD(student, teacher, alpha=cfg.DKD.ALPHA, beta=cfg.DKD.BETA,
                   temperature=cfg.DKD.T, ce_weight=cfg.DKD.CE_WEIGHT, warmup=cfg.DKD.WARMUP)
    if kind == "DTKD":
        c = cfg.DTKD
        if c.VARIANT == "official":
            return DTKD(student, teacher, alpha=c.ALPHA, beta=c.BETA, temperature=c.T,
                        ce_weight=c.CE_WEIGHT, warmup=c.WARMUP,
                        detach_temperature=c.DETACH_TEMPERATURE)
        # the variants weigh DKD's terms with DKD.ALPHA / DKD.BETA, temperatures from DTKD.T
        return DTKDVariant(student, teacher, c.VARIANT, alpha=cfg.DKD.ALPHA, beta=cfg.DKD.BETA,
                           temperature=c.T, ce_weight=c.CE_WEIGHT, warmup=c.WARMUP,
                           detach_temperature=c.DETACH_TEMPERATURE)
    raise ValueError(f"DISTILLER.TYPE: expected one of {_TYPES}, got {kind!r}")
