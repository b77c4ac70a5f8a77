"""DTKD's warmup: the distillation terms ramp in over this many epochs (official 20 of 240; the
Fashion-MNIST config uses 1 of 5)."""
import pytest
from sanity import learned


@pytest.mark.parametrize("warmup", [1, 2, 3, 5])
def test_dtkd_warmup(distill, warmup, seed):
    assert learned(distill("DTKD", {"DTKD.WARMUP": warmup}, seed=seed))
