"""Cost of dtkd's atomic checkpoint (dtkd.io.save: npz + fsync + rename) and of loading it, for
the state the Trainer writes every epoch (model state_dict + SGD momentum buffers).

    python benchmarks/bench_checkpoint.py [--models resnet8x4 resnet32x4] [--repeat 5] [--dir DIR]

Prints the median times and, as the yardstick, the time of a plain np.save of the same bytes
into the same directory (no fsync): the ratio is what atomicity and the format cost.
"""
import argparse
import os
import tempfile
import time

import numpy as np

import dtkd.io as dtkd_io


def trainer_state(name):
    from dtkd import models
    model = models.create(name, num_classes=100, in_channels=3)
    state = model.state_dict()
    buffers = [np.zeros_like(p.data) for p in model.parameters()]
    return {"model": state, "optimizer": {"lr": 0.05, "momentum_buffers": buffers}}


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet8x4", "resnet32x4"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="directory to write into (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "latest.npz")
        for name in args.models:
            tree = trainer_state(name)
            arrays = list(tree["model"].values()) + tree["optimizer"]["momentum_buffers"]
            nbytes = sum(a.nbytes for a in arrays)
            flat = np.concatenate([a.ravel().view(np.uint8) for a in arrays])
            t_save = median_time(lambda: dtkd_io.save(path, tree), args.repeat)
            t_load = median_time(lambda: dtkd_io.load(path), args.repeat)
            t_plain = median_time(lambda: np.save(os.path.join(tmp, "plain.npy"), flat), args.repeat)
            print(f"{name:<11} {len(arrays):4d} arrays {nbytes / 1e6:6.1f} MB  save {t_save * 1e3:7.1f} ms  "
                  f"load {t_load * 1e3:7.1f} ms  plain np.save {t_plain * 1e3:7.1f} ms  "
                  f"save/plain {t_save / t_plain:5.2f}x")


if __name__ == "__main__":
    main()
