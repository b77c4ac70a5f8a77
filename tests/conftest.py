"""Suite-wide setup: the tests never write into the user's cache directory.

Runs that use the default teacher-logit cache (``DISTILLER.TEACHER_CACHE``) or tuning cache
would otherwise leave files under ~/.cache/dtkd, and a later run could read a cache an earlier
test left there. Each test session (each xdist worker) gets its own XDG_CACHE_HOME under
pytest's temporary directory; tests that need a specific cache directory still set their own.
"""
import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        yield
