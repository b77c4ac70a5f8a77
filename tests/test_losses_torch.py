"""dtkd.losses against PyTorch autograd implementations of the same formulas (written here,
following the official DTKD trainer and mdistiller's DKD, with the target class masked out
exactly instead of the -1000 trick)."""
import numpy as np
import pytest

from dtkd import losses

torch = pytest.importorskip("torch", reason="PyTorch is not installed; the autograd comparison needs it")
F = torch.nn.functional

T = 4.0


def torch_dtkd(s, t, T, detach=False):
    """The official DTKD loss (batch mean), temperatures not detached unless asked."""
    s_max, _ = s.max(dim=1, keepdim=True)
    t_max, _ = t.max(dim=1, keepdim=True)
    if detach:
        s_max = s_max.detach()
    t_s = 2 * s_max / (t_max + s_max) * T
    t_t = 2 * t_max / (t_max + s_max) * T
    kl = F.kl_div(F.log_softmax(s / t_s, dim=1), F.softmax(t / t_t, dim=1), reduction="none")
    return (kl.sum(1, keepdim=True) * t_t * t_s).mean()


def torch_kd(s, t, T):
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="none")
    return (kl.sum(1) * T * T).mean()


def torch_dkd(s, t, y, alpha, beta, T):
    gt = F.one_hot(y, s.shape[1]).bool()
    p_s, p_t = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean() * T * T
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype)
    log_q = F.log_softmax(torch.where(gt, neg_inf, s / T), dim=1)
    log_p = F.log_softmax(torch.where(gt, neg_inf, t / T), dim=1)
    nckd_terms = torch.where(gt, torch.zeros_like(log_p), log_p.exp() * (log_p - log_q))
    nckd = nckd_terms.sum(1).mean() * T * T
    return alpha * tckd + beta * nckd, tckd, nckd


def run(fn, s_np, *args):
    s = torch.tensor(s_np, dtype=torch.float64, requires_grad=True)
    out = fn(s, *args)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return out, s.grad.numpy()


@pytest.fixture
def batch():
    rng = np.random.default_rng(2024)
    s = (rng.normal(size=(16, 30)) * 3 + 1).astype(np.float32)
    t = (rng.normal(size=(16, 30)) * 5 + 2).astype(np.float32)
    y = rng.integers(0, 30, size=16)
    return s, t, y


def close(a, b, rtol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("detach", [False, True])
def test_dtkd_matches_torch_autograd_of_official_code(batch, detach):
    s, t, _ = batch
    loss, grad = run(lambda x: torch_dtkd(x, torch.tensor(t, dtype=torch.float64), T, detach), s)
    r = losses.dtkd(s, t, temperature=T, detach_temperature=detach)
    close(r.loss, loss.item())
    close(r.grad, grad)


def test_kd_matches_torch_autograd(batch):
    s, t, _ = batch
    loss, grad = run(lambda x: torch_kd(x, torch.tensor(t, dtype=torch.float64), T), s)
    r = losses.kd(s, t, temperature=T)
    close(r.loss, loss.item())
    close(r.grad, grad)


def test_dkd_matches_torch_autograd(batch):
    s, t, y = batch
    (loss, tckd, nckd), grad = run(
        lambda x: torch_dkd(x, torch.tensor(t, dtype=torch.float64), torch.tensor(y), 1.0, 8.0, T), s)
    r = losses.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=T)
    close([r.loss, r.tckd, r.nckd], [loss.item(), tckd.item(), nckd.item()])
    close(r.grad, grad)


def test_cross_entropy_matches_torch_autograd(batch):
    s, _, y = batch
    loss, grad = run(lambda x: F.cross_entropy(x, torch.tensor(y)), s)
    r = losses.cross_entropy(s, y)
    close(r.loss, loss.item())
    close(r.grad, grad)


@pytest.mark.parametrize("epoch", [2, 30])
def test_dtkd_objective_matches_official_trainer_loss(batch, epoch):
    s, t, y = batch
    tt, yy = torch.tensor(t, dtype=torch.float64), torch.tensor(y)

    def official(x, alpha=3.0, beta=1.0, ce_weight=1.0, warmup=20):
        return (min(epoch / warmup, 1.0) * (alpha * torch_dtkd(x, tt, T) + beta * torch_kd(x, tt, T))
                + ce_weight * F.cross_entropy(x, yy))

    loss, grad = run(official, s)
    r = losses.dtkd_objective(s, t, y, epoch=epoch)
    close(r.loss, loss.item())
    close(r.grad, grad)


def test_dkd_objective_matches_mdistiller_loss(batch):
    s, t, y = batch
    tt, yy = torch.tensor(t, dtype=torch.float64), torch.tensor(y)

    def mdistiller(x, epoch=7, warmup=20):
        return F.cross_entropy(x, yy) + min(epoch / warmup, 1.0) * torch_dkd(x, tt, yy, 1.0, 8.0, T)[0]

    loss, grad = run(mdistiller, s)
    r = losses.dkd_objective(s, t, y, epoch=7)
    close(r.loss, loss.item())
    close(r.grad, grad)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_softmax_family_matches_torch(batch, temperature):
    s, _, _ = batch
    x = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(np.random.default_rng(1).normal(size=s.shape))
    out = F.log_softmax(x / temperature, dim=1)
    (out * g).sum().backward()
    close(losses.log_softmax(s, temperature), out.detach().numpy(), rtol=1e-5)
    ours = losses.log_softmax_backward(g.numpy(), losses.log_softmax(s, temperature), temperature)
    close(ours, x.grad.numpy())
    close(losses.logsumexp(s, temperature), torch.logsumexp(x / temperature, dim=1).detach().numpy(), rtol=1e-5)
