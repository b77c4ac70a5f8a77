"""Shared pieces of the reliability tests: a tiny distillation step, the process's RSS, and the
allocation-failure sweep (csrc/runtime/alloc.c's test hooks)."""
import gc
import os

import numpy as np

import dtkd
import dtkd.distill
import dtkd.nn
from dtkd import _C
from dtkd.optim import SGD

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    """Resident set size of this process, from /proc/self/statm (what the OS sees, C mallocs
    included -- unlike tracemalloc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def tiny_net(num_classes=10, seed=0):
    """A small CNN with every layer kind a ResNet uses: Winograd 3x3 stride-1 and im2col
    stride-2 convolutions, batch norm, ReLU, max and average pooling, a linear head."""
    nn, rng = dtkd.nn, np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2, padding=1, rng=rng),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes, rng=rng))


class TinyStep:
    """One DTKD training step (teacher forward, student forward and backward, loss kernel, fused
    SGD update) of tiny_net on tiny_net, batch 4 of 1x8x8 images: every kernel family, fast."""

    def __init__(self, seed=0, batch=4, size=8, num_classes=10):
        rng = np.random.default_rng(seed)
        self.student = tiny_net(num_classes, seed)
        self.teacher = tiny_net(num_classes, seed + 1)
        self.distiller = dtkd.distill.DTKD(self.student, self.teacher, alpha=3.0, beta=1.0,
                                           temperature=4.0, warmup=1)
        self.opt = SGD(self.student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.x = rng.standard_normal((batch, 1, size, size)).astype(np.float32)
        self.y = rng.integers(0, num_classes, size=batch)

    def __call__(self):
        self.opt.zero_grad()
        stats = self.distiller.train_step(self.x, self.y, epoch=1)
        self.opt.step()
        return stats["loss"]


def live_blocks():
    """C blocks allocated and not freed, after the workspace arena gives back its cached blocks
    (kept across calls on purpose: not a leak, and a failed allocation may empty a slot)."""
    _C.workspace_trim()
    return _C._live_blocks()


def sweep_allocation_failures(fn, limit=10_000):
    """Run ``fn()`` with the n-th C allocation failing, for n = 1, 2, ... until ``fn`` makes
    fewer than n allocations. Every run must either return or raise MemoryError, and leave no C
    block allocated. Returns the number of allocation sites exercised (the n that failed)."""
    fn()  # warm-up: per-thread buffers that live across calls (gemm packing) exist now
    base = live_blocks()
    failed = 0
    try:
        for n in range(1, limit):
            gc.collect()  # NumPy arrays of the previous run go now, not inside the next one
            _C._fail_alloc_after(n)
            try:
                fn()
            except MemoryError as e:
                assert str(e), "MemoryError without a message"
            pending = _C._fail_alloc_pending()
            _C._fail_alloc_after(0)
            assert live_blocks() == base, f"failing allocation {n}: C blocks leaked"
            if pending:  # fn allocated fewer than n times: every allocation site has failed once
                return failed
            failed += 1
    finally:
        _C._fail_alloc_after(0)
    raise AssertionError(f"fn made more than {limit} allocations")


class one_thread:
    """Context manager: dtkd kernels on one thread (restored after). Tests that run thousands of
    tiny steps use it: on a shared, oversubscribed machine an OpenMP team's barriers make a
    millisecond step take a hundred times longer."""

    def __enter__(self):
        self.saved = dtkd.get_num_threads()
        dtkd.set_num_threads(1)

    def __exit__(self, *exc):
        dtkd.set_num_threads(self.saved)
