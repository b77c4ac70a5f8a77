"""The workspace arena (csrc/runtime/arena.c): conv and Winograd workspaces are kept across
calls, reused, safe under concurrent Python threads, and freed on request."""
import threading

import numpy as np

from dtkd import _C


def conv_inputs(seed=0, n=4, c=16, hw=16, o=16):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c, hw, hw)).astype(np.float32),
            rng.standard_normal((o, c, 3, 3)).astype(np.float32))


def test_workspace_is_kept_reused_and_trimmed():
    x, w = conv_inputs()
    _C.workspace_trim()
    y1 = _C.conv2d_forward(x, w, None, 1, 1, 1, 1, 1)
    held = _C.workspace_cached_bytes()
    assert held > 0  # the im2col workspace stayed for the next call
    for _ in range(3):
        y2 = _C.conv2d_forward(x, w, None, 1, 1, 1, 1, 1)
        _C.winograd_conv3x3_forward(x, w)
        _C.conv3x3_backward_weight(y2, x, np.zeros_like(w))
    np.testing.assert_array_equal(y1, y2)
    assert _C.workspace_cached_bytes() <= 3 * max(held, 1) * 64  # reused, not one per call
    freed = _C.workspace_trim()
    assert freed > 0 and _C.workspace_cached_bytes() == 0


def test_workspace_serves_concurrent_python_threads():
    """Kernels release the GIL: threads calling at once must not share a workspace block."""
    problems = [conv_inputs(seed) for seed in range(6)]
    expected = [_C.conv2d_forward(x, w, None, 1, 1, 1, 1, 1) for x, w in problems]
    results, errors = [None] * len(problems), []

    def work(i):
        try:
            x, w = problems[i]
            for _ in range(5):
                results[i] = _C.conv2d_forward(x, w, None, 1, 1, 1, 1, 1)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
