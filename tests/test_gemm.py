"""SGEMM (csrc/kernels/gemm*.c) against a float64 NumPy reference, on every SIMD path.

The scalar, AVX2 and AVX-512 micro-kernels have different tile shapes (4x8; 6x16 and 4x24;
8x32), each forced in turn, so the odd sizes below hit full tiles, edge tiles and several K/M/N
cache blocks of each (the blocking is derived for this CPU: kc 160..512, mc ~100..1200).
"""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtkd import _C

from kernel_testing import available_isas, num_threads, threads  # noqa: F401 (fixture)

ISAS = available_isas()
# every micro-kernel of every path this CPU runs: (isa, index into sgemm_configs(isa))
KERNELS = [(name, i) for name in ISAS for i in range(len(_C.sgemm_configs(name)["kernels"]))]


def kernel_id(param):
    name, i = param
    k = _C.sgemm_configs(name)["kernels"][i]
    return f"{name}-{k['mr']}x{k['nr']}"


@pytest.fixture(params=KERNELS, ids=kernel_id)
def isa(request):
    """Force one code path and one of its micro-kernels for the test, then restore the path in
    use before it and the model's per-problem choice of kernel."""
    name, index = request.param
    before = _C.cpu_features()["isa"]
    assert _C.set_isa(name) == name
    _C.sgemm_force_kernel(name, index)
    yield name
    _C.sgemm_force_kernel(name, -1)
    _C.set_isa(before)


def reference_sgemm(a, b, trans_a, trans_b, alpha, beta, c):
    """alpha * op(a) @ op(b) + beta * c in float64, and a bound on float32 rounding error."""
    opa = a.T.astype(np.float64) if trans_a else a.astype(np.float64)
    opb = b.T.astype(np.float64) if trans_b else b.astype(np.float64)
    out = alpha * (opa @ opb)
    scale = abs(alpha) * (np.abs(opa) @ np.abs(opb))
    if beta != 0.0:
        out += beta * c.astype(np.float64)
        scale += abs(beta) * np.abs(c.astype(np.float64))
    k = opa.shape[1]
    # Worst-case float32 summation error of a length-k dot product, plus the final scaling.
    tol = (k + 4) * np.finfo(np.float32).eps * scale + 1e-30
    return out, tol


def operands(rng, M, N, K, trans_a, trans_b, pad=0):
    """op(a) is M x K, op(b) is K x N; with pad > 0 the arrays are column slices of wider
    arrays, so their row stride exceeds their row length."""
    def matrix(rows, cols):
        full = rng.standard_normal((rows, cols + pad)).astype(np.float32)
        return full[:, :cols]
    a = matrix(K, M) if trans_a else matrix(M, K)
    b = matrix(N, K) if trans_b else matrix(K, N)
    return a, b


def assert_matches(c, ref, tol):
    err = np.abs(c.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), (
        f"max error {err.max():.3g}; at {worst}: got {c[worst]}, want {ref[worst]}, "
        f"tolerance {tol[worst]:.3g}")


# Sizes around the tile shapes (4x8, 6x16, 8x32) and past the K block (256..512),
# the M block (64..128) and, in one case, the N block (2048); M <= 2 * mc with a short B row
# stride takes the path that reads B in place.
SIZES = [
    (1, 1, 1), (1, 37, 5), (37, 1, 5), (5, 7, 3), (6, 16, 8), (14, 32, 9), (15, 33, 17),
    (13, 31, 1), (29, 65, 40), (64, 64, 64), (100, 47, 300), (341, 97, 83),
    (3, 4200, 7), (40, 100, 600), (130, 70, 530), (400, 45, 650),
]


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)],
                         ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("M,N,K", SIZES)
def test_sgemm_matches_float64_reference_for_every_transpose(isa, threads, M, N, K, trans_a,
                                                             trans_b):
    rng = np.random.default_rng(M * 10007 + N * 101 + K)
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    c = _C.sgemm(a, b, trans_a=bool(trans_a), trans_b=bool(trans_b))
    assert c.shape == (M, N) and c.dtype == np.float32
    ref, tol = reference_sgemm(a, b, trans_a, trans_b, 1.0, 0.0, None)
    assert_matches(c, ref, tol)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 0.0), (-2.0, 1.5), (1.0, -0.25),
                                        (3.0, 2.0)])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)],
                         ids=["NN", "NT", "TN", "TT"])
