"""DTKD's beta (weight of the vanilla KD term; official 1); beta 0 is L_DTKD + CE alone."""
import pytest
from sanity import learned


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_dtkd_beta(distill, beta, seed):
    assert learned(distill("DTKD", {"DTKD.BETA": beta}, seed=seed))
