"""resnet32x4 eval (no_grad, batch 64, 1 thread): BN-fold + Winograd weight cache on vs off.

    PYTHONPATH=. python benchmarks/bench_eval_cache.py
"""
import time, numpy as np, dtkd
from dtkd import models, nn
dtkd.set_num_threads(1)
m = models.create("resnet32x4").eval()
x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
def step(clear):
    if clear:
        for c in convs: c.__dict__.pop("_fold_cache", None)
    with nn.no_grad():
        m(x)
res = {True: [], False: []}
for r in range(6):
    for clear in (True, False):
        t0 = time.perf_counter(); step(clear); res[clear].append(time.perf_counter() - t0)
for clear in (False, True):
    print("cache", "off (fold + transform per call)" if clear else "on", "median ms", round(1e3 * sorted(res[clear])[3], 1))