def test_sgemm_alpha_beta_with_row_strides_larger_than_rows(isa, threads, alpha, beta, trans_a,
                                                            trans_b):
    rng = np.random.default_rng(7)
    M, N, K = 45, 70, 260  # K spans two K blocks: beta applies once, later blocks accumulate
    a, b = operands(rng, M, N, K, trans_a, trans_b, pad=5)
    c_full = rng.standard_normal((M, N + 3)).astype(np.float32)
    c = c_full[:, :N]
    c_before = c.copy()
    pad_before = c_full[:, N:].copy()
    ref, tol = reference_sgemm(a, b, trans_a, trans_b, alpha, beta, c_before)
    out = _C.sgemm(a, b, trans_a=bool(trans_a), trans_b=bool(trans_b), alpha=alpha, beta=beta,
                   c=c)
    assert out is c
    assert_matches(c, ref, tol)
    np.testing.assert_array_equal(c_full[:, N:], pad_before)  # columns past N untouched


def test_sgemm_beta_zero_overwrites_nan_garbage_in_c(isa, threads):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((33, 50)).astype(np.float32)
    b = rng.standard_normal((50, 47)).astype(np.float32)
    c = np.full((33, 47), np.nan, dtype=np.float32)
    _C.sgemm(a, b, alpha=2.0, beta=0.0, c=c)
    ref, tol = reference_sgemm(a, b, 0, 0, 2.0, 0.0, None)
    assert_matches(c, ref, tol)


def test_sgemm_alpha_zero_scales_c_by_beta(isa):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((9, 4)).astype(np.float32)
    b = rng.standard_normal((4, 11)).astype(np.float32)
    c = rng.standard_normal((9, 11)).astype(np.float32)
    want = (0.5 * c.astype(np.float64)).astype(np.float32)
    _C.sgemm(a, b, alpha=0.0, beta=0.5, c=c)
    np.testing.assert_array_equal(c, want)


def test_sgemm_conv_shaped_problems_on_two_threads(isa):
    """Conv-like shapes (few output channels, many pixels): the threads split the columns."""
    rng = np.random.default_rng(5)
    with num_threads(2):
        for M, N, K, ta, tb in [(32, 1024, 27, 0, 0), (64, 256, 576, 0, 0),
                                (64, 576, 256, 0, 1), (576, 256, 64, 1, 0)]:
            a, b = operands(rng, M, N, K, ta, tb)
            a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
            c = _C.sgemm(a, b, trans_a=bool(ta), trans_b=bool(tb))
            ref, tol = reference_sgemm(a, b, ta, tb, 1.0, 0.0, None)
            assert_matches(c, ref, tol)


@settings(max_examples=40, deadline=None)
@given(M=st.integers(1, 80), N=st.integers(1, 80), K=st.integers(1, 300),
       trans_a=st.booleans(), trans_b=st.booleans(), pad=st.integers(0, 3),
       alpha=st.sampled_from([1.0, -0.5, 2.0]), beta=st.sampled_from([0.0, 1.0, 0.75]),
       isa_name=st.sampled_from(ISAS), nthreads=st.sampled_from([1, 2]))
def test_sgemm_random_shapes_match_reference(M, N, K, trans_a, trans_b, pad, alpha, beta,
                                             isa_name, nthreads):
    before_isa = _C.cpu_features()["isa"]
    _C.set_isa(isa_name)
    try:
        with num_threads(nthreads):
            rng = np.random.default_rng(M + 100 * N + 10000 * K)
            a, b = operands(rng, M, N, K, trans_a, trans_b, pad=pad)
            c = rng.standard_normal((M, N)).astype(np.float32)
            ref, tol = reference_sgemm(a, b, trans_a, trans_b, alpha, beta, c)
            _C.sgemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, c=c)
            assert_matches(c, ref, tol)
    finally:
        _C.set_isa(before_isa)


