"""dtkd.torch: the C losses as autograd Functions / nn.Modules. Loss and gradient equal the NumPy
API's (and autograd's through the official PyTorch code); it trains inside a torch loop; bad
tensors (other devices, integer logits, float labels) get clear errors; without torch the import
says what to install."""
import os
import subprocess
import sys

import numpy as np
import pytest

from dtkd import losses

torch = pytest.importorskip("torch", reason="dtkd.torch wraps the losses for PyTorch, which is not installed")
import dtkd.torch as dt  # noqa: E402  (after the skip: importing it needs torch)


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def logits():
    rng = np.random.default_rng(7)
    s = (rng.normal(size=(12, 10)) * 3 + 0.5).astype(np.float32)
    t = (rng.normal(size=(12, 10)) * 5 + 1).astype(np.float32)
    y = rng.integers(0, 10, size=12)
    return s, t, y


# (torch function, module factory + call, NumPy reference); each takes (s, t, y)
CASES = {
    "dtkd": (lambda s, t, y: dt.dtkd(s, t, temperature=3.0),
             lambda s, t, y: dt.DTKDLoss(temperature=3.0)(s, t),
             lambda s, t, y: losses.dtkd(s, t, temperature=3.0)),
    "dtkd_detached": (lambda s, t, y: dt.dtkd(s, t, detach_temperature=True),
                      lambda s, t, y: dt.DTKDLoss(detach_temperature=True)(s, t),
                      lambda s, t, y: losses.dtkd(s, t, detach_temperature=True)),
    "kd": (lambda s, t, y: dt.kd(s, t, temperature=2.0),
           lambda s, t, y: dt.KDLoss(temperature=2.0)(s, t),
           lambda s, t, y: losses.kd(s, t, temperature=2.0)),
    "dkd": (lambda s, t, y: dt.dkd(s, t, y, alpha=1.0, beta=8.0),
            lambda s, t, y: dt.DKDLoss(alpha=1.0, beta=8.0)(s, t, y),
            lambda s, t, y: losses.dkd(s, t, y, alpha=1.0, beta=8.0)),
    "dkd_dynamic": (lambda s, t, y: dt.dkd(s, t, y, dynamic_temperature="both"),
                    lambda s, t, y: dt.DKDLoss(dynamic_temperature="both")(s, t, y),
                    lambda s, t, y: losses.dkd(s, t, y, dynamic_temperature="both")),
    "cross_entropy": (lambda s, t, y: dt.cross_entropy(s, y),
                      None,
                      lambda s, t, y: losses.cross_entropy(s, y)),
    "dtkd_objective": (lambda s, t, y: dt.dtkd_objective(s, t, y, epoch=7, warmup=20),
                       lambda s, t, y: dt.DTKDObjective(warmup=20)(s, t, y, epoch=7),
                       lambda s, t, y: losses.dtkd_objective(s, t, y, epoch=7, warmup=20)),
    "dkd_objective": (lambda s, t, y: dt.dkd_objective(s, t, y, epoch=3, warmup=5),
                      lambda s, t, y: dt.DKDObjective(warmup=5)(s, t, y, epoch=3),
                      lambda s, t, y: losses.dkd_objective(s, t, y, epoch=3, warmup=5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_gradient_equal_the_numpy_api(logits, name):
    function, module, reference = CASES[name]
    s, t, y = logits
    expected = reference(s, t, y)
    for call in filter(None, (function, module)):
        student = torch.from_numpy(s.copy()).requires_grad_()
        teacher = torch.from_numpy(t.copy()).requires_grad_()  # gets no gradient
        loss = call(student, teacher, torch.from_numpy(y))
        assert loss.dtype == torch.float32 and loss.dim() == 0
        assert loss.item() == pytest.approx(expected.loss, rel=1e-6)
        (2.5 * loss).backward()  # the incoming gradient scales the kernel's
        np.testing.assert_allclose(student.grad.numpy(), 2.5 * expected.grad, rtol=1e-6, atol=1e-7)
        assert teacher.grad is None


def test_modules_keep_the_last_result(logits):
    s, t, y = logits
    criterion = dt.DTKDObjective(alpha=3.0, beta=1.0, gamma=1.0, temperature=4.0, warmup=20)
    criterion(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y), epoch=20)
    expected = losses.dtkd_objective(s, t, y, epoch=20)
    r = criterion.last_result
    np.testing.assert_array_equal(r.t_student, expected.t_student)
    assert (r.dtkd, r.kd, r.ce, r.n_fallback) == (expected.dtkd, expected.kd, expected.ce, expected.n_fallback)
    assert "warmup=20" in repr(criterion)


def test_gradient_equals_autograd_through_the_official_pytorch_dtkd(logits):
    from test_losses_torch import torch_dtkd
    s, t, _ = logits
    ours = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    dt.dtkd(ours, torch.from_numpy(t)).backward()
    official = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    torch_dtkd(official, torch.tensor(t, dtype=torch.float64), 4.0).backward()
    np.testing.assert_allclose(ours.grad.numpy(), official.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_reduction_none_scales_each_row_by_its_incoming_gradient(logits):
    s, t, _ = logits
    student = torch.from_numpy(s.copy()).requires_grad_()
    per_sample = dt.dtkd(student, torch.from_numpy(t), reduction="none")
    expected = losses.dtkd(s, t, reduction="none")
    np.testing.assert_array_equal(per_sample.detach().numpy(), expected.loss)
    weights = torch.linspace(0.0, 2.0, len(s))
    (per_sample * weights).sum().backward()
    np.testing.assert_allclose(student.grad.numpy(), expected.grad * weights.numpy()[:, None],
                               rtol=1e-6, atol=1e-7)


def test_other_float_dtypes_and_layouts_are_converted(logits):
    s, t, y = logits
    expected = losses.dkd(s, t, y)
    base = torch.from_numpy(np.ascontiguousarray(s.T).astype(np.float64))
    student = base.t().requires_grad_()  # float64 and non-contiguous
    loss = dt.dkd(student, torch.from_numpy(t).half().float(), torch.from_numpy(y).int())
    assert loss.dtype == torch.float64
    teacher16 = losses.dkd(s, torch.from_numpy(t).half().float().numpy(), y)
    assert loss.item() == pytest.approx(teacher16.loss, rel=1e-6)
    loss.backward()
    assert student.grad.dtype == torch.float64
    np.testing.assert_allclose(student.grad.numpy(), teacher16.grad, rtol=1e-6, atol=1e-7)
    assert abs(teacher16.loss - expected.loss) < 1e-2 * expected.loss


def test_float32_contiguous_tensors_are_used_without_copies(logits, monkeypatch):
    s, t, y = logits
    student = torch.from_numpy(s.copy())
    seen = {}
    real = losses.kd

    def spy(a, b, *args, **kwargs):
        seen["student"], seen["teacher"] = a, b
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(losses, "kd", spy)
    teacher = torch.from_numpy(t)
    dt.kd(student, teacher)
    assert seen["student"].ctypes.data == student.data_ptr()
    assert seen["teacher"].ctypes.data == teacher.data_ptr()


def test_trains_a_tiny_model_inside_a_torch_loop():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    teacher = torch.nn.Linear(8, 5)
    student = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    with torch.no_grad():
        teacher_logits = 3 * teacher(x) + 4  # confident, with positive max logits, like a CNN's
    y = teacher_logits.argmax(1)
    criterion = dt.DTKDObjective(warmup=1)
    # SGD with momentum 0.9 written out: torch.optim's first import costs seconds here
    velocity = [torch.zeros_like(p) for p in student.parameters()]
    history = []
    for epoch in range(1, 31):
        student.zero_grad()
        loss = criterion(student(x), teacher_logits, y, epoch=epoch)
        loss.backward()
        with torch.no_grad():
            for p, v in zip(student.parameters(), velocity):
                v.mul_(0.9).add_(p.grad)
                p.sub_(0.05 * v)
        history.append(loss.item())
    assert all(np.isfinite(history)) and history[-1] < 0.3 * history[0], history
    assert criterion.last_result.n_fallback == 0
    # the step's gradient is the kernel's, chained through the last layer
    student.zero_grad()
    hidden = student[1](student[0](x)).detach()
    criterion(student[2](hidden), teacher_logits, y, epoch=31).backward()
    dlogits = criterion.last_result.grad
    np.testing.assert_allclose(student[2].weight.grad.numpy(), dlogits.T @ hidden.numpy(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad, error, words", [
    (lambda s, t, y: (s.to("meta"), t, y), ValueError, ["student", "CPU", "meta", ".cpu()"]),
    (lambda s, t, y: (s, t.to("meta"), y), ValueError, ["teacher", "CPU"]),
    (lambda s, t, y: (s, t, y.to("meta")), ValueError, ["labels", "CPU"]),
    (lambda s, t, y: (s.long(), t, y), TypeError, ["student", "floating-point", "int64"]),
    (lambda s, t, y: (s, t.bool(), y), TypeError, ["teacher", "floating-point", "bool"]),
    (lambda s, t, y: (s, t, y.float()), TypeError, ["labels", "integer", "float32"]),
    (lambda s, t, y: (s.numpy(), t, y), TypeError, ["student", "torch.Tensor", "ndarray"]),
    (lambda s, t, y: (s, t[:, :5], y), ValueError, ["teacher", "shape"]),
    (lambda s, t, y: (s, t, y + 10), ValueError, ["labels", "[0, 10)"]),
    (lambda s, t, y: (s.to_sparse(), t, y), TypeError, ["student", "dense"]),
])
def test_bad_tensors_get_clear_errors(logits, bad, error, words):
    s, t, y = (torch.from_numpy(a) for a in logits)
    s, t, y = bad(s, t, y)
    with pytest.raises(error) as err:
        dt.dtkd_objective(s, t, y)
    for word in words:
        assert word in str(err.value)


def test_without_torch_the_import_error_says_what_to_install():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import dtkd.torch\nexcept ImportError as e:\n    print(e)\n"
            "import dtkd, dtkd.losses; print('numpy api ok')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "dtkd.torch needs PyTorch (`pip install torch`" in out and "numpy api ok" in out
