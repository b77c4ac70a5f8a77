"""dtkd.optim.SGD against a NumPy reference of torch.optim.SGD's update rule, and against
torch.optim.SGD itself when torch is importable."""
import numpy as np
import pytest

from dtkd import _C
from dtkd.nn import Parameter
from dtkd.optim import SGD

CONFIGS = [
    dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=True),
    dict(momentum=0.5, dampening=0.3, weight_decay=0.0, nesterov=False),
    dict(momentum=0.0, dampening=0.0, weight_decay=1e-2, nesterov=False),
]
SHAPES = [(3, 4, 3, 3), (7,), (5, 11), (1,), (1000,)]


def reference_sgd(params, grads_per_step, lr, momentum, dampening, weight_decay, nesterov):
    """torch.optim.SGD's documented update in float64, step by step (lr: a number or one per step)."""
    params = [p.astype(np.float64) for p in params]
    bufs = [None] * len(params)
    lrs = np.broadcast_to(np.asarray(lr, dtype=np.float64), (len(grads_per_step),))
    for lr, grads in zip(lrs, grads_per_step):
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g.astype(np.float64) + weight_decay * p
            if momentum != 0:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            p -= lr * d
    return params, bufs


def run_dtkd(params, grads_per_step, lr, **cfg):
    ps = [Parameter(p) for p in params]
    opt = SGD(ps, lr=lr, **cfg)
    for grads in grads_per_step:
        for p, g in zip(ps, grads):
            p.grad[...] = g
        opt.step()
    return ps, opt


def make_problem(seed, steps=4):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_numpy_reference(cfg):
    params, grads = make_problem(0)
    ps, opt = run_dtkd(params, grads, lr=0.1, **cfg)
    want, want_bufs = reference_sgd(params, grads, 0.1, **cfg)
    for p, w in zip(ps, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)
    if cfg["momentum"]:
        for b, w in zip(opt.momentum_buffers, want_bufs):
            np.testing.assert_allclose(b, w, rtol=1e-5, atol=1e-6)
    else:
        assert opt.momentum_buffers is None


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_torch(cfg):
    torch = pytest.importorskip("torch", reason="torch comparison needs torch")
    params, grads = make_problem(1)
    ps, _ = run_dtkd(params, grads, lr=0.05, **cfg)
    tps = [torch.tensor(p, requires_grad=True) for p in params]
    topt = torch.optim.SGD(tps, lr=0.05, **cfg)
    for step in grads:
        for tp, g in zip(tps, step):
            tp.grad = torch.tensor(g)
        topt.step()
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_lr_change_and_state_dict_round_trip():
    params, grads = make_problem(2, steps=6)
    cfg = dict(momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=True)
    ps_a, opt_a = run_dtkd(params, grads[:3], lr=0.1, **cfg)
    # resume a fresh optimizer from the saved state on copies of the parameters
    ps_b = [Parameter(p.data.copy()) for p in ps_a]
    opt_b = SGD(ps_b, lr=1.0, momentum=0.1)
    opt_b.load_state_dict(opt_a.state_dict())
    for opt, ps in ((opt_a, ps_a), (opt_b, ps_b)):
        opt.lr = 0.02
        for step in grads[3:]:
            for p, g in zip(ps, step):
                p.grad[...] = g
            opt.step()
    for a, b in zip(ps_a, ps_b):
        np.testing.assert_array_equal(a.data, b.data)
    # and both follow the reference with the lr switched after 3 steps
    want, _ = reference_sgd(params, grads, [0.1] * 3 + [0.02] * 3, **cfg)
    for a, w in zip(ps_a, want):
        np.testing.assert_allclose(a.data, w, rtol=1e-5, atol=1e-6)


def test_zero_grad_zeroes_in_place():
    p = Parameter(np.ones((2, 3), np.float32))
    grad_array = p.grad
    p.grad[...] = 5.0
    SGD([p], lr=0.1).zero_grad()
    assert p.grad is grad_array and not p.grad.any()


def test_bad_hyperparameters_raise():
    ps = [Parameter(np.zeros(3, np.float32))]
    with pytest.raises(ValueError, match="lr"):
        SGD(ps, lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(ps, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="weight_decay"):
        SGD(ps, lr=0.1, weight_decay=-1)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(ps, lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="params"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        SGD(ps, lr=float("nan"))


def test_binding_rejects_bad_arrays():
    p = np.zeros(4, np.float32)
    g = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        _C.sgd_step([p], [g.astype(np.float64)], None, 0.1, 0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        _C.sgd_step([p], [np.zeros(5, np.float32)], None, 0.1, 0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError, match=r"params\[0\]"):
        _C.sgd_step([np.zeros(8, np.float32)[::2]], [g], None, 0.1, 0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="grads"):
        _C.sgd_step([p], [np.full(4, np.nan, np.float32)], None, 0.1, 0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="momentum_buffers"):
        _C.sgd_step([p], [g], None, 0.1, 0.9, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="grads"):
        _C.sgd_step([p, p], [g], None, 0.1, 0.0, 0.0, 0.0, False)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\]"):
        _C.sgd_step([ro], [g], None, 0.1, 0.0, 0.0, 0.0, False)
