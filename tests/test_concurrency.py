"""Concurrency: losses, model forwards and whole training steps called from several Python
threads at once (the kernels run with the GIL released, each call with its own OpenMP team)
give, bit for bit, what the same calls give one after another. (Two training runs into one
output directory: tests/test_crash_safety.py.)"""
import threading

import numpy as np

import dtkd
import dtkd.models
from dtkd import losses
from dtkd.nn import no_grad

THREADS = 4


def run_in_threads(jobs):
    """Run each job (a callable) in its own thread, all started together; their results."""
    results = [None] * len(jobs)
    errors = []
    barrier = threading.Barrier(len(jobs))

    def work(i):
        try:
            barrier.wait()
            results[i] = jobs[i]()
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def loss_inputs(seed, n=32, c=100):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c)).astype(np.float32),
            (3 * rng.standard_normal((n, c))).astype(np.float32), rng.integers(0, c, size=n))


def all_losses(s, t, y):
    """Every public loss on one input: (name, loss, grad bytes) tuples."""
    results = [losses.kd(s, t), losses.dtkd(s, t), losses.dkd(s, t, y),
               losses.dtkd_objective(s, t, y, epoch=5, warmup=20),
               losses.dkd_objective(s, t, y, epoch=5, warmup=20), losses.cross_entropy(s, y)]
    return [(float(r.loss), r.grad.tobytes()) for r in results]


def test_losses_from_several_threads_equal_serial_results():
    inputs = [loss_inputs(seed) for seed in range(THREADS)]
    serial = [[all_losses(*inp) for _ in range(50)] for inp in inputs]
    concurrent = run_in_threads([lambda inp=inp: [all_losses(*inp) for _ in range(50)]
                                 for inp in inputs])
    assert concurrent == serial


def test_model_forward_from_several_threads_equals_serial_results():
    model = dtkd.models.create("resnet8", num_classes=10).eval()
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((4, 3, 32, 32)).astype(np.float32) for _ in range(THREADS)]

    def forward(x):
        with no_grad():
            return model(x).tobytes()

    # first concurrent use of a fresh model: the lazily built eval caches are built under race
    concurrent = run_in_threads([lambda x=x: [forward(x) for _ in range(2)] for x in batches])
    serial = [[forward(x) for _ in range(2)] for x in batches]
    assert concurrent == serial


def test_training_models_in_threads_equal_serial_training():
    from reliability_helpers import TinyStep

    def train(seed):
        step = TinyStep(seed=seed)
        return [step() for _ in range(3)] + [p.data.tobytes() for p in step.student.parameters()]

    serial = [train(seed) for seed in range(THREADS)]
    assert run_in_threads([lambda seed=seed: train(seed) for seed in range(THREADS)]) == serial
