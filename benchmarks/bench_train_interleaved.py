"""A quick, load-tolerant check of the training-step ratio: dtkd and PyTorch eager in one
process, steps interleaved, each timed by the process CPU clock (time another process holds the
core does not count), best of --steps. For a shared machine; bench_train_step.py (wall clock,
medians, torch.compile, peak RSS, per-op split) is the full benchmark.

    python benchmarks/bench_train_interleaved.py [--models resnet32 resnet8x4] [--steps 4]
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet32", "resnet8x4"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    import torch
    import dtkd
    from bench_train_step import batch, cross_entropy_grad, torch_resnet
    from dtkd import models
    from dtkd.models.resnet import ARCHS
    from dtkd.optim import SGD
    from machine import describe
    dtkd.set_num_threads(1)
    torch.set_num_threads(1)
    print("\n".join(describe((1,))) + "\n")
    print("| model | dtkd ms (CPU) | torch eager ms (CPU) | dtkd / torch |\n|---|---:|---:|---:|")
    for name in args.models:
        model = models.create(name, num_classes=100)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        tmodel = torch_resnet(torch, *ARCHS[name])
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        x, y = batch(args.batch)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def dtkd_step():
            opt.zero_grad()
            model.backward(cross_entropy_grad(model(x), y))
            opt.step()

        def torch_step():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tmodel(xt), yt).backward()
            topt.step()
        best = {"dtkd": float("inf"), "torch": float("inf")}
        dtkd_step()
        torch_step()
        for _ in range(args.steps):
            for key, fn in (("dtkd", dtkd_step), ("torch", torch_step)):
                t0 = time.process_time()
                fn()
                best[key] = min(best[key], time.process_time() - t0)
        print(f"| {name} train | {1e3 * best['dtkd']:.0f} | {1e3 * best['torch']:.0f} | "
              f"{best['torch'] / best['dtkd']:.2f}x |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
