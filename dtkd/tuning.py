"""What dtkd chose for this CPU, and the optional autotune of the SGEMM blocking.

At first use the C core reads the CPU (CPUID vendor/family/model, the data caches from sysfs or
CPUID) and measures how many independent FMAs hide the FMA latency (latency x pipes), then
derives each micro-kernel's blocking (kc, mc, nc) with the analytical model of Low et al.
(ACM TOMS 2016; csrc/kernels/gemm_blocking.c) and picks, per GEMM, the micro-kernel with the
least padded work. :func:`cpu_features` reports all of it with the reasons.

:func:`autotune` times a few blockings around the model's on two GEMM shapes and keeps the
fastest per micro-kernel; the result is cached per CPU model and dtkd version under
``$XDG_CACHE_HOME/dtkd/`` (atomic write) and applied by ``import dtkd`` from then on.
"""
import time

import numpy as np

from . import _C
from ._version import __version__

_ISAS = ("scalar", "avx2", "avx512")
_peak_cache = {}


def _supported_isas(features):
    out = ["scalar"]
    if features["avx2_fma"]:
        out.append("avx2")
    if features["avx512"]:
        out.append("avx512")
    return out


def cache_path():
    """The autotune cache file for this CPU model and dtkd version."""
    from .data.dataset import cache_dir
    f = _C.cpu_features()
    vendor = "".join(ch for ch in f["vendor"] if ch.isalnum()) or "unknown"
    return cache_dir() / f"autotune-{vendor}-{f['family']}-{f['model']}-{__version__}.npz"


def fma_peak(isa, threads=1):
    """This CPU's FP32 FMA peak (GFLOP/s) on ``isa``, measured once per process (~50 ms)."""
    key = (isa, threads)
    if key not in _peak_cache:
        _peak_cache[key] = _C.fma_peak_gflops(isa, 0.05, threads)
    return _peak_cache[key]


def _why(cfg, machine, chosen_isa):
    return (f"{cfg['mr']}x{cfg['nr']} tile: {cfg['mr'] * -(-cfg['nr'] // machine['vector_floats'])} "
            f"accumulators for {machine['fma_in_flight']:.1f} FMAs in flight (measured latency x "
            f"pipes) -> modelled efficiency {cfg['efficiency']:.2f}; "
            + ("kc, mc, nc autotuned" if cfg["tuned"] else
               "kc from the L1 ways (the smallest of the path's kernels: one kc per path keeps "
               "a result's rounding independent of the kernel its shape picks), mc from the L2 "
               "ways and the L1 TLB's reach, nc from this thread's L3 share"))


def cpu_features(measure_peak=False):
    """The CPU and what dtkd chose for it.

    Keys: ``avx2_fma``, ``avx512``, ``isa`` (the SIMD path the kernels take), ``vendor``,
    ``brand``, ``family``, ``model``, ``l1d``/``l2``/``l3`` (size, ways, line, shared_by) and
    ``cache_source``; ``gemm``: for the path in use, the machine facts (``fma_in_flight``,
    ``vector_floats``, ``registers``), each micro-kernel's ``mr``, ``nr``, ``kc``, ``mc``,
    ``nc`` with ``why``, and ``autotune`` (the cache file applied, or None). With
    ``measure_peak``, ``fma_peak_gflops``: the measured 1-thread FMA peak of each ISA.
    """
    f = dict(_C.cpu_features())
    cfg = _C.sgemm_configs(f["isa"])
    machine = {k: cfg[k] for k in ("fma_in_flight", "vector_floats", "registers")}
    kernels = [dict(k, why=_why(k, machine, f["isa"])) for k in cfg["kernels"]]
    f["gemm"] = dict(machine, isa=f["isa"], kernels=kernels,
                     choice="per GEMM, the kernel with the least padded tile area / efficiency",
                     autotune=_applied[0])
    if measure_peak:
        f["fma_peak_gflops"] = {isa: fma_peak(isa) for isa in _supported_isas(f)}
    return f


_applied = [None]


