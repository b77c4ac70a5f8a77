"""SGEMM throughput: dtkd._C.sgemm per SIMD path vs this machine's FMA peak, numpy.matmul
(OpenBLAS) and torch.mm, on square sizes and the im2col GEMMs of resnet8x4 / resnet32x4.

    python benchmarks/bench_gemm.py                # 1 and 2 threads, everything
    python benchmarks/bench_gemm.py --threads 1 --clock cpu   # 1 thread on a shared machine
    python benchmarks/bench_gemm.py --autotune     # after dtkd.autotune(save=False)

Every timing is the best of repeated calls (the machine may be shared: the best run is the
one least disturbed). `--clock cpu` times 1-thread runs by process CPU time, which time
another process holds the core does not inflate; runs on 2 threads always use the wall
clock. The FMA peak of each instruction set is measured here, on the same thread count, by the
12-chain loop in csrc/kernels/fma_peak.c (per-thread CPU time). Fractions are of that peak.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dtkd  # noqa: E402
from dtkd import _C  # noqa: E402
from machine import settle  # noqa: E402

try:
    import torch
except ImportError:  # the comparison is optional
    torch = None
try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:
    threadpool_info = threadpool_limits = None


def conv_problems(batch=64):
    """im2col GEMMs of the CIFAR ResNets with widths [32, 64, 128, 256] (resnet8x4 and
    resnet32x4 share every distinct conv shape; resnet32x4 repeats the 3x3 64->64, 128->128,
    256->256 convs 9 times per stage instead of once). Rows: (name, M, N, K, trans_a, trans_b)
    with row-major C = op(A) op(B):
      fwd  : out (Cout x HW)     = W (Cout x Cin*9)       . cols (Cin*9 x HW)
      dgrad: dcols (Cin*9 x HW)  = W^T                    . dout (Cout x HW)       trans_a
      wgrad: dW (Cout x Cin*9)   = dout (Cout x HW)       . cols^T (HW x Cin*9)    trans_b
    'per image' uses N or K = H*W, 'batch' = batch*H*W (one GEMM over the whole batch)."""
    layers = [  # (label, Cin, Cout, kernel, output H*W)
        ("conv1 3->32 3x3 32x32", 3, 32, 3, 1024),
        ("s1 32->64 3x3 32x32", 32, 64, 3, 1024),
        ("s1 64->64 3x3 32x32", 64, 64, 3, 1024),
        ("s2 128->128 3x3 16x16", 128, 128, 3, 256),
        ("s3 256->256 3x3 8x8", 256, 256, 3, 64),
        ("s3 128->256 1x1 8x8", 128, 256, 1, 64),
    ]
    out = []
    for label, cin, cout, k, hw in layers:
        kk = cin * k * k
        out.append((f"fwd   {label} per image", cout, hw, kk, 0, 0))
        out.append((f"fwd   {label} batch", cout, batch * hw, kk, 0, 0))
        out.append((f"dgrad {label} per image", kk, hw, cout, 1, 0))
        out.append((f"wgrad {label} batch", cout, kk, batch * hw, 0, 1))
    return out


def best_seconds(fn, clock=time.perf_counter, min_time=0.25, min_reps=3, max_reps=200):
    fn()  # warm-up: buffers grown, pages touched
    best, spent, reps = float("inf"), 0.0, 0
    while (spent < min_time or reps < min_reps) and reps < max_reps:
        t0 = clock()
        fn()
        dt = clock() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def operands(M, N, K, ta, tb, rng):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    return a, b


def measure_peaks(isas, threads, seconds=0.3, tries=3):
    return {isa: max(_C.fma_peak_gflops(isa, seconds, threads=threads) for _ in range(tries))
            for isa in isas}


def run(threads, isas, problems, args):
    dtkd.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    peaks = measure_peaks(isas, threads)
    use_cpu = args.clock == "cpu" and threads == 1
    clock = time.process_time if use_cpu else time.perf_counter
    print(f"\n### {threads} thread(s), {'process CPU' if use_cpu else 'wall'} clock, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("FMA peak (GFLOP/s, best of 3, per-thread CPU time): " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
    print()
    head = ["problem", "M", "N", "K"] + [f"dtkd {isa} GF/s (of peak)" for isa in isas]
    head += ["numpy GF/s", "torch GF/s", f"dtkd {isas[0]} / numpy", f"dtkd {isas[0]} / torch"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rng = np.random.default_rng(0)
    isa_before = _C.cpu_features()["isa"]
    for name, M, N, K, ta, tb in problems:
        a, b = operands(M, N, K, ta, tb, rng)
        c = np.empty((M, N), np.float32)
        flops = 2.0 * M * N * K
        cells, first = [], None
        for isa in isas:
            if isa == "scalar" and flops > 2.5e9:
                cells.append("-")  # minutes on the portable path; not informative
                continue
            _C.set_isa(isa)
            settle(threads)
            t = best_seconds(lambda: _C.sgemm(a, b, trans_a=bool(ta), trans_b=bool(tb), c=c),
                             clock)
            gf = flops / t * 1e-9
            first = gf if first is None else first
            cells.append(f"{gf:.1f} ({gf / peaks[isa]:.2f})")
        _C.set_isa(isa_before)
        opa, opb = (a.T if ta else a), (b.T if tb else b)
        out_np = np.empty((M, N), np.float32)
        if threadpool_limits is not None:
            settle(threads)
            with threadpool_limits(limits=threads, user_api="blas"):
                t_np = best_seconds(lambda: np.matmul(opa, opb, out=out_np), clock)
            np_cell = f"{flops / t_np * 1e-9:.1f}"
        else:
            t_np, np_cell = None, "n/a"
        if torch is not None:
            ta_t, tb_t = torch.from_numpy(a), torch.from_numpy(b)
            ta_t, tb_t = (ta_t.t() if ta else ta_t), (tb_t.t() if tb else tb_t)
            out_t = torch.empty((M, N), dtype=torch.float32)
            settle(threads)
            t_t = best_seconds(lambda: torch.mm(ta_t, tb_t, out=out_t), clock)
            t_cell = f"{flops / t_t * 1e-9:.1f}"
        else:
            t_t, t_cell = None, "n/a"
        ratio_np = f"{first / (flops / t_np * 1e-9):.2f}" if t_np and first else "n/a"
        ratio_t = f"{first / (flops / t_t * 1e-9):.2f}" if t_t and first else "n/a"
        row = [name, str(M), str(N), str(K)] + cells + [np_cell, t_cell, ratio_np, ratio_t]
        print("| " + " | ".join(row) + " |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--quick", action="store_true", help="square sizes only")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: time 1-thread runs by process CPU time (shared machines)")
    p.add_argument("--autotune", action="store_true",
                   help="run dtkd.autotune(save=False) first (every path) and print its choice")
    args = p.parse_args()
    feats = _C.cpu_features()
    isas = (["avx512"] if feats["avx512"] else []) + (["avx2"] if feats["avx2_fma"] else [])
    isas += ["scalar"]
    problems = [(f"square {n}", n, n, n, 0, 0) for n in (256, 512, 1024, 2048)]
    problems.append(("square 1024 TT", 1024, 1024, 1024, 1, 1))
    if not args.quick:
        problems += conv_problems()
    print(f"dtkd sgemm benchmark; numpy {np.__version__}, torch "
          f"{torch.__version__ if torch is not None else 'not installed'}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    blas = [i for i in (threadpool_info() if threadpool_info else []) if i["user_api"] == "blas"]
    if blas:
        print(f"numpy BLAS: {blas[0]['internal_api']} {blas[0]['version']} kernel "
              f"{blas[0].get('architecture')}; OPENBLAS_CORETYPE="
              f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    blocking = lambda: "; ".join(
        f"{isa} " + ", ".join(f"{k['mr']}x{k['nr']} kc {k['kc']} mc {k['mc']} nc {k['nc']}"
                              + (" (tuned)" if k["tuned"] else " (model)")
                              for k in _C.sgemm_configs(isa)["kernels"]) for isa in isas[:-1])
    if args.autotune:
        before = _C.cpu_features()["isa"]  # restored after: DTKD_ISA may have capped it
        for isa in isas[:-1]:  # autotune tunes the path in use: each SIMD path in turn
            _C.set_isa(isa)
            dtkd.autotune(save=False)
        _C.set_isa(before)
    print(f"blocking: {blocking()}")
    for threads in args.threads:
        run(threads, isas, problems, args)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
