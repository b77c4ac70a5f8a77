"""Data parallel over MPI (dtkd.distributed.mpi): `mpirun -n 2 python -m dtkd train --distributed
mpi` against one process on the same data and seed. Synchronized BatchNorm: the same weights,
logits and test accuracy as one process over the same global batches. Per-rank BatchNorm (the
default, as DDP): the same as one process that normalizes each half-batch separately (an
independent loop here, keeping the running statistics of the first half as rank 0 does). The
dataset size leaves an uneven last batch (61 = 30 + 31), so the per-rank shares of the loss are
checked too. Skipped with the reason when mpirun or mpi4py is missing.

Tolerance: tiny nets on random images are sensitive. Measured in one process with this setup
(2 epochs, 4 steps), scaling the initial weights by (1 + 1e-7) moved the weights by up to 1.1e-4
at SOLVER.LR 0.01, 1.7e-5 at 0.003 and 3.8e-6 at 0.001 (Zen 3, AVX2; 2.6e-5 at 0.01 on a Zen 4).
Synchronized BatchNorm sums in another order than one process (rounding ~1e-9 after one step),
hence LR 0.001 and atol 2e-5. The per-rank test repeats the ranks' arithmetic exactly (each half
from zeroed gradients, then summed), so there the weights agree to the last bits."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dtkd import io as dtkd_io
from dtkd import models
from dtkd.config import load_config
from dtkd.distributed.mpi import GradientBucket, _merge_meters
from dtkd.engine.build import build_trainer
from dtkd.engine.schedule import learning_rate
from dtkd.engine.trainer import _EpochMeter
from dtkd.nn.grad_mode import no_grad
from test_data import make_fmnist

MPIRUN = shutil.which("mpirun")


def mpi_available():
    if MPIRUN is None:
        return "no mpirun on PATH (apt-get install openmpi-bin libopenmpi-dev)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'dtkd[mpi]')"
    return None


needs_mpi = pytest.mark.skipif(mpi_available() is not None, reason=str(mpi_available()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpi")
    data = root / "data"
    make_fmnist(data, "train", n=140, seed=1)
    make_fmnist(data, "test", n=40, seed=2)
    teacher = models.create("resnet20", num_classes=10, in_channels=1, seed=3)
    path = root / "teacher.npz"
    dtkd_io.save(path, {"kind": "model", "model": teacher.state_dict(), "epoch": 0})
    overrides = ["DATASET.ROOT", str(data), "DATASET.SUBSET", "125", "DATASET.TEST.SUBSET", "40",
                 "SOLVER.BATCH_SIZE", "64", "SOLVER.EPOCHS", "2", "SOLVER.LR", "0.001",
                 "LOG.PROBE_SAMPLES", "0",
                 "DISTILLER.TEACHER_CHECKPOINT", str(path), "NUM_THREADS", "1"]
    return root, overrides


def mpirun(n, out, overrides, *extra):
    cmd = [MPIRUN, "-n", str(n)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += ["--oversubscribe", "-x", "OMP_NUM_THREADS=1", sys.executable, "-m", "dtkd", "train",
            "--cfg", "fashion_mnist/dtkd.yaml", "--distributed", "mpi", *extra, "--out", str(out),
            *overrides]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def weights(path):
    return dtkd_io.load(path)["model"]


def assert_same_weights(a, b, rtol=2e-4, atol=2e-5):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


def logits(state, x):
    model = models.create("resnet8", num_classes=10, in_channels=1, seed=0)
    model.load_state_dict(state)
    model.eval()
    with no_grad():
        return model.forward(x)


def first_test_batch(cfg):
    from dtkd.engine.build import build_dataset, build_test_loader
    return next(iter(build_test_loader(cfg, build_dataset(cfg, "test"))))[0]


@needs_mpi
def test_two_ranks_with_sync_batchnorm_equal_one_process_on_the_global_batch(setup):
    root, overrides = setup
    run = mpirun(2, root / "sync", overrides, "--sync-bn")
    assert "2 MPI processes" in run.stdout and "synchronized" in run.stdout
    cfg = load_config("fashion_mnist/dtkd.yaml", overrides)
    build_trainer(cfg, out_dir=root / "one", progress=False).train()
    mpi_w, one_w = weights(root / "sync" / "model_last.npz"), weights(root / "one" / "model_last.npz")
    assert_same_weights(mpi_w, one_w)  # running statistics included (global-batch statistics)
    x = first_test_batch(cfg)
    np.testing.assert_allclose(logits(mpi_w, x), logits(one_w, x), rtol=1e-4, atol=1e-4)
    mpi_log = [json.loads(l) for l in (root / "sync" / "log.jsonl").read_text().splitlines()]
    one_log = [json.loads(l) for l in (root / "one" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(mpi_log, one_log):  # evaluation split over ranks, losses merged
        assert a["test_acc"] == b["test_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["t_student_max"] == pytest.approx(b["t_student_max"], rel=1e-5)
    # rank 0 alone wrote: one log line per epoch, no stray files of rank 1
    assert len(mpi_log) == 2


@needs_mpi
def test_two_ranks_with_per_rank_batchnorm_equal_one_process_normalizing_each_half(setup):
    root, overrides = setup
    mpirun(2, root / "local", overrides)
    cfg = load_config("fashion_mnist/dtkd.yaml", overrides)
    trainer = build_trainer(cfg, out_dir=root / "halves", progress=False)
    student, distiller, opt = trainer.student, trainer.distiller, trainer.optimizer
    original = distiller.loss_and_grad
    share = [1.0]

    def scaled(*args):
        loss, grad, stats = original(*args)
        return loss, grad * np.float32(share[0]), stats

    distiller.loss_and_grad = scaled
    buffers = [b for _, b in student.named_buffers()]
    params = list(student.parameters())
    solver = cfg.SOLVER
    for epoch in (1, 2):
        opt.lr = learning_rate(epoch, solver.LR, solver.EPOCHS, solver.SCHEDULE,
                               solver.LR_DECAY_STAGES, solver.LR_DECAY_RATE)
        for x, y in trainer.train_loader:
            n = len(y)
            kept, rank0_grads = None, None
            for lo, hi in ((0, n // 2), (n // 2, n)):
                # each half from zeroed gradients, summed after, as the allreduce sums the
                # ranks' (accumulating the second half onto the first rounds differently, and
                # 4 steps of these nets turn a 1e-9 difference into 3e-5)
                opt.zero_grad()
                share[0] = (hi - lo) / n
                distiller.train_step(np.ascontiguousarray(x[lo:hi]), y[lo:hi], epoch)
                if kept is None:  # rank 0's running statistics are the ones that stay
                    kept = [b.copy() for b in buffers]
                    rank0_grads = [p.grad.copy() for p in params]
            for p, g0 in zip(params, rank0_grads):
                p.grad[...] = g0 + p.grad
            for b, k in zip(buffers, kept):
                b[...] = k
            opt.step()
    mpi_w = weights(root / "local" / "model_last.npz")
    # the same arithmetic in both: equal to the last bits, whatever the SIMD path
    assert_same_weights(mpi_w, student.state_dict(), rtol=1e-6, atol=1e-9)
    x = first_test_batch(cfg)
    np.testing.assert_allclose(logits(mpi_w, x), logits(student.state_dict(), x), rtol=1e-4,
                               atol=1e-4)
    # and it is not the global-batch result (the two BatchNorm modes differ)
    sync_w = root / "sync" / "model_last.npz"
    if sync_w.exists():
        assert not np.allclose(mpi_w["conv1.weight"], weights(sync_w)["conv1.weight"],
                               rtol=1e-6, atol=1e-7)


@needs_mpi
def test_a_batch_that_cannot_be_split_is_refused_on_every_rank(setup):
    root, overrides = setup
    cmd = [MPIRUN, "-n", "2"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    cmd += ["--oversubscribe", sys.executable, "-m", "dtkd", "train", "--cfg",
            "fashion_mnist/dtkd.yaml", "--distributed", "mpi", "--out", str(root / "bad"),
            *overrides, "DATASET.SUBSET", "65"]  # last batch: 1 sample for 2 processes
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "SOLVER.BATCH_SIZE" in run.stderr


# ---- pieces that need no MPI ----------------------------------------------------------------

def test_gradient_bucket_views_keep_values_and_survive_zero_grad():
    from dtkd.optim import SGD
    model = models.create("resnet8", num_classes=10, in_channels=1, seed=0)
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad[...] = i
    bucket = GradientBucket(params, extra=1)
    assert bucket.flat.size == sum(p.grad.size for p in params) + 1
    assert all(np.all(p.grad == i) and np.shares_memory(p.grad, bucket.flat)
               for i, p in enumerate(params))
    opt = SGD(params, lr=0.1)
    opt.zero_grad()
    assert not bucket.flat[:-1].any() and all(np.shares_memory(p.grad, bucket.flat) for p in params)
    bucket.flat[:] = 2.0  # an allreduce writes the buffer: every parameter sees it
    assert all(np.all(p.grad == 2.0) for p in params)


def test_merged_meters_weigh_by_samples_and_keep_extremes():
    a, b = _EpochMeter(), _EpochMeter()
    a.update({"loss": 1.0, "t_min": 0.5, "t_max": 2.0, "n_fallback": 1}, np.zeros(2, np.int64))
    b.update({"loss": 4.0, "t_min": 0.2, "t_max": 1.0, "n_fallback": 2}, np.zeros(1, np.int64))
    merged = _merge_meters([a.__dict__, b.__dict__]).results()
    assert merged["train_loss"] == pytest.approx((2 * 1.0 + 4.0) / 3)
    assert merged["t_min"] == 0.2 and merged["t_max"] == 2.0 and merged["n_fallback"] == 3


def test_sync_bn_without_distributed_is_refused():
    from dtkd.cli import main
    assert main(["train", "--cfg", "fashion_mnist/dtkd.yaml", "--sync-bn"]) == 2
