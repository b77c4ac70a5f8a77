"""The paper's Figure-1 setting: student resnet8, teachers of increasing size, the vanilla
student as the baseline and KD vs DTKD at the same reference temperature. Each teacher is
trained once (then cached); resnet110 costs about 5x resnet20 to train."""
import pytest
from sanity import learned

TEACHERS = ["resnet20", "resnet32", "resnet56", "resnet110"]


@pytest.mark.parametrize("teacher", TEACHERS)
@pytest.mark.parametrize("method", ["KD", "DTKD"])
def test_teacher_size(distill, method, teacher, seed):
    assert learned(distill(method, teacher=teacher, seed=seed))


def test_vanilla_baseline(distill, seed):
    assert learned(distill("vanilla", seed=seed))
