"""Memory: the process's resident set (from /proc/self/statm: C mallocs included, which
tracemalloc cannot see) stays flat across 1,000 training steps and 100,000 loss calls, and dtkd's
C allocator has no block left over. A leak of one float per call would be 400 KB here; the
bound is 1 MB while a leak of the smallest array a call returns (8 floats + NumPy's header,
~150 bytes) would grow the set by 15 MB."""
import sys

import numpy as np
import pytest

from dtkd import _C, losses
from reliability_helpers import TinyStep, live_blocks, one_thread, rss_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="/proc/self/statm is Linux-only")

RSS_BOUND = 1 << 20


def assert_flat(fn, calls, warmup):
    for _ in range(warmup):  # allocator pools, per-thread buffers, lazily built state
        fn()
    blocks, start = live_blocks(), rss_bytes()
    samples = []
    for i in range(calls):
        fn()
        if (i + 1) % (calls // 10) == 0:
            samples.append(rss_bytes() - start)
    assert max(samples) < RSS_BOUND, f"RSS grew (bytes after each tenth): {samples}"
    assert live_blocks() == blocks


def test_rss_flat_across_100000_loss_calls():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((8, 10)).astype(np.float32)
    t = (3 * rng.standard_normal((8, 10))).astype(np.float32)
    y = rng.integers(0, 10, size=8)
    s64 = s.astype(np.float64)  # the converting path of the Python layer too
    calls = [lambda: losses.kd(s, t), lambda: losses.dtkd(s64, t),
             lambda: losses.dkd(s, t, y, alpha=1.0, beta=8.0),
             lambda: losses.dtkd_objective(s, t, y, epoch=5, warmup=20),
             lambda: losses.dkd_objective(s, t, y, epoch=5, warmup=20),
             lambda: losses.cross_entropy(s, y)]
    state = {"i": 0}

    def one_call():
        calls[state["i"] % len(calls)]()
        state["i"] += 1

    assert_flat(one_call, 100_000, warmup=600)


def test_rss_flat_across_1000_training_steps():
    step = TinyStep()
    with one_thread():
        assert_flat(step, 1000, warmup=50)
