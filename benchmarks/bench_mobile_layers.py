"""Time the kernels the mobile backbones lean on, at their shapes (batch 64, 32x32 input),
against torch.nn.functional on the same thread count: ShuffleV1's grouped 1x1 convolutions
(3 groups), the depthwise 3x3 convolutions (stride 1 and 2) of ShuffleV1/V2 and MobileNetV2,
and ShuffleV2's split + concat + channel shuffle (one plane-gather call here; torch.cat then
reshape/transpose/contiguous there).

    python benchmarks/bench_mobile_layers.py [--threads 1 2] [--batch 64] [--repeats 5] [--clock cpu]

Best-of-N times, dtkd and torch interleaved (bench_layers.best_times); ratio = torch / dtkd
(> 1: dtkd faster). Backward: input and weight gradients (torch.autograd.grad on a graph built
once).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                os.path.dirname(os.path.abspath(__file__))]
import bench_layers  # noqa: E402
import dtkd  # noqa: E402
from dtkd import _C  # noqa: E402
from machine import describe  # noqa: E402

# name, C, O, kernel, stride, groups, input H=W (the layer each comes from)
CONVS = [
    ("ShuffleV1 layer1 conv1 240->60 1x1 g3", 240, 60, 1, 1, 3, 16),
    ("ShuffleV1 layer1 conv3 60->240 1x1 g3", 60, 240, 1, 1, 3, 16),
    ("ShuffleV1 layer2 conv1 480->120 1x1 g3", 480, 120, 1, 1, 3, 8),
    ("ShuffleV1 layer2 conv3 120->480 1x1 g3", 120, 480, 1, 1, 3, 8),
    ("ShuffleV1 layer1.0 dw 54 3x3 s2", 54, 54, 3, 2, 54, 32),
    ("ShuffleV1 layer1 dw 60 3x3 s1", 60, 60, 3, 1, 60, 16),
    ("ShuffleV2 layer1.0 dw 24 3x3 s2", 24, 24, 3, 2, 24, 32),
    ("ShuffleV2 layer2 dw 116 3x3 s1", 116, 116, 3, 1, 116, 8),
    ("ShuffleV2 layer2 1x1 116->116", 116, 116, 1, 1, 1, 8),
    ("MobileNetV2 blocks.1 dw 72 3x3 s1", 72, 72, 3, 1, 72, 16),
    ("MobileNetV2 blocks.2.0 dw 72 3x3 s2", 72, 72, 3, 2, 72, 16),
    ("MobileNetV2 blocks.1 1x1 12->72", 12, 72, 1, 1, 1, 16),
]


def conv_cases(batch, rng, torch):
    F = torch.nn.functional if torch else None
    for name, C, O, k, s, g, H in CONVS:
        p = k // 2
        x = rng.standard_normal((batch, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((O, C // g, k, k)) * 0.1).astype(np.float32)
        y = _C.conv2d_forward(x, w, None, s, s, p, p, g)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dw = np.zeros_like(w)
        fwd = lambda x=x, w=w, s=s, p=p, g=g: _C.conv2d_forward(x, w, None, s, s, p, p, g)
        bwd = lambda dy=dy, x=x, w=w, s=s, p=p, g=g, dw=dw: _C.conv2d_backward(
            dy, x, w, s, s, p, p, g, dw, None, True)
        t_fwd = t_bwd = None
        if torch:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)
            dyt = torch.from_numpy(dy)

            def t_fwd(xt=xt, wt=wt, s=s, p=p, g=g):
                with torch.no_grad():
                    F.conv2d(xt, wt, None, s, p, 1, g)

            yg = F.conv2d(xg, wg, None, s, p, 1, g)

            def t_bwd(xg=xg, wg=wg, yg=yg, dyt=dyt):
                torch.autograd.grad(yg, (xg, wg), dyt, retain_graph=True)
        yield f"conv {name}", "fwd", fwd, t_fwd
        yield f"conv {name}", "bwd", bwd, t_bwd


def channel_cases(batch, rng, torch):
    x = rng.standard_normal((batch, 116, 16, 16)).astype(np.float32)
    h = rng.standard_normal((batch, 58, 16, 16)).astype(np.float32)
    dy = rng.standard_normal((batch, 116, 16, 16)).astype(np.float32)
    dx = np.empty_like(x)
    fwd = lambda: (dtkd.nn.channel_slice(x, 58, 116), dtkd.nn.concat_shuffle([(x, 0, 58), h], 2))
    bwd = lambda: dtkd.nn.concat_shuffle_backward(dy, [(dx, 0, 58), 58], 2)
    t_fwd = t_bwd = None
    if torch:
        xt, ht, dyt = torch.from_numpy(x), torch.from_numpy(h), torch.from_numpy(dy)

        def shuffle(t):
            n, c, hh, ww = t.shape
            return t.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)

        def t_fwd():  # x2 made contiguous for the conv, as a split's consumer needs
            return xt[:, 58:].contiguous(), shuffle(torch.cat([xt[:, :58], ht], 1))

        def t_bwd():  # the inverse shuffle, then the two halves
            g = dyt.view(batch, 58, 2, 16, 16).transpose(1, 2).reshape(batch, 116, 16, 16)
            return g[:, :58].contiguous(), g[:, 58:].contiguous()
    yield "ShuffleV2 split+cat+shuffle (64,116,16,16)", "fwd", fwd, t_fwd
    yield "ShuffleV2 split+cat+shuffle (64,116,16,16)", "bwd", bwd, t_bwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, meaningful for 1 thread on a busy machine")
    args = ap.parse_args()
    if args.clock == "cpu":
        bench_layers.CLOCK = time.process_time
    try:
        import torch
    except ImportError:
        torch = None
        print("torch not installed: dtkd times only")
    for line in describe(args.threads):
        print(line)
    print(f"batch={args.batch} repeats={args.repeats} clock={args.clock} (best of, interleaved "
          "with torch); ratio = torch time / dtkd time (> 1: dtkd faster)")
    for nt in args.threads:
        dtkd.set_num_threads(nt)
        if torch:
            torch.set_num_threads(nt)
        print(f"\n| op (threads = {nt}) | dir | dtkd ms | torch ms | ratio |\n|---|---|---:|---:|---:|")
        rng = np.random.default_rng(0)
        for name, direction, fn, tfn in list(conv_cases(args.batch, rng, torch)) + \
                list(channel_cases(args.batch, rng, torch)):
            t, tt = bench_layers.best_times(fn, tfn, args.repeats)
            print(f"| {name} | {direction} | {t * 1e3:.2f} | {tt * 1e3:.2f} | {tt / t:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
