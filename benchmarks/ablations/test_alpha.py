"""DTKD's alpha (weight of L_DTKD; official 3) with beta, T and warmup at the config's values."""
import pytest
from sanity import learned


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0, 4.0])
def test_dtkd_alpha(distill, alpha, seed):
    assert learned(distill("DTKD", {"DTKD.ALPHA": alpha}, seed=seed))
