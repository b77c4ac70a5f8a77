"""Synchronized BatchNorm (dtkd.distributed.syncbn, kernels batchnorm2d_sync_* in
csrc/kernels/batchnorm.c): a batch split into shards whose partial sums are added up as an
allreduce would gives the whole batch's BatchNorm -- forward, running statistics, backward --
checked against the single-process kernels, a float64 NumPy reference and central finite
differences. No MPI needed: the shards run in one process, their reductions are summed here."""
import numpy as np
import pytest

from dtkd import _C
from dtkd.distributed.syncbn import LocalGroup, SyncBatchNorm2d, convert_sync_batchnorm
from dtkd.nn import BatchNorm2d

from kernel_testing import assert_grad_close, numeric_grad  # noqa: F401


def problem(shape, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + rng.standard_normal((1, C, 1, 1)) * 3).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    return x, gamma, beta


def sync_forward(shards, gamma, beta, rm, rv, momentum=0.1, eps=1e-5, residuals=None, relu=False):
    """The sync kernels over shards, the allreduce being a sum here."""
    count = sum(s.shape[0] * s.shape[2] * s.shape[3] for s in shards)
    total = sum(_C.batchnorm2d_sync_stats_forward(s) for s in shards)
    mean32 = (total / count).astype(np.float32)
    ssd = sum(_C.batchnorm2d_sync_stats_forward(s, mean32) for s in shards)
    outs = []
    for k, s in enumerate(shards):
        # every process updates its own copy of the running statistics, identically
        r = None if residuals is None else residuals[k]
        outs.append(_C.batchnorm2d_sync_forward(s, gamma, beta, rm[k], rv[k], momentum, eps,
                                                total, ssd, count, r, relu))
    return outs, count


def sync_backward(gs, shards, gamma, outs, count):
    parts = [_C.batchnorm2d_sync_stats_backward(g, s, o[1]) for g, s, o in zip(gs, shards, outs)]
    sum_g = sum(p[0] for p in parts)
    sum_gx = sum(p[1] for p in parts)
    dxs = [_C.batchnorm2d_sync_backward(g, s, gamma, o[1], o[2], sum_g, sum_gx, count)
           for g, s, o in zip(gs, shards, outs)]
    dgamma = sum((p[1] * o[2]) for p, o in zip(parts, outs))
    return dxs, dgamma, sum_g


@pytest.mark.parametrize("shape,splits", [((8, 3, 5, 6), [4, 4]), ((9, 4, 3, 3), [5, 4]),
                                          ((12, 2, 4, 4), [3, 3, 6]), ((2, 5, 1, 1), [1, 1])])
def test_sync_kernels_over_shards_equal_whole_batch_kernels(shape, splits):
    x, gamma, beta = problem(shape)
    C = shape[1]
    rm_ref, rv_ref = np.zeros(C, np.float32), np.ones(C, np.float32)
    y_ref, m_ref, i_ref = _C.batchnorm2d_forward_train(x, gamma, beta, rm_ref, rv_ref, 0.1, 1e-5)
    shards = np.split(x, np.cumsum(splits)[:-1])
    K = len(shards)
    rm = [np.zeros(C, np.float32) for _ in range(K)]
    rv = [np.ones(C, np.float32) for _ in range(K)]
    outs, count = sync_forward(shards, gamma, beta, rm, rv)
    np.testing.assert_allclose(np.concatenate([o[0] for o in outs]), y_ref, rtol=1e-5, atol=1e-5)
    for k in range(K):
        np.testing.assert_allclose(outs[k][1], m_ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(outs[k][2], i_ref, rtol=1e-6)
        np.testing.assert_allclose(rm[k], rm_ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rv[k], rv_ref, rtol=1e-6)
    # backward
    dy = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    dgamma_ref, dbeta_ref = np.zeros(C, np.float32), np.zeros(C, np.float32)
    dx_ref = _C.batchnorm2d_backward(dy, x, gamma, m_ref, i_ref, dgamma_ref, dbeta_ref)
    dxs, dgamma, dbeta = sync_backward(np.split(dy, np.cumsum(splits)[:-1]), shards, gamma,
                                       outs, count)
    np.testing.assert_allclose(np.concatenate(dxs), dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=1e-5, atol=1e-5)


def test_sync_forward_matches_float64_reference_and_its_finite_difference_gradient():
    shape, splits = (6, 2, 3, 3), [2, 4]
    x, gamma, beta = problem(shape, seed=3)
    eps = 1e-5
    w = np.random.default_rng(4).standard_normal(shape)

    def reference(x64):  # float64 BatchNorm over the whole batch, then a weighted sum
        mean = x64.mean(axis=(0, 2, 3), keepdims=True)
        var = x64.var(axis=(0, 2, 3), keepdims=True)
        y = (x64 - mean) / np.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]
        return y

    shards = np.split(x, np.cumsum(splits)[:-1])
    outs, count = sync_forward(shards, gamma, beta, [None] * 2, [None] * 2)
    y = np.concatenate([o[0] for o in outs])
    np.testing.assert_allclose(y, reference(x.astype(np.float64)), rtol=1e-5, atol=1e-5)
    dxs, _, _ = sync_backward(np.split(w.astype(np.float32), np.cumsum(splits)[:-1]), shards,
                              gamma, outs, count)
    x64 = x.astype(np.float64)
    numeric = numeric_grad(lambda: float((reference(x64) * w).sum()), x64)
    assert_grad_close(np.concatenate(dxs), numeric, rtol=1e-3, atol=1e-4)


