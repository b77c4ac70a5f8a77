"""Benchmark the loader's batch augmentation (random crop 32 with padding 4 + horizontal flip +
per-channel normalization, uint8 NHWC -> float32 NCHW) in C against the same operation written
as vectorized NumPy and as vectorized PyTorch CPU tensor ops (same thread count), and time a
whole DataLoader epoch over CIFAR-sized data.

    python benchmarks/bench_loader.py [--threads 2] [--batch 128] [--repeats 50]

Prints time per batch and the ratio of each peer's time to dtkd's (> 1: dtkd is faster).
"""
import argparse
import time

import numpy as np

import dtkd
from dtkd import _C
from dtkd.data import DataLoader, Dataset


def best_time(fn, repeats):
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def numpy_augment(images, index, offset, flip, mean, std, pad):
    """Vectorized NumPy: pad, gather the crop windows with fancy indexing, flip, normalize."""
    n, h, w, _ = images.shape
    padded = np.pad(images[index], ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = (offset[:, 0] + pad)[:, None] + np.arange(h)[None, :]
    cols = (offset[:, 1] + pad)[:, None] + np.arange(w)[None, :]
    cols = np.where(flip[:, None].astype(bool), cols[:, ::-1], cols)
    crop = padded[np.arange(len(index))[:, None, None], rows[:, :, None], cols[:, None, :]]
    x = (crop.astype(np.float32) * np.float32(1 / 255) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def make_torch_augment(torch):
    def torch_augment(images, index, offset, flip, mean, std, pad):
        b = len(index)
        h, w = images.shape[1:3]
        batch = images[index].permute(0, 3, 1, 2)
        padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad))
        rows = (offset[:, 0] + pad)[:, None] + torch.arange(h)[None, :]
        cols = (offset[:, 1] + pad)[:, None] + torch.arange(w)[None, :]
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        crop = padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]
        return ((crop.float() / 255 - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()
    return torch_augment


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    dtkd.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    n, pad, batch = 50000, 4, args.batch
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, size=n)
    mean = np.array([0.5071, 0.4867, 0.4408], np.float32)
    std = np.array([0.2675, 0.2565, 0.2761], np.float32)
    index = rng.permutation(n)[:batch].astype(np.int64)
    offset = rng.integers(-pad, pad + 1, size=(batch, 2), dtype=np.int64)
    flip = rng.integers(0, 2, size=batch, dtype=np.uint8)

    def run_dtkd():
        return _C.augment_batch(images, index, offset, flip, mean, std, 32, 32, "NHWC")

    def run_numpy():
        return numpy_augment(images, index, offset, flip, mean, std, pad)

    np.testing.assert_allclose(run_dtkd(), run_numpy(), rtol=1e-5, atol=1e-5)
    t_dtkd = best_time(run_dtkd, args.repeats)
    t_numpy = best_time(run_numpy, args.repeats)
    print(f"augment batch {batch}x3x32x32, {args.threads} thread(s), best of {args.repeats}:")
    print(f"  dtkd C kernel     {t_dtkd * 1e3:8.3f} ms  ({batch / t_dtkd:,.0f} images/s)")
    print(f"  NumPy vectorized  {t_numpy * 1e3:8.3f} ms  ratio numpy/dtkd = {t_numpy / t_dtkd:.1f}x")
    try:
        import torch
    except ImportError:
        print("  PyTorch: not installed, skipped")
    else:
        torch.set_num_threads(args.threads)
        torch_augment = make_torch_augment(torch)
        t_args = (torch.from_numpy(images), torch.from_numpy(index), torch.from_numpy(offset),
                  torch.from_numpy(flip.astype(bool)), torch.from_numpy(mean),
                  torch.from_numpy(std), pad)
        np.testing.assert_allclose(torch_augment(*t_args).numpy(), run_dtkd(), rtol=1e-5, atol=1e-5)
        t_torch = best_time(lambda: torch_augment(*t_args), args.repeats)
        print(f"  PyTorch CPU ops   {t_torch * 1e3:8.3f} ms  ratio torch/dtkd = {t_torch / t_dtkd:.1f}x"
              f"  (torch {torch.__version__})")

    dataset = Dataset(images, labels, [str(i) for i in range(100)], mean, std)
    loader = DataLoader(dataset, batch, shuffle=True, augment=True, seed=0)
    t0 = time.perf_counter()
    count = sum(len(y) for _, y in loader)
    t_epoch = time.perf_counter() - t0
    print(f"DataLoader epoch, {count} images, shuffle + augment + normalize: {t_epoch:.3f} s "
          f"({count / t_epoch:,.0f} images/s)")


if __name__ == "__main__":
    main()
