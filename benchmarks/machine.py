"""What every benchmark prints above its table: the CPU, its measured FMA peak per instruction
set and thread count, and the load average (the machines are shared: read ratios with it)."""
import os
import platform
import time


def describe(threads=(1,), seconds=0.2):
    """Markdown lines naming the CPU (brand, vendor family/model, caches), the FMA peak
    measured now for each ISA it supports on each thread count, and the load average."""
    import dtkd
    from dtkd import _C
    f = dtkd.cpu_features()
    isas = ["avx512"] if f["avx512"] else []
    isas += ["avx2"] if f["avx2_fma"] else []
    peaks = ", ".join(f"{isa} {t}T {_C.fma_peak_gflops(isa, seconds, t):.1f}"
                      for isa in isas for t in threads)
    kb = lambda c: f"{c['size'] // 1024} KB/{c['ways']}-way"
    lines = [
        f"CPU: {f['brand']} ({f['vendor']} family {f['family']} model {f['model']}), "
        f"L1d {kb(f['l1d'])}, L2 {kb(f['l2'])}, L3 {f['l3']['size'] // 1048576} MB "
        f"(shared by {f['l3']['shared_by']}); dtkd path {f['isa']}",
        f"Measured FP32 FMA peak, GFLOP/s: {peaks or 'n/a'}",
        f"Python {platform.python_version()}, numpy {__import__('numpy').__version__}; "
        f"load average (1/5/15 min) {' / '.join(f'{v:.1f}' for v in os.getloadavg())}",
    ]
    return lines


def settle(threads):
    """Before timing another library (or framework) on several threads: let the previous one's
    worker threads, which spin-wait for a while after their last task (OpenBLAS's for ~0.1 s,
    libgomp's for GOMP_SPINCOUNT turns), go to sleep, so they do not steal a core from the one
    being timed. Measured (Zen 4, resnet32 training step, 2 threads): dtkd alone 142 ms per
    step; taking turns with torch.compile without this pause, 192 ms."""
    if threads > 1:
        time.sleep(0.3)


def take_turns(steps, rounds, threads):
    """Time the callables of `steps` (name -> step) taking turns, one step of each per round,
    each after settle(threads), so that load from other processes (and a VM whose speed drifts)
    falls on all of them alike: {name: [seconds of each step]}."""
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            settle(threads)  # the previous framework's spinning threads go to sleep
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    return times