def test_sync_kernels_fused_residual_relu_match_act_kernels():
    shape = (6, 3, 4, 4)
    x, gamma, beta = problem(shape, seed=5)
    res = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    y_ref, m, i = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5, res, True)
    shards, rs = np.split(x, [2]), np.split(res, [2])
    outs, count = sync_forward(shards, gamma, beta, [None] * 2, [None] * 2, residuals=rs,
                               relu=True)
    np.testing.assert_allclose(np.concatenate([o[0] for o in outs]), y_ref, rtol=1e-5, atol=1e-5)


def test_sync_batchnorm_module_with_local_group_equals_batchnorm():
    x, _, _ = problem((8, 4, 5, 5), seed=7)
    res = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)
    dy = np.random.default_rng(9).standard_normal(x.shape).astype(np.float32)
    bn, sbn = BatchNorm2d(4), SyncBatchNorm2d(4, group=LocalGroup())
    for m in (bn, sbn):
        m.weight.data[:] = np.linspace(0.5, 1.5, 4, dtype=np.float32)
    y1 = bn(x, residual=res, relu=True)
    y2 = sbn(x, residual=res, relu=True)
    np.testing.assert_allclose(y2, y1, rtol=1e-6, atol=1e-6)
    (dx1, dr1), (dx2, dr2) = bn.backward(dy), sbn.backward(dy)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dr2, dr1)
    np.testing.assert_allclose(sbn.weight.grad, bn.weight.grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sbn.bias.grad, bn.bias.grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sbn.running_var, bn.running_var, rtol=1e-6)
    sbn.eval(), bn.eval()
    np.testing.assert_allclose(sbn(x), bn(x), rtol=1e-6, atol=1e-6)


def test_convert_sync_batchnorm_keeps_state_and_swaps_every_batchnorm():
    from dtkd import models
    model = models.create("resnet8", num_classes=10, seed=0)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    convert_sync_batchnorm(model, LocalGroup())
    bns = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    assert bns and all(isinstance(m, SyncBatchNorm2d) for m in bns)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_sync_kernels_name_bad_arguments():
    x, gamma, beta = problem((4, 3, 2, 2))
    s = _C.batchnorm2d_sync_stats_forward(x)
    with pytest.raises(ValueError, match="count"):
        _C.batchnorm2d_sync_forward(x, gamma, beta, None, None, 0.1, 1e-5, s, s * 0, 3)
    with pytest.raises(ValueError, match="ssd"):
        _C.batchnorm2d_sync_forward(x, gamma, beta, None, None, 0.1, 1e-5, s, -np.ones(3), 16)
    with pytest.raises(ValueError, match="sum"):
        _C.batchnorm2d_sync_forward(x, gamma, beta, None, None, 0.1, 1e-5, s[:2], s, 16)
    with pytest.raises(ValueError, match="center"):
        _C.batchnorm2d_sync_stats_forward(x, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="sum_g"):
        _C.batchnorm2d_sync_backward(x, x, gamma, gamma, gamma, np.full(3, np.nan), s, 16)
