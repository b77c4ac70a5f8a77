"""Distillers by mdistiller name: a batch in, the student's gradients accumulated, stats out.

One registry, :data:`DISTILLERS`, maps each ``DISTILLER.TYPE`` to its class (as mdistiller's
``distiller_dict``); each class builds itself from a config (``from_config(cfg, student,
teacher)``), so a new method is one file plus one line here. ``names()`` (the config's choices
for DISTILLER.TYPE, ``python -m dtkd configs``) and :func:`from_config` read it.

``NONE`` (vanilla CE), ``KD``, ``DKD``, ``DTKD`` (official objective; ``DTKD.VARIANT`` ``tckd`` /
``nckd`` / ``dkd`` for the paper's variants, ``DTKD.RULE`` official / exact), ``CTKD``
(learnable temperature, Li et al. AAAI 2023).
"""
from .base import Distiller, temperature_stats
from .ctkd import CTKD
from .dkd import DKD
from .dtkd import DTKD, VARIANTS, DTKDVariant
from .kd import KD
from .vanilla import Vanilla

__all__ = ["Distiller", "Vanilla", "KD", "DKD", "DTKD", "DTKDVariant", "CTKD", "VARIANTS",
           "DISTILLERS", "from_config", "names", "temperature_stats"]

#: DISTILLER.TYPE -> distiller class (each has ``from_config(cfg, student, teacher)``).
DISTILLERS = {
    "NONE": Vanilla,
    "KD": KD,
    "DKD": DKD,
    "DTKD": DTKD,
    "CTKD": CTKD,
}


def names():
    """The DISTILLER.TYPE values this package trains (the registry's keys)."""
    return list(DISTILLERS)


def from_config(cfg, student, teacher=None):
    """The distiller ``cfg.DISTILLER.TYPE`` names, with its weights from the config."""
    kind = cfg.DISTILLER.TYPE
    try:
        cls = DISTILLERS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"DISTILLER.TYPE: expected one of {tuple(DISTILLERS)}, got {kind!r}") from None
    return cls.from_config(cfg, student, teacher)
