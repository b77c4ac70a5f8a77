"""The reference temperature T, for KD (its fixed temperature) and DTKD (the reference its
per-sample temperatures are built around): the paper's claim is that DTKD depends less on T."""
import pytest
from sanity import learned

TEMPERATURE_KEY = {"KD": "KD.TEMPERATURE", "DTKD": "DTKD.T"}


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("method", list(TEMPERATURE_KEY))
def test_reference_temperature(distill, method, temperature, seed):
    assert learned(distill(method, {TEMPERATURE_KEY[method]: temperature}, seed=seed))
