"""Bad input to dtkd.losses raises a clear exception naming the argument, never a crash."""
import numpy as np
import pytest

from dtkd import _C, losses

rng = np.random.default_rng(7)
S = rng.normal(size=(4, 5)).astype(np.float32) + 1
TT = rng.normal(size=(4, 5)).astype(np.float32) + 2
Y = np.array([0, 1, 4, 2])


def pair_losses():
    """Every public loss that takes (student, teacher[, labels]), as f(student, teacher, labels)."""
    return {
        "kd": lambda s, t, y: losses.kd(s, t),
        "dtkd": lambda s, t, y: losses.dtkd(s, t),
        "dkd": lambda s, t, y: losses.dkd(s, t, y),
        "dkd_dynamic": lambda s, t, y: losses.dkd(s, t, y, dynamic_temperature="both"),
        "dtkd_objective": lambda s, t, y: losses.dtkd_objective(s, t, y),
        "dkd_objective": lambda s, t, y: losses.dkd_objective(s, t, y),
        "dynamic_temperatures": lambda s, t, y: losses.dynamic_temperatures(s, t),
    }


PAIR = pytest.mark.parametrize("fn", list(pair_losses().values()), ids=list(pair_losses()))
LABELLED = pytest.mark.parametrize(
    "fn", [lambda s, y: losses.cross_entropy(s, y),
           lambda s, y: losses.dkd(s, TT[: len(s)] if len(s) == 4 else s, y),
           lambda s, y: losses.dtkd_objective(s, s, y),
           lambda s, y: losses.dkd_objective(s, s, y)],
    ids=["cross_entropy", "dkd", "dtkd_objective", "dkd_objective"])


@PAIR
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_wrong_ndim_names_student(fn, shape):
    with pytest.raises(ValueError, match="student: expected a 2-D array"):
        fn(np.ones(shape, np.float32), TT, Y)


@PAIR
def test_mismatched_teacher_shape_names_teacher(fn):
    with pytest.raises(ValueError, match=r"teacher: expected the shape of student \(4, 5\), got \(4, 6\)"):
        fn(S, np.ones((4, 6), np.float32), Y)


@PAIR
def test_empty_batch_is_rejected(fn):
    empty = np.zeros((0, 5), np.float32)
    with pytest.raises(ValueError, match=r"student: expected at least one sample"):
        fn(empty, empty, np.zeros(0, np.int64))


@PAIR
def test_fewer_than_two_classes_is_rejected(fn):
    one = np.ones((4, 1), np.float32)
    with pytest.raises(ValueError, match=r"student: expected at least 2 classes"):
        fn(one, one, np.zeros(4, np.int64))


@PAIR
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_non_finite_logits_name_the_argument(fn, bad, which):
    s, t = S.copy(), TT.copy()
    (s if which == "student" else t)[2, 3] = bad
    with pytest.raises(ValueError, match=f"{which}: contains NaN or Inf"):
        fn(s, t, Y)


def test_float64_that_overflows_float32_is_non_finite():
    big = S.astype(np.float64)
    big[0, 0] = 1e300
    with pytest.raises(ValueError, match="student: contains NaN or Inf"):
        losses.dtkd(big, TT)


@LABELLED
@pytest.mark.parametrize("labels", [[0, 1, 5, 2], [0, -1, 2, 3]])
def test_labels_out_of_range(fn, labels):
    with pytest.raises(ValueError, match=r"labels: .*\[0, 5\)"):
        fn(S, np.array(labels))


@LABELLED
def test_labels_out_of_range_in_int64_fast_path(fn):
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 5\), found 7"):
        fn(S, np.array([0, 7, 1, 2], dtype=np.int64))


@LABELLED
@pytest.mark.parametrize("labels", [[0, 1, 2], [[0, 1, 2, 3]]])
def test_labels_wrong_shape(fn, labels):
    with pytest.raises(ValueError, match=r"labels: expected shape \(4,\)"):
        fn(S, np.array(labels))


@LABELLED
@pytest.mark.parametrize("labels", [[0.5, 1, 2, 3], ["a", "b", "c", "d"], None])
def test_labels_not_integers(fn, labels):
    with pytest.raises(TypeError, match="labels"):
        fn(S, labels if labels is None else np.array(labels))


@pytest.mark.parametrize("temperature", [0.0, -1.0, np.nan, np.inf])
@pytest.mark.parametrize("fn", [losses.kd, losses.dtkd, losses.dynamic_temperatures])
def test_temperature_must_be_finite_and_positive(fn, temperature):
    with pytest.raises(ValueError, match="temperature: must be finite and > 0"):
        fn(S, TT, temperature=temperature)


