"""What benchmarks/sanitize.sh runs under valgrind: a few DTKD training steps of the tiny CNN of
the reliability tests (every kernel family: Winograd and im2col convolutions, batch norm, pools,
linear, the loss kernel, fused SGD), a resnet8 forward and backward, and the losses."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import dtkd  # noqa: E402
from dtkd import losses  # noqa: E402
from reliability_helpers import TinyStep  # noqa: E402

step = TinyStep()
for _ in range(3):
    loss = step()
assert np.isfinite(loss)
model = dtkd.models.create("resnet8", num_classes=10)
x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
logits = model(x)
model.backward(np.ones_like(logits) / logits.size)
s, t = logits, 2 * logits
y = np.array([1, 2])
for fn in (lambda: losses.dtkd_objective(s, t, y, epoch=5), lambda: losses.dkd(s, t, y),
           lambda: losses.kd(s, t)):
    assert np.isfinite(fn().loss)
print("valgrind step: ok, loss", float(loss))
