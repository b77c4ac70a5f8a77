"""Error paths in C: every allocation of dtkd's C code (csrc/runtime/alloc.c) is made to fail in
turn -- over a whole training step, every loss and the layer kernels -- and each run must end in
a result or a MemoryError with a message, never a crash, and leave no C block and no NumPy array
behind. Also: each kernel status maps to its one documented exception (boundary.c)."""
import gc
import tracemalloc

import numpy as np
import pytest

import dtkd
from dtkd import _C, losses
from reliability_helpers import TinyStep, one_thread, sweep_allocation_failures

RNG = np.random.default_rng(0)
S = RNG.standard_normal((16, 10)).astype(np.float32)
T = (3 * RNG.standard_normal((16, 10))).astype(np.float32)
Y = RNG.integers(0, 10, size=16)

LOSS_CALLS = {
    "kd": lambda: losses.kd(S, T, temperature=4.0),
    "dtkd": lambda: losses.dtkd(S, T, temperature=4.0),
    "dkd": lambda: losses.dkd(S, T, Y, alpha=1.0, beta=8.0, temperature=4.0),
    "dtkd_objective": lambda: losses.dtkd_objective(S, T, Y, epoch=5, warmup=20),
    "dkd_objective": lambda: losses.dkd_objective(S, T, Y, alpha=1.0, beta=8.0, epoch=5,
                                                  warmup=20),
    "cross_entropy": lambda: losses.cross_entropy(S, Y),
}


@pytest.mark.parametrize("name", sorted(LOSS_CALLS))
def test_loss_allocation_failures_raise_memoryerror_without_leaks(name):
    sweep_allocation_failures(LOSS_CALLS[name])
    # and the function still works afterwards
    assert np.isfinite(LOSS_CALLS[name]().loss)


def test_training_step_allocation_failures_raise_memoryerror_without_leaks():
    step = TinyStep()
    tracemalloc.start()
    try:
        step()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        with one_thread():
            sites = sweep_allocation_failures(step)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # a training step allocates in its convolutions, the loss and the SGD update (6 sites on
    # every SIMD path since kernel workspaces come from one arena, grown on the warm-up call)
    assert sites >= 5, sites
    # NumPy arrays created before a failure (outputs, activations) were all released; the
    # model keeps one step's activations, whatever step that was (+ tracemalloc's own noise)
    assert after - before < 256 * 1024, (before, after)
    assert np.isfinite(step())


def test_layer_allocation_failures():
    x = RNG.standard_normal((2, 4, 9, 9)).astype(np.float32)
    w = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    dy = RNG.standard_normal((2, 6, 9, 9)).astype(np.float32)
    calls = [
        lambda: _C.conv2d_forward(x, w, None, 1, 1, 1, 1, 1),
        lambda: _C.conv2d_backward(dy, x, w, 1, 1, 1, 1, 1, np.zeros_like(w), None, True),
        lambda: _C.conv3x3_backward_weight(dy, x, np.zeros_like(w)),
        lambda: _C.winograd_conv3x3_forward(x, w),
        lambda: _C.winograd_conv3x3_backward_input(dy, w),
        lambda: _C.sgemm(x.reshape(18, 36), x.reshape(36, 18)),
    ]
    # batch norm's statistics passes keep per-run partial sums in a scratch block
    gamma, beta = np.ones(4, np.float32), np.zeros(4, np.float32)
    y, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5)[:3]
    calls += [
        lambda: _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5, x, True),
        lambda: _C.batchnorm2d_act_backward(x, y, x, gamma, mean, invstd, np.zeros(4, np.float32),
                                            np.zeros(4, np.float32), True),
        lambda: _C.batchnorm2d_backward(x, x, gamma, mean, invstd, np.zeros(4, np.float32),
                                        np.zeros(4, np.float32)),
        lambda: _C.batchnorm2d_sync_stats_backward(x, x, mean),
    ]
    for call in calls:
        sweep_allocation_failures(call)


def test_batchnorm_backward_out_of_memory_leaves_the_accumulated_gradients():
    """dgamma and dbeta are accumulated (+=): a call that fails on its scratch adds nothing."""
    x = RNG.standard_normal((2, 3, 5, 5)).astype(np.float32)
    gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
    y, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5)[:3]
    dgamma, dbeta = np.full(3, 7.0, np.float32), np.full(3, -2.0, np.float32)
    _C._fail_alloc_after(1)
    try:
        with pytest.raises(MemoryError, match="batchnorm2d_act_backward"):
            _C.batchnorm2d_act_backward(x, y, x, gamma, mean, invstd, dgamma, dbeta, False)
    finally:
        _C._fail_alloc_after(0)
    assert (dgamma == 7.0).all() and (dbeta == -2.0).all()
    _C.batchnorm2d_act_backward(x, y, x, gamma, mean, invstd, dgamma, dbeta, False)
    assert not (dgamma == 7.0).all()


def test_memoryerror_names_the_call():
    _C._fail_alloc_after(1)
    try:
        with pytest.raises(MemoryError, match="conv2d_forward"):
            _C.conv2d_forward(np.ones((1, 2, 8, 8), np.float32), np.ones((3, 2, 3, 3), np.float32),
                              None, 1, 1, 1, 1, 1)
    finally:
        _C._fail_alloc_after(0)


def test_huge_sizes_are_memoryerror_not_overflow():
    # (N, C) whose scratch N*C*4 bytes cannot be allocated: MemoryError from NumPy or dtkd_malloc
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1 << 40, 2), (0, 0))
    with pytest.raises((MemoryError, ValueError)):
        losses.kd(big, big)


# The one table of boundary.c: kernel status -> exception (docs/RELIABILITY.md lists it).
STATUS_EXCEPTIONS = {1: ValueError, 2: ValueError, 3: ValueError, 4: ValueError, 5: MemoryError,
                     6: RuntimeError, 7: ValueError, 99: RuntimeError}


@pytest.mark.parametrize("status", sorted(STATUS_EXCEPTIONS))
def test_each_kernel_status_maps_to_one_documented_exception(status):
    with pytest.raises(STATUS_EXCEPTIONS[status]) as info:
        _C._raise_status(status, "some_kernel(x)")
    assert type(info.value) is STATUS_EXCEPTIONS[status]
    assert str(info.value).startswith("some_kernel(x): ")
    if status == 6:
        assert "workspace" in str(info.value)


def test_every_layer_backward_rejects_a_non_finite_dy():
    """Found by the nn fuzz harness: the im2col conv, batch norm, ReLU, pooling and linear
    backwards passed an Inf in dy through as Inf/NaN gradients (Winograd's raised)."""
    import dtkd.nn as nn
    layers = [(nn.Conv2d(2, 3, 3, padding=1), (2, 2, 6, 6)), (nn.Conv2d(2, 3, 3, stride=2), (2, 2, 7, 7)),
              (nn.BatchNorm2d(2), (2, 2, 4, 4)), (nn.ReLU(), (2, 2, 4, 4)),
              (nn.MaxPool2d(2), (2, 2, 4, 4)), (nn.AvgPool2d(2), (2, 2, 4, 4)),
              (nn.AdaptiveAvgPool2d(1), (2, 2, 4, 4)), (nn.Linear(3, 2), (4, 3))]
    for layer, shape in layers:
        y = layer(RNG.standard_normal(shape).astype(np.float32))
        dy = np.ones_like(y)
        dy.flat[1] = np.inf
        with pytest.raises(ValueError, match="dy: contains NaN or Inf"):
            layer.backward(dy)
