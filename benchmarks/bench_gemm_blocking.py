"""The per-CPU SGEMM configuration against alternatives, and the thin-layer 3x3 weight gradient
against im2col, on one thread (process CPU time, best of --reps, candidates interleaved so load
from other processes falls on all of them alike).

    python benchmarks/bench_gemm_blocking.py [--size 1024] [--reps 8]

Rows: each micro-kernel of the path in use with the model's blocking (gemm_blocking.c), then
with the constants used before issue 11 (kc 384 / mc 96 / nc 2048, tuned on a Zen 4), then the
3x3 weight gradient (padded rows vs im2col + SGEMM) at resnet's thin shapes, batch 64.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]

import dtkd  # noqa: E402
from dtkd import _C  # noqa: E402
from machine import describe  # noqa: E402


def best_of(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    dtkd.set_num_threads(1)
    print("\n".join(describe((1,))))
    isa = dtkd.cpu_features()["isa"]
    peak = _C.fma_peak_gflops(isa, 0.2, 1)
    n = args.size
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    kernels = _C.sgemm_configs(isa)["kernels"]
    candidates = []
    for i, k in enumerate(kernels):
        candidates.append((f"{k['mr']}x{k['nr']} model kc {k['kc']} mc {k['mc']} nc {k['nc']}", i, None))
        candidates.append((f"{k['mr']}x{k['nr']} kc 384 mc 96 nc 2048 (before)", i, (384, 96, 2048)))
    best = {label: float("inf") for label, _, _ in candidates}
    for _ in range(args.reps):
        for label, index, blocking in candidates:
            _C.sgemm_force_kernel(isa, index)
            if blocking:
                _C.sgemm_set_blocking(isa, index, *blocking)
            best[label] = min(best[label], best_of(lambda: _C.sgemm(a, b, c=c), 1))
            _C.sgemm_set_blocking(isa, index, 0, 0, 0)
    _C.sgemm_force_kernel(isa, -1)
    print(f"\nSGEMM {n}^3, 1 thread, {isa}, peak {peak:.1f} GFLOP/s\n")
    print("| configuration | GFLOP/s | of peak |\n|---|---:|---:|")
    for label, t in best.items():
        gf = 2.0 * n ** 3 / t / 1e9
        print(f"| {label} | {gf:.1f} | {gf / peak:.2f} |")

    print("\n3x3 weight gradient, batch 64, 1 thread (ms)\n")
    print("| C = O, map | padded rows (conv3x3_backward_weight) | im2col + SGEMM |\n|---|---:|---:|")
    for ch, hw in ((16, 32), (32, 16), (64, 8)):
        x = rng.standard_normal((64, ch, hw, hw), dtype=np.float32)
        dy = rng.standard_normal((64, ch, hw, hw), dtype=np.float32)
        w, dw = np.zeros((ch, ch, 3, 3), np.float32), np.zeros((ch, ch, 3, 3), np.float32)
        padded = im2col = float("inf")
        for _ in range(args.reps):
            padded = min(padded, best_of(lambda: _C.conv3x3_backward_weight(dy, x, dw), 1))
            im2col = min(im2col, best_of(
                lambda: _C.conv2d_backward(dy, x, w, 1, 1, 1, 1, 1, dw, None, False), 1))
        print(f"| {ch}, {hw}x{hw} | {1e3 * padded:.1f} | {1e3 * im2col:.1f} |")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
