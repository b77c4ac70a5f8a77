"""Time dtkd's layer kernels at resnet8x4 shapes (batch 64, 32x32 input) against
torch.nn.functional on the same thread count.

    python benchmarks/bench_layers.py [--threads 1 2] [--batch 64] [--repeats 5] [--clock cpu]

Prints, per op and direction, the best-of-N time of dtkd and torch (interleaved), the ratio torch/dtkd
(> 1: dtkd is faster) and, for convs, dtkd's GFLOP/s as a fraction of the FMA peak
(--peak GFLOP/s per core; the issue measured ~270 with AVX-512 on this machine).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dtkd  # noqa: E402
from dtkd import _C  # noqa: E402

# resnet8x4 convs (mdistiller): name, C, O, kernel, stride, input H=W
CONVS = [
    ("conv1 3->32 3x3", 3, 32, 3, 1, 32),
    ("layer1 32->64 3x3", 32, 64, 3, 1, 32),
    ("layer1 64->64 3x3", 64, 64, 3, 1, 32),
    ("layer1 short 1x1 32->64", 32, 64, 1, 1, 32),
    ("layer2 64->128 3x3 s2", 64, 128, 3, 2, 32),
    ("layer2 128->128 3x3", 128, 128, 3, 1, 16),
    ("layer2 short 1x1 s2", 64, 128, 1, 2, 32),
    ("layer3 128->256 3x3 s2", 128, 256, 3, 2, 16),
    ("layer3 256->256 3x3", 256, 256, 3, 1, 8),
    ("layer3 short 1x1 s2", 128, 256, 1, 2, 16),
]


CLOCK = time.perf_counter  # --clock cpu: time.process_time (robust to a loaded machine, 1 thread)


def best_times(fn, other, repeats):
    """Best-of-`repeats` wall time of fn and of other (None: skipped), measured interleaved so
    both see the same machine load; the minimum is the least disturbed run."""
    fn()  # warm-up (page faults, thread pool start)
    if other:
        other()
    best, best_other = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
        if other:
            t0 = CLOCK()
            other()
            best_other = min(best_other, CLOCK() - t0)
    return best, (best_other if other else float("nan"))


def conv_cases(batch, rng, torch):
    F = torch.nn.functional if torch else None
    for name, C, O, k, s, H in CONVS:
        p = k // 2
        x = rng.standard_normal((batch, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((O, C, k, k)) * 0.05).astype(np.float32)
        y = _C.conv2d_forward(x, w, None, s, s, p, p, 1)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dw = np.zeros_like(w)
        flops = 2.0 * y.size * C * k * k
        fwd = lambda x=x, w=w, s=s, p=p: _C.conv2d_forward(x, w, None, s, s, p, p, 1)
        bwd = lambda dy=dy, x=x, w=w, s=s, p=p, dw=dw: _C.conv2d_backward(
            dy, x, w, s, s, p, p, 1, dw, None, True)
        t_fwd = t_bwd = None
        if torch:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)
            dyt = torch.from_numpy(dy)

            def t_fwd(xt=xt, wt=wt, s=s, p=p):
                with torch.no_grad():
                    F.conv2d(xt, wt, None, s, p)

            yg = F.conv2d(xg, wg, None, s, p)  # graph built once; only the backward is timed

            def t_bwd(xg=xg, wg=wg, yg=yg, dyt=dyt):
                torch.autograd.grad(yg, (xg, wg), dyt, retain_graph=True)
        yield f"conv {name}", "fwd", fwd, t_fwd, flops
        yield f"conv {name}", "bwd", bwd, t_bwd, 2 * flops


def other_cases(batch, rng, torch):
    F = torch.nn.functional if torch else None
    T = torch.from_numpy if torch else None
    x = rng.standard_normal((batch, 64, 32, 32)).astype(np.float32)
    x2 = rng.standard_normal(x.shape).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    C = 64
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    _, mean, invstd = _C.batchnorm2d_forward_train(x, g, b, rm, rv, 0.1, 1e-5)
    dg, db = np.zeros(C, np.float32), np.zeros(C, np.float32)
    y_relu = _C.relu_forward(x)
    cases = [
        ("bn train (64,64,32,32)", "fwd",
         lambda: _C.batchnorm2d_forward_train(x, g, b, rm, rv, 0.1, 1e-5),
         torch and (lambda: F.batch_norm(T(x), T(rm), T(rv), T(g), T(b), True, 0.1, 1e-5))),
        ("bn eval (64,64,32,32)", "fwd",
         lambda: _C.batchnorm2d_forward_eval(x, g, b, rm, rv, 1e-5),
         torch and (lambda: F.batch_norm(T(x), T(rm), T(rv), T(g), T(b), False, 0.1, 1e-5))),
        ("bn (64,64,32,32)", "bwd",
         lambda: _C.batchnorm2d_backward(dy, x, g, mean, invstd, dg, db),
         torch and (lambda: torch.ops.aten.native_batch_norm_backward(
             T(dy), T(x), T(g), T(rm), T(rv), T(mean), T(invstd), True, 1e-5,
             [True, True, True]))),
        ("relu (64,64,32,32)", "fwd", lambda: _C.relu_forward(x),
         torch and (lambda: F.relu(T(x)))),
        ("relu (64,64,32,32)", "bwd", lambda: _C.relu_backward(dy, y_relu),
         torch and (lambda: torch.ops.aten.threshold_backward(T(dy), T(y_relu), 0.0))),
        ("add_relu (64,64,32,32)", "fwd", lambda: _C.add_relu_forward(x, x2),
         torch and (lambda: F.relu(T(x) + T(x2)))),
        ("maxpool 3/2/1 (64,64,32,32)", "fwd", lambda: _C.maxpool2d_forward(x, 3, 2, 1),
         torch and (lambda: F.max_pool2d_with_indices(T(x), 3, 2, 1))),
        ("avgpool 2/2/0 (64,64,32,32)", "fwd", lambda: _C.avgpool2d_forward(x, 2, 2, 0),
         torch and (lambda: F.avg_pool2d(T(x), 2, 2, 0))),
    ]
    xg = rng.standard_normal((batch, 256, 8, 8)).astype(np.float32)
    pooled = _C.global_avgpool_forward(xg)
    w = rng.standard_normal((100, 256)).astype(np.float32)
    bl = np.zeros(100, np.float32)
    dyl = rng.standard_normal((batch, 100)).astype(np.float32)
    dw, dbl = np.zeros_like(w), np.zeros_like(bl)
    cases += [
        ("global avgpool (64,256,8,8)", "fwd", lambda: _C.global_avgpool_forward(xg),
         torch and (lambda: F.adaptive_avg_pool2d(T(xg), 1))),
        ("linear 256->100", "fwd", lambda: _C.linear_forward(pooled, w, bl),
         torch and (lambda: F.linear(T(pooled), T(w), T(bl)))),
        ("linear 256->100", "bwd", lambda: _C.linear_backward(dyl, pooled, w, dw, dbl),
         torch and (lambda: (T(dyl) @ T(w), T(dyl).t() @ T(pooled), T(dyl).sum(0)))),
    ]
    for name, direction, fn, tfn in cases:
        yield name, direction, fn, tfn, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak", type=float, default=270.0, help="FMA peak GFLOP/s per core")
    ap.add_argument("--only", default="", help="run only ops whose name contains this")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, meaningful for 1 thread on a busy machine")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    try:
        import torch
    except ImportError:
        torch = None
        print("torch not installed: dtkd times only")
    print(f"load average {os.getloadavg()[0]:.1f}; dtkd isa={dtkd.cpu_features()['isa']} "
          f"batch={args.batch} repeats={args.repeats} clock={args.clock} "
          f"(best of, interleaved with torch); ratio = torch time / dtkd time (> 1: dtkd faster)")
    for nt in args.threads:
        dtkd.set_num_threads(nt)
        if torch:
            torch.set_num_threads(nt)
        print(f"\n## threads = {nt}")
        print(f"{'op':38s} {'dir':4s} {'dtkd ms':>9s} {'torch ms':>9s} {'ratio':>6s} "
              f"{'GFLOP/s':>8s} {'of peak':>7s}")
        rng = np.random.default_rng(0)
        totals = {}  # direction -> [dtkd s, torch s, flops] over resnet8x4's ten convs
        for name, direction, fn, tfn, flops in list(conv_cases(args.batch, rng, torch)) + \
                list(other_cases(args.batch, rng, torch)):
            if args.only not in name:
                continue
            t, tt = best_times(fn, tfn, args.repeats)
            if flops:
                tot = totals.setdefault(direction, [0.0, 0.0, 0.0])
                tot[0], tot[1], tot[2] = tot[0] + t, tot[1] + tt, tot[2] + flops
            line = f"{name:38s} {direction:4s} {t * 1e3:9.2f} {tt * 1e3:9.2f} {tt / t:6.2f}"
            if flops:
                gf = flops / t / 1e9
                line += f" {gf:8.1f} {gf / (args.peak * nt):7.2f}"
            print(line, flush=True)
        for direction, (t, tt, flops) in totals.items():
            gf = flops / t / 1e9
            print(f"{'all resnet8x4 convs (sum)':38s} {direction:4s} {t * 1e3:9.2f} {tt * 1e3:9.2f} "
                  f"{tt / t:6.2f} {gf:8.1f} {gf / (args.peak * nt):7.2f}")


if __name__ == "__main__":
    main()
