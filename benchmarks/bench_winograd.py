"""Winograd F(2x2,3x3) / F(4x4,3x3) forward convolution vs PyTorch conv2d and vs dtkd's direct
im2col + SGEMM convolution, on the stride-1 3x3 convolutions of resnet32x4 at batch 64.

Times are the minimum over --reps rounds in which all variants alternate. GFLOP/s are
"effective": direct-convolution FLOPs (2*N*O*C*9*H*W) over the time, so they compare with the
FMA peak and with PyTorch as if all ran the same algorithm. Winograd times use
weights transformed once beforehand (as the eval path caches them); the transform's own time is
printed apart. Every row prints ratios measured in the same run.

    python benchmarks/bench_winograd.py [--threads 1 2] [--batch 64] [--reps 10]
                                        [--isa avx512|avx2|scalar] [--accuracy-batch 8]
                                        [--training]

--training instead times the three calls a training step makes per Winograd layer of resnet8x4
(forward, input gradient, weight gradient), each transforming the current weights as training
does, with effective GFLOP/s as above.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np

import dtkd
from dtkd import _C

try:
    import torch
except ImportError:  # PyTorch is only the yardstick
    torch = None

# (C, O, H=W, how many such convs in resnet32x4): conv1, layer1.0.conv1, the rest of layer1,
# and the stride-1 convs of layer2 and layer3 (their first conv1 has stride 2: not here).
RESNET32X4_CONVS = [(3, 32, 32, 1), (32, 64, 32, 1), (64, 64, 32, 9), (128, 128, 16, 9),
                    (256, 256, 8, 9)]


def best_times(fns, reps):
    """Minimum wall time of each callable over `reps` rounds; the callables alternate within a
    round, so a burst of load from other processes hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: page faults, thread start, GEMM packing buffers
    best = {name: float("inf") for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


# resnet8x4's stride-1 3x3 convs, all Winograd in training: (C, O, H=W)
RESNET8X4_CONVS = [(32, 64, 32), (64, 64, 32), (128, 128, 16), (256, 256, 8)]


def training_table(threads, batch, reps):
    """Per layer: forward, input gradient and weight gradient as a training step calls them
    (the weights transformed inside each call), best of `reps` alternating rounds."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe
    print("\n".join(describe(tuple(threads))))
    rng = np.random.default_rng(0)
    for t in threads:
        dtkd.set_num_threads(t)
        print(f"\n== training calls, {t} thread(s), batch {batch}: ms (effective GFLOP/s)")
        for c, o, hw in RESNET8X4_CONVS:
            x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
            w = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
            dy = rng.standard_normal((batch, o, hw, hw)).astype(np.float32)
            dw = np.zeros_like(w)
            best = best_times({
                "forward": lambda: _C.winograd_conv3x3_forward(x, w, None, 4),
                "input grad": lambda: _C.winograd_conv3x3_backward_input(dy, w, 4),
                "weight grad": lambda: _C.winograd_conv3x3_backward_weight(dy, x, dw, 4),
            }, reps)
            flops = 2.0 * batch * o * c * 9 * hw * hw
            print(f"C={c:3d} O={o:3d} {hw:2d}x{hw:<2d}: " + "  ".join(
                f"{k} {v * 1e3:6.2f} ({flops / v / 1e9:4.0f})" for k, v in best.items()))


def im2col(x):
    """(N, C, H, W) -> (C*9, N*H*W) columns for a 3x3, pad-1, stride-1 convolution."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N,C,H,W,3,3
    return np.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3)).reshape(c * 9, n * h * w)


