"""dtkd: Dynamic Temperature Knowledge Distillation (Wei & Bai, arXiv 2404.12711), KD and DKD,
with C kernels behind a NumPy API.

Submodules: ``dtkd.losses`` (functional losses with gradients), and, as they land,
``dtkd.nn``, ``dtkd.models``, ``dtkd.data``, ``dtkd.distill``, ``dtkd.engine``.
"""
import importlib as _importlib

from ._version import __version__


def _load_extension():
    """Import the compiled core, or say exactly why it is missing and how to get it."""
    from pathlib import Path
    package = Path(__file__).resolve().parent
    source_tree = (package.parent / "csrc").is_dir() and (package.parent / "setup.py").is_file()
    try:
        from . import _C
    except ImportError as e:
        if not source_tree:
            raise ImportError(f"dtkd's compiled extension dtkd._C failed to load ({e}); "
                              "reinstall dtkd: python -m pip install --force-reinstall dtkd") from e
        built = sorted(p.name for p in package.glob("_C.*"))
        raise ImportError(
            f"dtkd is being imported from its source folder {package} (the current directory, "
            "or something on sys.path, puts it first), and the compiled extension dtkd._C is not "
            "built there" + (f" for this Python (found {', '.join(built)})" if built else "") +
            f". Build it in place with `python -m pip install -e .` in {package.parent} (the "
            "README's set-up does this), or run from another directory to use an installed "
            "dtkd.") from e
    if source_tree:
        _warn_if_stale(package, _C)
    return _C


def _warn_if_stale(package, extension):
    """In a source checkout, warn when a C source is newer than the built extension (a `git
    pull` or an edit since the last `pip install -e .`): its kernels would not be the code."""
    import os
    import warnings
    try:
        built = os.stat(extension.__file__).st_mtime
        newest = max((p for p in (package.parent / "csrc").rglob("*.[ch]")),
                     key=lambda p: p.stat().st_mtime, default=None)
    except OSError:
        return
    if newest is not None and newest.stat().st_mtime > built + 1.0:
        warnings.warn(f"dtkd._C ({extension.__file__}) is older than {newest}: the C sources changed "
                      f"since it was built; rebuild with `python -m pip install -e .` in "
                      f"{package.parent}", RuntimeWarning, stacklevel=3)


_C = _load_extension()

from . import tuning as _tuning  # noqa: E402 (needs _C)

_tuning.apply_cached()  # a no-op (one stat) unless dtkd.autotune() ran on this CPU model

__all__ = ["__version__", "set_num_threads", "get_num_threads", "cpu_features", "autotune",
           "keep_freed_memory"]

_SUBMODULES = ("losses", "nn", "models", "data", "distill", "engine", "io", "config", "optim")


#: The most threads a dtkd kernel runs on (``set_num_threads`` refuses more): OpenMP crashes
#: when asked for a team of 10**6 threads, and beyond a few hundred a team only adds overhead.
MAX_THREADS = _C.MAX_THREADS


def set_num_threads(n):
    """Set the number of threads every dtkd kernel uses (like ``torch.set_num_threads``), an int
    in [1, ``dtkd.MAX_THREADS``]."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be in [1, {MAX_THREADS}], got {n}")
    _C.set_num_threads(n)


#: What :func:`keep_freed_memory` keeps by default: 1 GiB of freed heap.
KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory(max_bytes=KEEP_FREED_BYTES):
    """Keep freed memory in the process instead of returning it to the OS after every step.

    A training step frees its activations in the backward and allocates them again in the next
    forward; glibc returns large freed blocks to the OS, so each step page-faults them in anew
    (measured: ~19,000 faults per resnet32 step at batch 64, BatchNorm's forward 53 -> 20 ms
    per step without them). This raises glibc's trim and mmap thresholds (``mallopt``): up to
    ``max_bytes`` of freed heap and every block up to 32 MB are reused, so the process keeps
    its peak step memory (RSS), as PyTorch's caching allocators do. Process-wide, it affects
    every library's allocations; dtkd's trainer calls it at the start of training unless the
    environment sets ``DTKD_KEEP_FREED_MEMORY=0``. Returns True when applied, False where the C
    library is not glibc (nothing changes there)."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"keep_freed_memory: max_bytes must be an int, got "
                        f"{type(max_bytes).__name__}")
    return _C.keep_freed_memory(max_bytes)


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
