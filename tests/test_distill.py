"""Each distiller's loss and gradient equal the loss API called directly, and the step's data
path (teacher in eval mode, student forward, backward of dL/dlogits) is the documented one."""
import numpy as np
import pytest

from dtkd import distill, losses
from dtkd.config import load_config
from dtkd.nn import is_grad_enabled


class RecordingModel:
    """A model double: fixed logits out, records what backward receives and the mode it ran in."""

    def __init__(self, logits):
        self.logits = np.asarray(logits, dtype=np.float32)
        self.training = True
        self.grad = None
        self.forward_modes = []
        self.grad_enabled = []

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def forward(self, x):
        self.forward_modes.append(self.training)
        self.grad_enabled.append(is_grad_enabled())
        return self.logits.copy()

    def backward(self, grad):
        self.grad = np.array(grad)
        return None


def batch(n=16, c=10, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 3, (n, c)).astype(np.float32)
    t = rng.normal(0, 5, (n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    x = np.zeros((n, 1, 2, 2), np.float32)
    return x, s, t, y


def run(distiller, x, y, epoch):
    stats = distiller.train_step(x, y, epoch)
    return stats, distiller.student.grad


def test_vanilla_is_cross_entropy():
    x, s, _, y = batch()
    stats, grad = run(distill.Vanilla(RecordingModel(s)), x, y, 1)
    ref = losses.cross_entropy(s, y)
    assert stats["loss"] == pytest.approx(ref.loss, rel=1e-6)
    np.testing.assert_allclose(grad, ref.grad, rtol=1e-6, atol=1e-8)


def test_kd_distiller_matches_loss_api():
    x, s, t, y = batch()
    d = distill.KD(RecordingModel(s), RecordingModel(t), temperature=4.0, ce_weight=0.1,
                   kd_weight=0.9)
    stats, grad = run(d, x, y, 3)
    ce, kd = losses.cross_entropy(s, y), losses.kd(s, t, 4.0)
    assert stats["loss"] == pytest.approx(0.1 * ce.loss + 0.9 * kd.loss, rel=1e-6)
    np.testing.assert_allclose(grad, 0.1 * ce.grad + 0.9 * kd.grad, rtol=1e-5, atol=1e-8)
    assert d.teacher.forward_modes == [False], "the teacher must run in eval mode"
    assert d.student.forward_modes == [True], "the student must run in train mode"
    assert d.teacher.grad_enabled == [False], "the teacher keeps no activations (no_grad)"
    assert d.student.grad_enabled == [True]


@pytest.mark.parametrize("epoch", [1, 5, 40])
def test_dtkd_distiller_matches_official_objective(epoch):
    x, s, t, y = batch(seed=epoch)
    d = distill.DTKD(RecordingModel(s), RecordingModel(t), alpha=3.0, beta=1.0, temperature=4.0,
                     ce_weight=1.0, warmup=20)
    stats, grad = run(d, x, y, epoch)
    ref = losses.dtkd_objective(s, t, y, alpha=3.0, beta=1.0, gamma=1.0, temperature=4.0,
                                epoch=epoch, warmup=20)
    assert stats["loss"] == pytest.approx(ref.loss, rel=1e-6)
    np.testing.assert_allclose(grad, ref.grad, rtol=1e-5, atol=1e-8)
    assert stats["t_student_mean"] == pytest.approx(float(np.mean(ref.t_student)), rel=1e-6)
    assert stats["t_teacher_max"] == pytest.approx(float(np.max(ref.t_teacher)), rel=1e-6)
    assert stats["n_fallback"] == ref.n_fallback
    assert stats["warmup_factor"] == pytest.approx(min(epoch / 20, 1.0))


def test_dtkd_distiller_reports_fallback_samples():
    x, s, t, y = batch(n=8)
    s[:3] -= 100.0  # m_s + m_t <= 0 for these rows
    t[:3] -= 100.0
    stats, _ = run(distill.DTKD(RecordingModel(s), RecordingModel(t)), x, y, 1)
    assert stats["n_fallback"] >= 3


def test_dkd_distiller_matches_dkd_objective():
    x, s, t, y = batch()
    d = distill.DKD(RecordingModel(s), RecordingModel(t), alpha=1.0, beta=8.0, temperature=4.0,
                    ce_weight=1.0, warmup=20)
    stats, grad = run(d, x, y, 10)
    ref = losses.dkd_objective(s, t, y, alpha=1.0, beta=8.0, gamma=1.0, temperature=4.0,
                               epoch=10, warmup=20)
    assert stats["loss"] == pytest.approx(ref.loss, rel=1e-6)
    np.testing.assert_allclose(grad, ref.grad, rtol=1e-5, atol=1e-8)
    assert "t_student_mean" not in stats


@pytest.mark.parametrize("variant,dynamic", [("tckd", "tckd"), ("nckd", "nckd"), ("dkd", "both")])
def test_dtkd_variants_are_dkd_with_dynamic_terms(variant, dynamic):
    x, s, t, y = batch(seed=7)
    d = distill.DTKDVariant(RecordingModel(s), RecordingModel(t), variant, alpha=1.0, beta=8.0)
    stats, grad = run(d, x, y, 30)
    ref = losses.dkd_objective(s, t, y, alpha=1.0, beta=8.0, epoch=30, warmup=20,
                               dynamic_temperature=dynamic)
    assert stats["loss"] == pytest.approx(ref.loss, rel=1e-6)
    np.testing.assert_allclose(grad, ref.grad, rtol=1e-5, atol=1e-8)
    assert "t_teacher_mean" in stats


def test_from_config_builds_what_the_config_names():
    x, s, t, y = batch()
    student, teacher = RecordingModel(s), RecordingModel(t)
    for path, cls in [("fashion_mnist/vanilla.yaml", distill.Vanilla),
                      ("fashion_mnist/kd.yaml", distill.KD),
                      ("fashion_mnist/dkd.yaml", distill.DKD),
                      ("fashion_mnist/dtkd.yaml", distill.DTKD)]:
        cfg = load_config(path)
        d = distill.from_config(cfg, student, None if cls is distill.Vanilla else teacher)
        assert isinstance(d, cls)
    cfg = load_config("cifar100/dtkd/res32x4_res8x4.yaml", ["DTKD.VARIANT", "nckd"])
    d = distill.from_config(cfg, student, teacher)
    assert d.dynamic_temperature == "nckd" and d.alpha == cfg.DKD.ALPHA
    cfg = load_config("cifar100/dtkd/res32x4_res8x4.yaml")
    d = distill.from_config(cfg, student, teacher)
    assert (d.alpha, d.beta, d.warmup) == (cfg.DTKD.ALPHA, cfg.DTKD.BETA, cfg.DTKD.WARMUP)


def test_distillers_need_a_teacher():
    _, s, _, _ = batch()
    with pytest.raises(ValueError, match="teacher"):
        distill.DTKD(RecordingModel(s), None)
    with pytest.raises(ValueError, match="variant"):
        distill.DTKDVariant(RecordingModel(s), RecordingModel(s), "both-ways")


def test_registry_a_new_method_is_one_class_and_one_line(monkeypatch):
    # the registry drives from_config, names() and the config's DISTILLER.TYPE choices
    class Twice(distill.KD):
        name = "TWICE"

        @classmethod
        def from_config(cls, cfg, student, teacher=None):
            return cls(student, teacher, temperature=2 * cfg.KD.TEMPERATURE)

    monkeypatch.setitem(distill.DISTILLERS, "TWICE", Twice)
    assert "TWICE" in distill.names()
    cfg = load_config("fashion_mnist/kd.yaml", ["DISTILLER.TYPE", "TWICE"])
    _, s, t, _ = batch()
    d = distill.from_config(cfg, RecordingModel(s), RecordingModel(t))
    assert isinstance(d, Twice) and d.temperature == 2 * cfg.KD.TEMPERATURE
    monkeypatch.delitem(distill.DISTILLERS, "TWICE")
    with pytest.raises(Exception, match="DISTILLER.TYPE"):
        load_config("fashion_mnist/kd.yaml", ["DISTILLER.TYPE", "TWICE"])


def test_registry_builds_every_sweep_method_with_its_options():
    from dtkd.testing import METHODS
    from dtkd.testing.sweep import as_override_list
    from dtkd.models import create
    _, s, t, _ = batch()
    for name, method in METHODS.items():
        cfg = load_config(method.config, as_override_list(method.overrides))
        d = distill.from_config(cfg, create("resnet8", num_classes=10),
                                None if cfg.DISTILLER.TYPE == "NONE" else RecordingModel(t))
        # the DTKD variants are DKD with dynamic terms
        variant = cfg.DISTILLER.TYPE == "DTKD" and cfg.DTKD.VARIANT != "official"
        assert isinstance(d, distill.DKD if variant else distill.DISTILLERS[cfg.DISTILLER.TYPE])
    cfg = load_config(METHODS["DTKD-exact"].config, as_override_list(METHODS["DTKD-exact"].overrides))
    assert distill.from_config(cfg, RecordingModel(s), RecordingModel(t)).rule == "exact"
    for name in ("KD+LS", "DKD+LS", "DTKD+LS"):
        m = METHODS[name]
        d = distill.from_config(load_config(m.config, as_override_list(m.overrides)),
                                RecordingModel(s), RecordingModel(t))
        assert d.logit_stand


@pytest.mark.parametrize("rule, stand", [("exact", False), ("official", True), ("exact", True)])
def test_dtkd_distiller_passes_rule_and_logit_standardization(rule, stand):
    x, s, t, y = batch()
    d = distill.DTKD(RecordingModel(s), RecordingModel(t), rule=rule, logit_stand=stand)
    stats, grad = run(d, x, y, 5)
    r = losses.dtkd_objective(s, t, y, epoch=5, rule=rule, logit_stand=stand)
    assert stats["loss"] == pytest.approx(r.loss, rel=1e-6)
    np.testing.assert_allclose(grad, r.grad, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="DTKD.RULE"):
        distill.from_config(load_config("fashion_mnist/dtkd.yaml", ["DTKD.VARIANT", "nckd",
                                                                     "DTKD.RULE", "exact"]),
                            RecordingModel(s), RecordingModel(t))
