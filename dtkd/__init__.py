"""dtkd: Dynamic Temperature Knowledge Distillation (Wei & Bai, arXiv 2404.12711), KD and DKD,
with C kernels behind a NumPy API.

Submodules: ``dtkd.losses`` (functional losses with gradients), and, as they land,
``dtkd.nn``, ``dtkd.models``, ``dtkd.data``, ``dtkd.distill``, ``dtkd.engine``.
"""
import importlib as _importlib

from . import _C
from . import tuning as _tuning
from ._version import __version__

_tuning.apply_cached()  # a no-op (one stat) unless dtkd.autotune() ran on this CPU model

__all__ = ["__version__", "set_num_threads", "get_num_threads", "cpu_features", "autotune"]

_SUBMODULES = ("losses", "nn", "models", "data", "distill", "engine", "io", "config", "optim")


def set_num_threads(n):
    """Set the number of threads every dtkd kernel uses (like ``torch.set_num_threads``)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def get_num_threads():
    """Number of threads dtkd kernels use (default: OMP_NUM_THREADS or the core count)."""
    return _C.get_num_threads()


def cpu_features(measure_peak=False):
    """The CPU (vendor, family/model, caches), the SIMD path the kernels take, and the GEMM
    micro-kernels and blocking derived for it, with the reasons (see ``dtkd.tuning``)."""
    return _tuning.cpu_features(measure_peak)


def autotune(save=True):
    """Time a few SGEMM blockings around the model's and keep the fastest, cached per CPU
    model and dtkd version (see ``dtkd.tuning.autotune``)."""
    return _tuning.autotune(save=save)


def __getattr__(name):
    # Submodules load on first use, so `import dtkd` stays cheap.
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dtkd' has no attribute {name!r}")