def test_sgemm_is_thread_safe_when_python_threads_call_at_once():
    """The GIL is released and each calling thread has its own packing buffers: concurrent
    calls with different shapes must each give their own correct result."""
    rng = np.random.default_rng(6)
    problems = []
    for M, N, K in [(200, 150, 300), (61, 333, 97), (128, 128, 128), (17, 900, 45)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        problems.append((a, b, reference_sgemm(a, b, 0, 0, 1.0, 0.0, None)))
    failures = []

    def worker(a, b, ref_tol):
        ref, tol = ref_tol
        for _ in range(15):
            c = _C.sgemm(a, b)
            if not np.all(np.abs(c - ref) <= tol):
                failures.append(np.abs(c - ref).max())

    pool = [threading.Thread(target=worker, args=p) for p in problems]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert failures == []


# ---- bad input: a clear exception naming the argument, never a crash ----

GOOD_A = np.ones((4, 3), dtype=np.float32)
GOOD_B = np.ones((3, 5), dtype=np.float32)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(a=GOOD_A.astype(np.float64), b=GOOD_B), TypeError, "a: expected dtype float32"),
    (dict(a=[[1.0]], b=GOOD_B), TypeError, "a: expected a numpy.ndarray"),
    (dict(a=GOOD_A, b=GOOD_B.astype(np.int64)), TypeError, "b: expected dtype float32"),
    (dict(a=np.ones(3, np.float32), b=GOOD_B), ValueError, "a: expected a 2-D array"),
    (dict(a=np.ones((4, 0), np.float32), b=np.ones((0, 5), np.float32)), ValueError,
     "a: expected a non-empty matrix"),
    (dict(a=GOOD_A, b=np.ones((4, 5), np.float32)), ValueError, "b: expected rows 3"),
    (dict(a=GOOD_A, b=GOOD_B, trans_b=True), ValueError, "b: expected columns 3"),
    (dict(a=np.ones((4, 6), np.float32)[:, ::2], b=GOOD_B), ValueError,
     "a: expected rows of contiguous float32"),
    (dict(a=np.asfortranarray(np.ones((4, 3), np.float32)), b=GOOD_B), ValueError,
     "a: expected rows of contiguous float32"),
    (dict(a=np.where(GOOD_A > 0, np.nan, 0).astype(np.float32), b=GOOD_B), ValueError,
     "a: contains NaN or Inf"),
    (dict(a=GOOD_A, b=np.full((3, 5), np.inf, np.float32)), ValueError, "b: contains NaN or Inf"),
    (dict(a=GOOD_A, b=GOOD_B, beta=1.0), ValueError, "c: required when beta != 0"),
    (dict(a=GOOD_A, b=GOOD_B, c=np.zeros((5, 4), np.float32)), ValueError,
     r"c: expected shape \(4, 5\), got \(5, 4\)"),
    (dict(a=GOOD_A, b=GOOD_B, c=np.zeros((4, 5), np.float64)), TypeError,
     "c: expected dtype float32"),
    (dict(a=GOOD_A, b=GOOD_B, beta=1.0, c=np.full((4, 5), np.nan, np.float32)), ValueError,
     "c: contains NaN or Inf"),
    (dict(a=GOOD_A, b=GOOD_B, alpha=float("nan")), ValueError, "alpha and beta must be finite"),
])
def test_sgemm_rejects_bad_input_naming_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _C.sgemm(**kwargs)


def test_sgemm_rejects_read_only_and_aliased_output():
    c = np.zeros((4, 5), np.float32)
    c.setflags(write=False)
    with pytest.raises(ValueError, match="c: output array is read-only"):
        _C.sgemm(GOOD_A, GOOD_B, c=c)
    square = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="c: must not share memory with a or b"):
        _C.sgemm(square, square[:, :4].copy(), c=square)


def test_fma_peak_reports_positive_throughput_for_supported_isas():
    for name in ISAS:
        single = _C.fma_peak_gflops(name, 0.02)
        pair = _C.fma_peak_gflops(name, seconds=0.02, threads=2)
        assert np.isfinite(single) and single > 0.0
        assert np.isfinite(pair) and pair > 0.0
    with pytest.raises(ValueError, match="isa: expected 'scalar', 'avx2' or 'avx512'"):
        _C.fma_peak_gflops("sse9")
    with pytest.raises(ValueError, match="seconds"):
        _C.fma_peak_gflops("scalar", 0.0)
    with pytest.raises(ValueError, match="threads"):
        _C.fma_peak_gflops("scalar", 0.01, threads=0)
