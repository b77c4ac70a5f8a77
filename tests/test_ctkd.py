"""CTKD (Li et al., AAAI 2023): KD at a learnable temperature trained through a gradient-reversal
layer. The per-sample KD kernel against a float64 reference and finite differences (in the
logits and in the temperatures), the lambda schedule, the temperature modules' gradients by
finite differences, and the distiller through the registry, a config and a short Trainer run."""
import math

import numpy as np
import pytest

from dtkd import distill, losses, nn
from dtkd.config import ConfigError, load_config
from dtkd.distill.ctkd import gradient_reversal_lambda

import losses_reference as ref
from losses_reference import assert_grad_close, f64


def kd_at(s, t, temps):
    """Reference per-sample T_i^2 KL(softmax(t/T_i) || softmax(s/T_i))."""
    temps = f64(temps)
    return temps ** 2 * ref.kl_rows(f64(t) / temps[:, None], f64(s) / temps[:, None])


@pytest.fixture
def rng():
    return np.random.default_rng(31)


def test_kd_temperature_matches_reference_and_finite_differences(rng):
    s = ref.random_logits(rng, 6, 9, scale=2.0)
    t = ref.random_logits(rng, 6, 9, scale=4.0)
    temps = np.array([1.5, 2.0, 4.0, 7.0, 12.0, 20.0], dtype=np.float32)
    r = losses.kd_temperature(s, t, temps)
    np.testing.assert_allclose(r.loss, kd_at(s, t, temps).mean(), rtol=1e-5)
    fd = ref.finite_difference_grad(lambda x: kd_at(x, t, temps), s) / len(s)
    assert_grad_close(r.grad, fd)
    # d loss / d T_i by central differences in each temperature
    h = 1e-5
    fd_t = np.array([(kd_at(s, t, temps + h * np.eye(6)[i])[i]
                      - kd_at(s, t, temps - h * np.eye(6)[i])[i]) / (2 * h) for i in range(6)])
    assert_grad_close(r.grad_temperature, fd_t / len(s))


def test_kd_temperature_at_one_temperature_is_kd(rng):
    s = ref.random_logits(rng, 5, 7)
    t = ref.random_logits(rng, 5, 7, scale=4.0)
    a, b = losses.kd_temperature(s, t, 4.0), losses.kd(s, t, temperature=4.0)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)
    np.testing.assert_allclose(a.grad, b.grad, rtol=1e-5, atol=1e-8)


def test_kd_temperature_rejects_bad_temperatures(rng):
    s = ref.random_logits(rng, 3, 4)
    with pytest.raises(ValueError, match="temperature"):
        losses.kd_temperature(s, s, np.array([1.0, -1.0, 2.0], dtype=np.float32))
    with pytest.raises(ValueError, match="temperature"):
        losses.kd_temperature(s, s, np.ones(4, dtype=np.float32))


def test_gradient_reversal_lambda_follows_ctkd_cosine_schedule():
    assert gradient_reversal_lambda(0) == 0.0
    assert gradient_reversal_lambda(5) == pytest.approx(-0.5)
    assert gradient_reversal_lambda(10) == pytest.approx(-1.0)
    assert gradient_reversal_lambda(200) == pytest.approx(-1.0)
    assert gradient_reversal_lambda(2.5) == pytest.approx(-(1 - math.cos(math.pi / 4)) / 2)
    assert gradient_reversal_lambda(5, cosine=False, loops=20) == pytest.approx(-0.25)
    lam = [gradient_reversal_lambda(e) for e in range(12)]
    assert all(a >= b for a, b in zip(lam, lam[1:]))


class FixedLogits:
    """A model double returning fixed logits (the student's backward records dL/dlogits)."""

    def __init__(self, logits):
        self.logits = np.asarray(logits, dtype=np.float32)
        self.grad = None

    def train(self):
        return self

    def eval(self):
        return self

    def forward(self, x):
        return self.logits.copy()

    def backward(self, grad):
        self.grad = np.array(grad)

    def parameters(self):
        return iter(())


def ctkd_loss_at(d, s, t, y, raw):
    """The CTKD loss (no reversal) at the temperature module's raw output `raw` (N,)."""
    temps = d.t_start + d.t_end / (1 + np.exp(-f64(raw)))
    return (d.ce_weight * ref.cross_entropy(f64(s), y).mean()
            + d.kd_weight * kd_at(s, t, temps).mean())


@pytest.mark.parametrize("epoch", [0, 3, 10])
def test_global_temperature_gets_the_reversed_gradient(rng, epoch):
    n, c = 8, 10
    s, t = ref.random_logits(rng, n, c, scale=2.0), ref.random_logits(rng, n, c, scale=5.0)
    y = rng.integers(0, c, n)
    d = distill.CTKD(FixedLogits(s), FixedLogits(t), mlp="global", init=0.3)
    stats = d.train_step(np.zeros((n, 1)), y, epoch)
    lam = gradient_reversal_lambda(epoch)
    assert stats["ctkd_lambda"] == pytest.approx(lam)
    T = 1.0 + 20.0 / (1 + math.exp(-0.3))
    assert stats["t_student_mean"] == pytest.approx(T, rel=1e-6)
    assert stats["loss"] == pytest.approx(ctkd_loss_at(d, s, t, y, np.full(n, 0.3)), rel=1e-5)
    h = 1e-5
    fd = (ctkd_loss_at(d, s, t, y, np.full(n, 0.3 + h))
          - ctkd_loss_at(d, s, t, y, np.full(n, 0.3 - h))) / (2 * h)
    np.testing.assert_allclose(d.temperature_module.global_T.grad, [lam * fd], rtol=1e-4,
                               atol=1e-9)
    # the student's gradient is the plain KD + CE one at that temperature
    expected = (0.1 * losses.cross_entropy(s, y).grad
                + 0.9 * losses.kd(s, t, temperature=T).grad)
    np.testing.assert_allclose(d.student.grad, expected, rtol=1e-4, atol=1e-7)