def conv3x3_float64(x, w):
    """Direct 3x3 convolution, stride 1, pad 1, in float64 (the accuracy reference)."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j],
                           optimize=True)
    return y


def accuracy(batch):
    """Max and RMS error relative to max|y| of F(2x2), F(4x4) and float32 direct convolutions
    (PyTorch, and dtkd's im2col + sgemm conv2d_forward) against float64, on post-ReLU activations (half-normal,
    as after BN+ReLU) and Kaiming-normal weights, the scales resnet32x4 sees."""
    print(f"\n== accuracy vs float64 direct (batch {batch}; max |err| / max |y|, rms err / rms y)")
    rng = np.random.default_rng(1)
    for c, o, hw, _ in RESNET32X4_CONVS[1:]:
        x = np.maximum(rng.standard_normal((batch, c, hw, hw)), 0).astype(np.float32)
        w = (rng.standard_normal((o, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)
        ref = conv3x3_float64(x, w)
        results = {"F2": _C.winograd_conv3x3_forward(x, w, None, 2),
                   "F4": _C.winograd_conv3x3_forward(x, w, None, 4)}
        if torch is not None:
            with torch.no_grad():
                results["torch"] = torch.nn.functional.conv2d(
                    torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
        if hasattr(_C, "conv2d_forward"):
            results["direct"] = _C.conv2d_forward(x, w, None, 1, 1, 1, 1, 1)
        scale, rms = np.abs(ref).max(), np.sqrt(np.mean(ref ** 2))
        line = "  ".join(f"{k} {np.abs(v - ref).max() / scale:.1e} "
                         f"{np.sqrt(np.mean((v - ref) ** 2)) / rms:.1e}"
                         for k, v in results.items())
        print(f"C={c:3d} O={o:3d} {hw:2d}x{hw:<2d}: {line}")


def error_through_residual_stack(blocks=15, c=64, hw=16, batch=2):
    """Error growth over 2*blocks convolutions arranged like resnet32x4's basic blocks
    (conv-ReLU-conv + identity, ReLU; rescaled to unit RMS after each block as BN would),
    float32 Winograd against the same stack in float64."""
    rng = np.random.default_rng(2)
    ws = [(rng.standard_normal((c, c, 3, 3)) * np.sqrt(1.0 / (18 * c))).astype(np.float32)
          for _ in range(2 * blocks)]
    bs = [(0.1 * rng.standard_normal(c)).astype(np.float32) for _ in range(2 * blocks)]
    x0 = np.maximum(rng.standard_normal((batch, c, hw, hw)), 0).astype(np.float32)

    def run(conv, dtype):
        x = x0.astype(dtype)
        for k in range(blocks):
            h = np.maximum(conv(x, ws[2 * k], bs[2 * k]), 0)
            x = np.maximum(conv(h, ws[2 * k + 1], bs[2 * k + 1]) + x, 0)
            x = (x / np.sqrt(np.mean(x.astype(np.float64) ** 2))).astype(dtype)
        return x.astype(np.float64)

    ref = run(lambda x, w, b: conv3x3_float64(x, w) + b[None, :, None, None], np.float64)
    print(f"\n== error after {2 * blocks} convs in residual blocks (C={c}, {hw}x{hw}, batch "
          f"{batch}; max |err| / max |y|, rms err / rms y)")
    for m in (2, 4):
        y = run(lambda x, w, b: _C.winograd_conv3x3_forward(x, w, b, m), np.float32)
        err = np.abs(y - ref)
        print(f"F({m}x{m}): {err.max() / np.abs(ref).max():.1e} "
              f"{np.sqrt(np.mean(err ** 2) / np.mean(ref ** 2)):.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--isa", choices=["avx512", "avx2", "scalar"], default="avx512",
                    help="cap dtkd's SIMD path (PyTorch keeps its own)")
    ap.add_argument("--accuracy-batch", type=int, default=8,
                    help="batch of the accuracy table (0: skip it)")
    ap.add_argument("--training", action="store_true",
                    help="time resnet8x4's Winograd layers as training calls them, then stop")
    args = ap.parse_args()
    _C.set_isa(args.isa)
    if args.training:
        return training_table(args.threads, args.batch, args.reps)

    # Fractions are of the nominal AVX-512 FMA peak of this machine (270 GFLOP/s per core, see
    # benchmarks/bench_gemm.py); the peak measured now is printed too: well below nominal means
    # other processes share the cores and absolute times are inflated (ratios less so).
    nominal = {t: 270.0 * t for t in args.threads}
    measured = {t: _C.fma_peak_gflops("avx512", threads=t) for t in args.threads
                if hasattr(_C, "fma_peak_gflops")}
    print(f"dtkd isa={dtkd.cpu_features().get('isa')}  batch={args.batch}  "
          f"torch={'%s' % torch.__version__ if torch else 'absent'}  "
          f"AVX-512 FMA peak measured now: "
          + (", ".join(f"{t} thr {v:.0f}" for t, v in measured.items()) or "n/a")
          + " GFLOP/s (nominal 270 per core)")
    print("eff GFLOP/s = direct FLOPs / time; 'xTorch' = torch time / winograd time (>1: faster);"
          " direct = dtkd conv2d_forward (im2col + sgemm); gemm = the SGEMM alone on prebuilt "
          "columns")
    rng = np.random.default_rng(0)
    nan = float("nan")
    for t in args.threads:
        dtkd.set_num_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        print(f"\n== {t} thread(s) ==")
        print(f"{'C':>4} {'O':>4} {'HxW':>6} | {'F2 ms':>7} {'F4 ms':>7} {'torch':>7} "
              f"{'direct':>7} {'gemm':>7} | {'F4 GF/s':>7} {'/peak':>5} | {'F4xTorch':>8} "
              f"{'F2xTorch':>8} {'F4xDirect':>9} | {'u(F4) ms':>8}")
        total = {}
        for c, o, hw, count in RESNET32X4_CONVS:
            x = rng.standard_normal((args.batch, c, hw, hw)).astype(np.float32)
            w = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
            b = rng.standard_normal(o).astype(np.float32)
            flops = 2.0 * args.batch * o * c * 9 * hw * hw
            u2 = _C.winograd_transform_weights(w, 2)
            u4 = _C.winograd_transform_weights(w, 4)
            fns = {
                "f2": lambda: _C.winograd_conv3x3_forward_transformed(x, u2, b),
                "f4": lambda: _C.winograd_conv3x3_forward_transformed(x, u4, b),
                "u4": lambda: _C.winograd_transform_weights(w, 4),
            }
            if torch is not None:
                xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
                fns["torch"] = lambda: torch.nn.functional.conv2d(xt, wt, bt, padding=1)
            if hasattr(_C, "conv2d_forward"):
                fns["direct"] = lambda: _C.conv2d_forward(x, w, b, 1, 1, 1, 1, 1)
            if hasattr(_C, "sgemm"):
                cols, w2 = im2col(x), w.reshape(o, c * 9)
                fns["gemm"] = lambda: _C.sgemm(w2, cols)
            with torch.no_grad() if torch is not None else contextlib.nullcontext():
                best = best_times(fns, args.reps)
            for k in ("f2", "f4", "torch", "direct", "gemm"):
                total[k] = total.get(k, 0.0) + count * best.get(k, nan)
            t_f2, t_f4, t_u4 = best["f2"], best["f4"], best["u4"]
            t_torch, t_direct, t_gemm = (best.get(k, nan) for k in ("torch", "direct", "gemm"))
            gf4 = flops / t_f4 / 1e9
            print(f"{c:4d} {o:4d} {hw:>3d}^2  | {t_f2*1e3:7.2f} {t_f4*1e3:7.2f} "
                  f"{t_torch*1e3:7.2f} {t_direct*1e3:7.2f} {t_gemm*1e3:7.2f} | {gf4:7.0f} "
                  f"{gf4/nominal[t]:5.2f} | {t_torch/t_f4:8.2f} {t_torch/t_f2:8.2f} "
                  f"{t_direct/t_f4:9.2f} | {t_u4*1e3:8.2f}")
        print("all stride-1 3x3 convs of resnet32x4 (weighted by count): "
              + ", ".join(f"{k} {v*1e3:.1f} ms" for k, v in total.items())
              + f" -> F4xTorch {total['torch']/total['f4']:.2f}, F2xTorch "
              f"{total['torch']/total['f2']:.2f}, F4xDirect {total['direct']/total['f4']:.2f}")
    if args.accuracy_batch:
        accuracy(args.accuracy_batch)
        error_through_residual_stack()


if __name__ == "__main__":
    main()