def _candidates(model):
    # around the model, plus kc 512 with small A blocks: on a Zen 4 (1 MB L2) the model's
    # kc 160 / mc 1224 for the 8x32 AVX-512 tile reached 0.71-0.76 of the FMA peak at 1024^3
    # and kc 512 / mc 96-256 0.87-0.93 (benchmarks/RESULTS.md, 2026-12-07)
    kc, mc, nc = model["kc"], model["mc"], model["nc"]
    kcs = sorted({kc, min(2 * kc, 1024), 256, 512})
    mcs = sorted({mc, max(mc // 2, 1), 96, 256})
    return [(k, m, nc) for k in kcs for m in mcs]


def _time_gemm(shape, reps=3):
    M, N, K = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    c = np.empty((M, N), np.float32)
    _C.sgemm(a, b, c=c)
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        _C.sgemm(a, b, c=c)
        best = min(best, time.process_time() - t0)
    return best


def autotune(shapes=((512, 512, 512), (64, 4096, 576)), save=True):
    """Time the candidate blockings of each micro-kernel of the path in use (on one thread's
    CPU time, so other processes disturb it little) and keep the fastest; returns
    ``{isa: [(mr, nr, kc, mc, nc, seconds), ...]}`` and, with ``save``, caches it (see the
    module docstring). Takes a few seconds."""
    isa = _C.cpu_features()["isa"]
    threads = _C.get_num_threads()
    _C.set_num_threads(1)
    count = len(_C.sgemm_configs(isa)["kernels"])
    try:
        for index in range(count):
            _C.sgemm_set_blocking(isa, index, 0, 0, 0)
        models = _C.sgemm_configs(isa)["kernels"]
        # kc is the path's (every kernel of it sums K in the same blocks, so a result's rounding
        # does not depend on the kernel its shape picks): per kc, each kernel's best mc; then
        # the kc with the least total time
        by_kc = {}
        for index, model in enumerate(models):
            _C.sgemm_force_kernel(isa, index)
            for kc, mc, nc in _candidates(model):
                _C.sgemm_set_blocking(isa, index, kc, mc, nc)
                seconds = sum(_time_gemm(s) for s in shapes)
                best = by_kc.setdefault(kc, [None] * count)
                if best[index] is None or seconds < best[index][-1]:
                    best[index] = (model["mr"], model["nr"], kc, mc, nc, seconds)
        complete = [b for b in by_kc.values() if None not in b]
        chosen = min(complete, key=lambda b: sum(entry[-1] for entry in b))
        for index, entry in enumerate(chosen):
            _C.sgemm_set_blocking(isa, index, *entry[2:5])
    except BaseException:
        for index in range(count):
            _C.sgemm_set_blocking(isa, index, 0, 0, 0)
        raise
    finally:
        _C.sgemm_force_kernel(isa, -1)
        _C.set_num_threads(threads)
    result = {isa: chosen}
    if save:
        from .io import checkpoint
        checkpoint.save(cache_path(), {"isa": isa, "version": __version__,
                                       "kernels": [list(c) for c in chosen]})
        _applied[0] = str(cache_path())
    return result


def apply_cached():
    """Apply this CPU's autotune cache if there is one (``import dtkd`` calls this). A file
    that is unreadable, for another dtkd version or that does not match this CPU's kernels is
    ignored: the model's blocking stays."""
    path = cache_path()
    if not path.exists():
        return None
    from .io import checkpoint
    try:
        tree = checkpoint.load(path)
        isa = tree["isa"]
        if tree.get("version") != __version__ or isa not in _ISAS:
            return None
        kernels = _C.sgemm_configs(isa)["kernels"]
        entries = tree["kernels"]
        if len(entries) != len(kernels) or len({int(e[2]) for e in entries}) != 1:
            return None  # (one kc per path: see autotune)
        for index, (entry, k) in enumerate(zip(entries, kernels)):
            mr, nr, kc, mc, nc = (int(v) for v in entry[:5])
            if (mr, nr) != (k["mr"], k["nr"]):
                return None
            _C.sgemm_set_blocking(isa, index, kc, mc, nc)
    except (checkpoint.CheckpointError, KeyError, TypeError, ValueError, OSError):
        return None
    _applied[0] = str(path)
    return str(path)
