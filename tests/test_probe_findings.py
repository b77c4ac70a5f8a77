"""Issue 13's probe findings ("What a probe of ~12,000 bad inputs already found"), one test per
finding, named after what the fix guarantees. The fuzz harnesses (tests/fuzz) no longer list
these as KNOWN, so they enforce the same fixes on random inputs."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dtkd
from dtkd import losses


# ---- threads -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [10 ** 6, dtkd.MAX_THREADS + 1, 2 ** 31, 10 ** 30, 0, -3])
def test_set_num_threads_refuses_counts_outside_1_to_max_threads(n):
    before = dtkd.get_num_threads()
    with pytest.raises(ValueError, match=r"set_num_threads: n must be in \[1, \d+\]"):
        dtkd.set_num_threads(n)
    assert dtkd.get_num_threads() == before


def test_the_c_binding_refuses_a_million_threads_too():
    with pytest.raises(ValueError, match="set_num_threads"):
        dtkd._C.set_num_threads(10 ** 6)


def test_a_parallel_kernel_runs_at_max_threads():
    # in a child: the probe's segfault would otherwise take the test run down with it
    code = textwrap.dedent("""
        import numpy as np, dtkd
        from dtkd import losses
        dtkd.set_num_threads(dtkd.MAX_THREADS)
        s = np.random.default_rng(0).standard_normal((1000, 100)).astype(np.float32)
        print(float(losses.kd(s, 2 * s).loss))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert np.isfinite(float(out.stdout))
