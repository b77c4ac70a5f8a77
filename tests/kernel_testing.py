"""Helpers shared by the kernel tests (tests/test_kernels_*.py, test_gemm.py, test_winograd.py):
the thread-count fixture, seeded float32 arrays, central finite differences and the tolerance
check that compares an analytic gradient with them, and the SIMD paths this CPU can run.

A test module uses the fixture by importing it: `from kernel_testing import threads`."""
import contextlib

import numpy as np
import pytest

import dtkd
from dtkd import _C


@contextlib.contextmanager
def num_threads(n):
    """Run the body on n threads, then restore the thread count in use before it."""
    before = dtkd.get_num_threads()
    dtkd.set_num_threads(n)
    try:
        yield n
    finally:
        dtkd.set_num_threads(before)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run the test with 1 and with 2 threads (2 takes the kernels' parallel paths)."""
    with num_threads(request.param):
        yield request.param


def rand(shape, seed):
    """Standard-normal float32 array of `shape`, drawn from a generator seeded with `seed`."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def numeric_grad(loss, a, eps=1e-6):
    """Central finite differences of loss() with respect to every entry of float64 array a."""
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = loss()
        flat[i] = old - eps
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric, rtol=1e-4, atol=1e-4):
    """A float32 analytic gradient against float64 finite differences: `atol` is relative to
    the largest numeric entry (at least 1), so the check scales with the gradient."""
    scale = max(1.0, np.abs(numeric).max())
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol * scale)


@contextlib.contextmanager
def simd_path(name):
    """Run the body on SIMD path ``name`` (a cap, as _C.set_isa), then put back the path that
    was in use: under DTKD_ISA=scalar (CI's portable pass) the tests after stay portable."""
    before = _C.cpu_features()["isa"]
    _C.set_isa(name)
    try:
        yield name
    finally:
        _C.set_isa(before)


def available_isas():
    """The SIMD paths this CPU can run, as names accepted by _C.set_isa."""
    features = _C.cpu_features()
    return ["scalar"] + (["avx2"] if features["avx2_fma"] else []) + (
        ["avx512"] if features["avx512"] else [])