@pytest.mark.parametrize("temperature", ["4", None, [4.0], True])
def test_temperature_must_be_a_real_number(temperature):
    with pytest.raises(TypeError, match="temperature"):
        losses.dtkd(S, TT, temperature=temperature)


@pytest.mark.parametrize("temperature", [0.0, -2.0, np.nan])
@pytest.mark.parametrize("fn", [losses.softmax, losses.log_softmax, losses.logsumexp, losses.sharpness])
def test_softmax_family_temperature_checked(fn, temperature):
    with pytest.raises(ValueError, match="temperature"):
        fn(S, temperature)


@pytest.mark.parametrize("warmup", [0, -5, np.nan])
@pytest.mark.parametrize("objective", [losses.dtkd_objective, losses.dkd_objective])
def test_warmup_must_be_positive(objective, warmup):
    with pytest.raises(ValueError, match="warmup: must be finite and > 0"):
        objective(S, TT, Y, warmup=warmup)


@pytest.mark.parametrize("objective", [losses.dtkd_objective, losses.dkd_objective])
def test_epoch_must_be_nonnegative_and_finite(objective):
    with pytest.raises(ValueError, match="epoch"):
        objective(S, TT, Y, epoch=-1)
    with pytest.raises(ValueError, match="epoch"):
        objective(S, TT, Y, epoch=np.inf)
    with pytest.raises(TypeError, match="epoch"):
        objective(S, TT, Y, epoch="3")


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma"])
def test_loss_weights_must_be_finite_numbers(name):
    with pytest.raises(ValueError, match=name):
        losses.dtkd_objective(S, TT, Y, **{name: np.nan})
    with pytest.raises(TypeError, match=name):
        losses.dkd_objective(S, TT, Y, **{name: "1"})


@pytest.mark.parametrize("student", ["abc", None, object(), [[1, 2], [3]], {"a": 1},
                                     np.array([[1 + 2j, 3]]), np.array([["a", "b"]])])
def test_non_numeric_objects_raise_type_error(student):
    with pytest.raises(TypeError, match="student"):
        losses.dtkd(student, TT)


@pytest.mark.parametrize("reduction", ["avg", "", None, 1])
def test_unknown_reduction(reduction):
    with pytest.raises((ValueError, TypeError), match="reduction"):
        losses.kd(S, TT, reduction=reduction)


def test_unknown_dynamic_temperature_and_non_bool_flags():
    with pytest.raises(ValueError, match="dynamic_temperature"):
        losses.dkd(S, TT, Y, dynamic_temperature="all")
    with pytest.raises(TypeError, match="detach_temperature"):
        losses.dtkd(S, TT, detach_temperature="yes")
    with pytest.raises(TypeError, match="approximation"):
        losses.sharpness(S, approximation="max")


def test_backward_shapes_are_checked():
    out = losses.softmax(S)
    with pytest.raises(ValueError, match="grad_output: expected the shape of output"):
        losses.softmax_backward(np.ones((4, 6), np.float32), out)
    with pytest.raises(ValueError, match="grad_output: contains NaN or Inf"):
        losses.log_softmax_backward(np.full((4, 5), np.nan, np.float32), out)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(4\)"):
        losses.logsumexp_backward(np.ones(3, np.float32), S, losses.logsumexp(S))


# ---- the strict C boundary: dtype, contiguity and types are checked, not converted ----

def test_c_boundary_rejects_wrong_dtype():
    with pytest.raises(TypeError, match="student: expected dtype numpy.float32, got numpy.float64"):
        _C.kl(S.astype(np.float64), TT, 4.0, 1, 1.0)
    with pytest.raises(TypeError, match="labels: expected dtype numpy.int64, got numpy.int32"):
        _C.dkd(S, TT, Y.astype(np.int32), 1.0, 8.0, 4.0, False, False, 1, 1.0)


def test_c_boundary_rejects_non_contiguous():
    with pytest.raises(ValueError, match="teacher: expected a C-contiguous"):
        _C.kl(S, np.asfortranarray(TT), 4.0, 1, 1.0)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        _C.softmax_forward(np.ones((5, 8), np.float32)[:, ::2], 1.0)


def test_c_boundary_rejects_non_arrays_and_bad_mode():
    with pytest.raises(TypeError, match="student: expected a numpy.ndarray, got list"):
        _C.kl(S.tolist(), TT, 4.0, 1, 1.0)
    with pytest.raises(ValueError, match="mode"):
        _C.kl(S, TT, 4.0, 7, 1.0)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        _C.kl(S, TT, -1.0, 1, 1.0)