def test_global_temperature_step_increases_the_distillation_loss(rng):
    # adversarial: descending the reversed gradient moves T to make KD harder
    n, c = 16, 10
    s, t = ref.random_logits(rng, n, c, scale=2.0), ref.random_logits(rng, n, c, scale=5.0)
    y = rng.integers(0, c, n)
    d = distill.CTKD(FixedLogits(s), FixedLogits(t), mlp="global", init=0.0)
    d.train_step(np.zeros((n, 1)), y, epoch=10)  # lambda = -1
    before = ctkd_loss_at(d, s, t, y, np.zeros(n))
    p = d.temperature_module.global_T
    p.data -= 0.5 * p.grad  # one SGD step on the temperature alone
    after = ctkd_loss_at(d, s, t, y, np.full(n, p.data[0]))
    assert after > before


def test_instance_temperature_gradient_matches_finite_differences(rng):
    n, c = 6, 5
    s, t = ref.random_logits(rng, n, c, scale=2.0), ref.random_logits(rng, n, c, scale=5.0)
    y = rng.integers(0, c, n)
    d = distill.CTKD(FixedLogits(s), FixedLogits(t), mlp="instance", hidden=7, num_classes=c)
    epoch = 4
    lam = gradient_reversal_lambda(epoch)
    d.train_step(np.zeros((n, 1)), y, epoch)
    temps = d.temperatures(t, s)[0]
    assert temps.shape == (n,) and len(np.unique(temps)) == n  # one temperature per sample

    def loss_now():
        with nn.no_grad():
            raw = d.temperature_module.forward(t, s)
        return ctkd_loss_at(d, s, t, y, raw)
    params = list(d.temperature_module.named_parameters())
    assert [name for name, _ in params] == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                            "mlp.2.bias"]
    h = 1e-3
    for name, p in params:
        flat = p.data.reshape(-1)
        for k in range(0, flat.size, max(1, flat.size // 5)):
            old = flat[k]
            flat[k] = old + h
            up = loss_now()
            flat[k] = old - h
            down = loss_now()
            flat[k] = old
            fd = (up - down) / (2 * h)
            assert p.grad.reshape(-1)[k] == pytest.approx(lam * fd, rel=2e-2, abs=1e-6), name


def test_ctkd_from_registry_and_config(rng):
    assert "CTKD" in distill.names() and distill.DISTILLERS["CTKD"] is distill.CTKD
    s = ref.random_logits(rng, 4, 10)
    cfg = load_config("fashion_mnist/kd.yaml", ["DISTILLER.TYPE", "CTKD", "CTKD.MLP", "instance",
                                                "CTKD.T_END", "10.0", "CTKD.DECAY_LOOPS", "5"])
    from dtkd.models import create
    d = distill.from_config(cfg, create("resnet8", num_classes=10), FixedLogits(s))
    assert isinstance(d, distill.CTKD) and d.mlp == "instance"
    assert d.temperature_module.mlp[0].weight.shape == (256, 20)  # 2 x the student's classes
    assert (d.t_start, d.t_end, d.decay_loops, d.ce_weight, d.kd_weight) == (1.0, 10.0, 5, 0.1, 0.9)
    with pytest.raises(ConfigError, match="CTKD.MLP"):
        load_config(None, ["CTKD.MLP", "per-class"])
    with pytest.raises(ConfigError, match="DISTILLER.TYPE"):
        load_config(None, ["DISTILLER.TYPE", "CTKDX"])


def test_ctkd_trains_its_temperature_and_checkpoints_it(tmp_path):
    from dtkd.engine import Trainer
    from dtkd.models import create

    class ArrayLoader:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __iter__(self):
            for i in range(0, len(self.x), 16):
                yield self.x[i:i + 16], self.y[i:i + 16]

        def __len__(self):
            return (len(self.x) + 15) // 16

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    cfg = load_config(None, ["DISTILLER.TYPE", "CTKD", "SOLVER.EPOCHS", "2", "SOLVER.LR", "0.05",
                             "LOG.PROBE_SAMPLES", "0", "CTKD.DECAY_LOOPS", "1"])
    student = create("resnet8", num_classes=10)
    teacher = create("resnet8", num_classes=10, seed=1)
    d = distill.CTKD(student, teacher, mlp="global")
    loader = ArrayLoader(x, y)
    trainer = Trainer(cfg, d, loader, loader, tmp_path / "run", progress=False)
    assert any(p is d.temperature_module.global_T for p in trainer.optimizer.params)
    trainer.train()
    moved = float(d.temperature_module.global_T.data[0])
    assert moved != 1.0  # trained from its init
    state = trainer.state_dict()
    assert state["distiller"]["temperature_module.global_T"][0] == moved
    d2 = distill.CTKD(create("resnet8", num_classes=10), teacher, mlp="global")
    t2 = Trainer(cfg, d2, loader, loader, tmp_path / "run", progress=False)
    t2.load_state_dict(state)
    assert float(d2.temperature_module.global_T.data[0]) == moved


def test_shipped_ctkd_config_carries_ctkd_script_values():
    cfg = load_config("cifar100/ctkd/res56_res20.yaml")
    assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == ("CTKD", "resnet56", "resnet20")
    c = cfg.CTKD
    assert (c.MLP, c.T_START, c.T_END, c.DECAY_MAX, c.DECAY_MIN, c.DECAY_LOOPS) == ("global", 1, 20, 0, -1, 10)
    assert (c.CE_WEIGHT, c.KD_WEIGHT, cfg.SOLVER.LR) == (0.1, 0.9, 0.05)
