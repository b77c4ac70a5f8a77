"""How much of a thin ResNet's training step is Python (module dispatch, argument checks)
rather than C kernels: cProfile on the process CPU clock, 1 thread.

    python benchmarks/bench_dispatch_overhead.py [--steps 5]

For resnet8 and resnet20 on 1-channel 32x32 input (the paper's Figure 1 students) at batch 64,
and resnet8 at batch 8: the share of the step in dtkd._C kernels, in other builtins (NumPy) and
in Python, and the Python + NumPy time per kernel call (cProfile's own cost included, so an
upper bound).
"""
import argparse
import cProfile
import os
import pstats
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]

import dtkd  # noqa: E402
from dtkd import models  # noqa: E402
from dtkd.optim import SGD  # noqa: E402
from machine import describe  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    dtkd.set_num_threads(1)
    print("\n".join(describe((1,))) + "\n")
    print("| model | batch | step ms (CPU) | C kernels | NumPy | Python | kernel calls/step "
          "| Python+NumPy µs per call |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for name, batch in (("resnet8", 64), ("resnet20", 64), ("resnet8", 8)):
        model = models.create(name, num_classes=100, in_channels=1)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
        g = (rng.standard_normal((batch, 100)) * 0.01).astype(np.float32)

        def step():
            opt.zero_grad()
            model(x)
            model.backward(g)
            opt.step()
        step()
        prof = cProfile.Profile(timer=time.process_time)
        prof.enable()
        for _ in range(args.steps):
            step()
        prof.disable()
        stats = pstats.Stats(prof)
        total = stats.total_tt
        kernels = sum(v[2] for k, v in stats.stats.items() if "dtkd._C" in k[2])
        calls = sum(v[1] for k, v in stats.stats.items() if "dtkd._C" in k[2])
        builtins = sum(v[2] for k, v in stats.stats.items() if k[0] == "~" and "dtkd._C" not in k[2])
        python = total - kernels - builtins
        print(f"| {name} | {batch} | {1e3 * total / args.steps:.1f} | {100 * kernels / total:.0f}% "
              f"| {100 * builtins / total:.0f}% | {100 * python / total:.0f}% | "
              f"{calls / args.steps:.0f} | {1e6 * (total - kernels) / calls:.0f} |")


if __name__ == "__main__":
    main()
