"""Every method of dtkd.testing.METHODS on one teacher/student pair (resnet20 -> resnet8):
vanilla, KD, DKD, DTKD, DTKD on TCKD only, on NCKD only, DTKD+DKD, DTKD's exact temperature
rule, KD / DKD / DTKD with logit standardization, CTKD (and whatever has been added to the list
since)."""
import pytest
from sanity import learned

from dtkd.testing import METHODS


@pytest.mark.parametrize("method", list(METHODS))
def test_method(distill, method, seed):
    assert learned(distill(method, seed=seed))
