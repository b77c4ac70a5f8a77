"""Trainer engine: LR schedule, checkpoints (format, atomicity, corruption), resume equality,
logs and progress. The engine is tested on a tiny NumPy softmax-regression model with a
cross-entropy distiller and a NumPy SGD written here, so it needs no other dtkd branch."""
import json
import re
import os
from pathlib import Path

import numpy as np
import pytest

import dtkd.io as dtkd_io
from dtkd.config import get_default_config
from dtkd.engine import Trainer, experiment_dir, learning_rate, topk_correct, cross_entropy_sum
from dtkd.io import checkpoint as ckpt_module


# ----------------------------------------------------------------------------------------------
# A tiny but real model, distiller, optimizer and loader (NumPy, float32 storage).

class Param:
    def __init__(self, data):
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.grad = np.zeros_like(self.data)


class SoftmaxRegression:
    """logits = flatten(x) @ W.T + b, with the Module API the trainer uses."""

    def __init__(self, in_features, num_classes, seed):
        rng = np.random.default_rng(seed)
        self.weight = Param(rng.normal(0, 0.1, (num_classes, in_features)))
        self.bias = Param(np.zeros(num_classes))
        self.training = True
        self._x = None

    def forward(self, x):
        self._x = x.reshape(len(x), -1)
        return self._x @ self.weight.data.T + self.bias.data

    def backward(self, dlogits):
        self.weight.grad += dlogits.T @ self._x
        self.bias.grad += dlogits.sum(axis=0)

    def parameters(self):
        return [self.weight, self.bias]

    def state_dict(self):
        return {"weight": self.weight.data.copy(), "bias": self.bias.data.copy()}

    def load_state_dict(self, state):
        self.weight.data[...] = state["weight"]
        self.bias.data[...] = state["bias"]

    def train(self):
        self.training = True

    def eval(self):
        self.training = False


class CrossEntropyDistiller:
    """Vanilla training: mean cross-entropy on the student's logits."""

    def __init__(self, student, fail_at=None):
        self.student = student
        self.fail_at = fail_at  # (epoch, step): raise there, to simulate an interruption
        self.steps_in_epoch = {}

    def train_step(self, x, y, epoch):
        step = self.steps_in_epoch.get(epoch, 0)
        self.steps_in_epoch[epoch] = step + 1
        if self.fail_at == (epoch, step):
            raise KeyboardInterrupt("simulated interruption")
        logits = self.student.forward(x)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y]).mean())
        dlogits = p.copy()
        dlogits[np.arange(len(y)), y] -= 1.0
        self.student.backward((dlogits / len(y)).astype(np.float32))
        sharpness = logits.max(axis=1)  # DTKD's per-sample sharpness proxy, max logit
        return {"loss": loss, "logits": logits, "sharpness_mean": float(sharpness.mean()),
                "sharpness_min": float(sharpness.min()), "sharpness_max": float(sharpness.max()),
                "n_samples": len(y)}


class NumpySGD:
    """torch.optim.SGD's update (weight decay into the gradient, then momentum), float32."""

    def __init__(self, params, lr, momentum, weight_decay):
        self.params, self.lr, self.momentum, self.weight_decay = list(params), lr, momentum, weight_decay
        self.buffers = None

    def zero_grad(self):
        for p in self.params:
            p.grad.fill(0)

    def step(self):
        lr, mom, wd = np.float32(self.lr), np.float32(self.momentum), np.float32(self.weight_decay)
        first = self.buffers is None
        if first:
            self.buffers = [np.zeros_like(p.data) for p in self.params]
        for p, buf in zip(self.params, self.buffers):
            g = p.grad + wd * p.data
            buf[...] = g if first else mom * buf + g
            p.data -= lr * buf

    def state_dict(self):
        return {"lr": self.lr, "buffers": None if self.buffers is None else [b.copy() for b in self.buffers]}

    def load_state_dict(self, state):
        self.lr = state["lr"]
        self.buffers = None if state["buffers"] is None else [np.array(b, np.float32) for b in state["buffers"]]


class ArrayLoader:
    """Seeded shuffling batches of (x float32 NCHW, y int64) with a checkpointable state."""

    def __init__(self, x, y, batch_size, seed, shuffle=True):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(len(self.y)) if self.shuffle else np.arange(len(self.y))
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


NUM_CLASSES, SHAPE = 4, (1, 2, 4)


def blobs(n, seed):
    """Four Gaussian classes in 8 dimensions, shaped as tiny NCHW images."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(0, 1.5, (NUM_CLASSES, int(np.prod(SHAPE))))
    y = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    x = centers[y] + rng.normal(0, 1.0, (n, centers.shape[1]))
    return x.reshape(n, *SHAPE).astype(np.float32), y


def make_cfg(epochs=4, **solver):
    cfg = get_default_config()
    cfg.SOLVER.EPOCHS = epochs
    cfg.SOLVER.LR = 0.1
    cfg.SOLVER.LR_DECAY_STAGES = [2, 3]
    cfg.SOLVER.WEIGHT_DECAY = 5e-4
    cfg.LOG.SAVE_CHECKPOINT_FREQ = 2
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def make_trainer(out_dir, cfg=None, model_seed=0, loader_seed=0, fail_at=None, progress=False):
    cfg = cfg or make_cfg()
    student = SoftmaxRegression(int(np.prod(SHAPE)), NUM_CLASSES, model_seed)
    distiller = CrossEntropyDistiller(student, fail_at)
    x, y = blobs(320, seed=1)
    xv, yv = blobs(200, seed=2)
    optimizer = NumpySGD(student.parameters(), cfg.SOLVER.LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY)
    return Trainer(cfg, distiller, ArrayLoader(x, y, 32, loader_seed),
                   ArrayLoader(xv, yv, 64, 0, shuffle=False), out_dir, progress=progress,
                   optimizer=optimizer)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# LR schedule

def test_step_schedule_decays_after_each_stage_like_mdistiller():
    stages, base, rate = [150, 180, 210], 0.05, 0.1
    for epoch in range(1, 241):
        passed = 0
        for stage in stages:
            if epoch > stage:
                passed += 1
        assert learning_rate(epoch, base, 240, "step", stages, rate) == pytest.approx(base * rate ** passed, rel=1e-12)
    assert learning_rate(150, base, 240, "step", stages, rate) == base
    assert learning_rate(151, base, 240, "step", stages, rate) == pytest.approx(base * rate)
    assert learning_rate(211, base, 240, "step", stages, rate) == pytest.approx(base * rate ** 3)


def test_cosine_schedule_starts_at_base_and_halves_midway():
    lrs = [learning_rate(e, 0.1, 10, "cosine") for e in range(1, 11)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.05)  # epoch 6: (6 - 1) / 10 of the way
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] > 0


def test_schedule_rejects_epoch_zero_and_unknown_schedule():
    with pytest.raises(ValueError, match="epochs count from 1"):
        learning_rate(0, 0.1, 10)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(1, 0.1, 10, "linear")


def test_trainer_sets_the_scheduled_lr_each_epoch(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    cfg = trainer.cfg
    logged = [r["lr"] for r in read_jsonl(tmp_path / "log.jsonl")]
    expected = [learning_rate(e, cfg.SOLVER.LR, cfg.SOLVER.EPOCHS, "step", cfg.SOLVER.LR_DECAY_STAGES,
                              cfg.SOLVER.LR_DECAY_RATE) for e in range(1, 5)]
    assert logged == pytest.approx(expected)
    assert trainer.optimizer.lr == pytest.approx(expected[-1])


# ----------------------------------------------------------------------------------------------
# Metrics

def test_topk_and_cross_entropy_match_direct_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 50)
    order = np.argsort(-logits, axis=1, kind="stable")
    for k in (1, 3, 5, 7, 9):
        direct = int(sum(labels[i] in order[i, :k] for i in range(50)))
        assert topk_correct(logits, labels, (k,)) == [direct]
    z = logits.astype(np.float64)
    ce = sum(np.log(np.exp(z[i]).sum()) - z[i, labels[i]] for i in range(50))
    assert cross_entropy_sum(logits, labels) == pytest.approx(ce, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# Checkpoint format

def sample_tree():
    return {"model": {"conv1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                      "bn1.num_batches_tracked": np.array(7, dtype=np.int64),
                      "mask": np.array([True, False])},
            "optimizer": {"lr": 0.05, "nesterov": False, "momentum_buffers": [None, np.ones(3, np.float32)]},
            "rng": {"state": {"state": 2 ** 127 + 3, "inc": 5}, "bit_generator": "PCG64"},
            "epoch": 3, "best_acc": None, "history": [{"epoch": 1, "test_acc": 12.5}]}


def assert_tree_equal(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_tree_equal(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_checkpoint_round_trip_keeps_structure_dtypes_and_bits(tmp_path):
    tree = sample_tree()
    dtkd_io.save(tmp_path / "c.npz", tree)
    assert_tree_equal(tree, dtkd_io.load(tmp_path / "c.npz"))


def test_checkpoint_never_needs_pickle(tmp_path):
    dtkd_io.save(tmp_path / "c.npz", sample_tree())
    with np.load(tmp_path / "c.npz", allow_pickle=False) as archive:  # raises if pickle were needed
        assert all(archive[name].dtype != object for name in archive.files)


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "latest.npz"
    old = sample_tree()
    dtkd_io.save(path, old)
    before = path.read_bytes()

    def savez_that_dies(file, **arrays):
        file.write(b"PK\x03\x04 partial archive")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ckpt_module.np, "savez", savez_that_dies)
    new = sample_tree()
    new["epoch"] = 4
    with pytest.raises(KeyboardInterrupt):
        dtkd_io.save(path, new)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert_tree_equal(old, dtkd_io.load(path))
    assert sorted(os.listdir(tmp_path)) == ["latest.npz"]  # no temp file left behind


def test_unsaveable_value_raises_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match=r"tree\['model'\]\['f'\].*set"):
        dtkd_io.save(tmp_path / "c.npz", {"model": {"f": {1, 2}}})
    with pytest.raises(TypeError, match="object arrays"):
        dtkd_io.save(tmp_path / "c.npz", {"a": np.array([None, 1], dtype=object)})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "garbage", "empty"])
def test_corrupt_checkpoint_raises_clear_error(tmp_path, damage):
    path = tmp_path / "c.npz"
    tree = {"model": {"w": np.arange(4096, dtype=np.float32)}}
    dtkd_io.save(path, tree)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip_data_byte":
        at = raw.find(np.arange(4096, dtype=np.float32)[1000:1004].tobytes())
        assert at > 0
        raw[at] ^= 0xFF
    elif damage == "garbage":
        raw = bytearray(b"not a checkpoint at all" * 10)
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(dtkd_io.CheckpointError, match="corrupt or truncated") as err:
        dtkd_io.load(path)
    assert str(path) in str(err.value)


def test_foreign_npz_and_missing_file_are_reported(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(dtkd_io.CheckpointError, match="not a dtkd checkpoint"):
        dtkd_io.load(tmp_path / "plain.npz")
    with pytest.raises(dtkd_io.CheckpointError, match="not found"):
        dtkd_io.load(tmp_path / "absent.npz")


def test_load_teacher_reads_dtkd_checkpoints(tmp_path):
    state = {"fc.weight": np.ones((3, 2), np.float32), "fc.bias": np.zeros(3, np.float32)}
    dtkd_io.save(tmp_path / "bare.npz", state)
    dtkd_io.save(tmp_path / "full.npz", {"kind": "model", "model": state, "epoch": 5})
    for name in ("bare.npz", "full.npz"):
        assert_tree_equal(state, dtkd_io.load_teacher(tmp_path / name))
    dtkd_io.save(tmp_path / "empty.npz", {"epoch": 1})
    with pytest.raises(dtkd_io.CheckpointError, match="holds no state_dict"):
        dtkd_io.load_teacher(tmp_path / "empty.npz")
    # PyTorch files: tests/test_interop_checkpoints.py
    with pytest.raises(dtkd_io.CheckpointError, match="not found"):
        dtkd_io.load_teacher(tmp_path / "resnet32x4_cifar100.pth")


# ----------------------------------------------------------------------------------------------
# Trainer

def test_training_learns_and_records_best_and_last_accuracy(tmp_path):
    trainer = make_trainer(tmp_path, make_cfg(epochs=5))
    chance = 100.0 / NUM_CLASSES
    before = trainer.evaluate()["top1"]
    summary = trainer.train()
    history = read_jsonl(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    accs = [r["test_acc"] for r in history]
    assert summary["best_acc"] == max(accs)
    assert summary["best_epoch"] == 1 + accs.index(max(accs))
    assert summary["last_acc"] == accs[-1]
    assert summary["last_acc"] > max(chance + 30, before)
    last = history[-1]
    for key in ("train_loss", "train_acc", "train_acc_top5", "test_acc_top5", "test_loss", "best_acc"):
        assert np.isfinite(last[key])
    assert last["n_samples"] == 320  # n_* stats are summed over the epoch
    assert last["sharpness_min"] <= last["sharpness_mean"] <= last["sharpness_max"]
    assert trainer.evaluate()["top1"] == pytest.approx(last["test_acc"])
    # checkpoints: latest every epoch, epoch_K every SAVE_CHECKPOINT_FREQ and at the end
    names = set(os.listdir(tmp_path))
    assert {"latest.npz", "epoch_2.npz", "epoch_4.npz", "epoch_5.npz", "model_best.npz",
            "model_last.npz", "config.yaml", "worklog.txt", "log.jsonl"} <= names
    assert "epoch_1.npz" not in names and "epoch_3.npz" not in names
    best = dtkd_io.load(tmp_path / "model_best.npz")
    assert best["epoch"] == summary["best_epoch"] and best["test_acc"] == summary["best_acc"]
    assert_tree_equal(trainer.student.state_dict(), dtkd_io.load_teacher(tmp_path / "model_last.npz"))


def test_worklog_is_mdistiller_like_with_grouped_statistics(tmp_path):
    make_trainer(tmp_path, make_cfg(epochs=2)).train()
    text = (tmp_path / "worklog.txt").read_text()
    assert text.count("epoch: ") == 2 and "epoch: 2\n" in text
    assert "test_acc: " in text and "lr: 0.1\n" in text
    assert "sharpness: mean " in text and " min " in text and " max " in text
    assert text.rstrip().splitlines()[-2].startswith("best_acc\t")
    assert text.rstrip().splitlines()[-1].startswith("last_acc\t")


def test_interrupted_then_resumed_run_matches_uninterrupted_bitwise(tmp_path):
    reference = make_trainer(tmp_path / "a")
    reference.train()

    # Interrupted during epoch 3 (after epoch 2's checkpoint, part-way through epoch 3's steps).
    interrupted = make_trainer(tmp_path / "b", fail_at=(3, 4))
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert dtkd_io.load(tmp_path / "b" / "latest.npz")["epoch"] == 2

    # A fresh process: different initial weights and loader seed, all restored from the checkpoint.
    resumed = make_trainer(tmp_path / "b", model_seed=99, loader_seed=99)
    resumed.train(resume=True)

    for name, value in reference.student.state_dict().items():
        assert value.tobytes() == resumed.student.state_dict()[name].tobytes(), name
    for a, b in zip(reference.optimizer.buffers, resumed.optimizer.buffers):
        assert a.tobytes() == b.tobytes()
    ref_log, res_log = read_jsonl(tmp_path / "a" / "log.jsonl"), read_jsonl(tmp_path / "b" / "log.jsonl")
    assert [r["epoch"] for r in res_log] == [1, 2, 3, 4]
    for a, b in zip(ref_log, res_log):
        for key in ("lr", "train_loss", "test_acc", "test_loss", "best_acc"):
            assert a[key] == b[key], key
    assert "resumed after epoch 2" in (tmp_path / "b" / "worklog.txt").read_text()


def test_resume_can_extend_a_finished_run(tmp_path):
    make_trainer(tmp_path, make_cfg(epochs=2)).train()
    longer = make_trainer(tmp_path, make_cfg(epochs=3))
    summary = longer.train(resume=True)
    assert summary["epochs"] == 3
    assert [r["epoch"] for r in read_jsonl(tmp_path / "log.jsonl")] == [1, 2, 3]


def test_resume_without_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="latest.npz"):
        make_trainer(tmp_path).train(resume=True)


class DivergingDistiller(CrossEntropyDistiller):
    def train_step(self, x, y, epoch):
        stats = super().train_step(x, y, epoch)
        if epoch == 2:
            stats["loss"] = float("nan")
        return stats


def test_nan_loss_stops_with_advice_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.distiller = DivergingDistiller(trainer.student)
    with pytest.raises(FloatingPointError, match=r"epoch 2.*SOLVER.LR"):
        trainer.train()
    assert dtkd_io.load(tmp_path / "latest.npz")["epoch"] == 1


def test_progress_false_prints_nothing(tmp_path, capsys):
    make_trainer(tmp_path, make_cfg(epochs=1), progress=False).train()
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_without_a_terminal_a_log_gets_one_line_per_epoch_and_heartbeats(tmp_path, capsys):
    # progress=None and stdout/stderr captured (not a terminal): what `... > log.txt` sees
    trainer = make_trainer(tmp_path, make_cfg(epochs=2), progress=None)
    trainer.heartbeat_s = 0.0  # a heartbeat line after every step
    trainer.train()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [l for l in lines if re.match(r"epoch \d+: lr ", l)] == [
        l for l in lines if "test_acc" in l] and len([l for l in lines if "test_acc" in l]) == 2
    assert any(re.match(r"epoch 1: step 1/\d+  loss [0-9.]+  \d+ s$", l) for l in lines)
    assert "\r" not in out and err == ""  # no bars


def test_progress_bars_show_when_enabled(tmp_path, capsys):
    make_trainer(tmp_path, make_cfg(epochs=1), progress=True).train()
    out, err = capsys.readouterr()
    assert "epoch 1" in err or "epoch 1" in out


def test_experiment_dir_follows_mdistiller_layout():
    cfg = get_default_config()
    cfg.EXPERIMENT.PROJECT, cfg.EXPERIMENT.TAG, cfg.LOG.PREFIX = "proj", "dtkd,res32x4,res8x4", "/tmp/out"
    assert experiment_dir(cfg) == Path("/tmp/out/proj/dtkd,res32x4,res8x4")
    cfg.EXPERIMENT.NAME = "run1"
    assert experiment_dir(cfg) == Path("/tmp/out/proj/run1")


@pytest.mark.parametrize("env,calls", [(None, 1), ("0", 0)])
def test_training_keeps_freed_memory_unless_the_environment_says_0(tmp_path, monkeypatch, env,
                                                                    calls):
    """Without it every step page-faults its activations in again (dtkd.keep_freed_memory)."""
    import dtkd.engine.trainer as trainer_module
    seen = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: seen.append(1) or True)
    if env is None:
        monkeypatch.delenv("DTKD_KEEP_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("DTKD_KEEP_FREED_MEMORY", env)
    make_trainer(tmp_path, make_cfg(epochs=1)).train()
    assert len(seen) == calls


def test_keep_freed_memory_applies_on_glibc_and_checks_its_argument():
    import platform

    import dtkd
    applied = dtkd.keep_freed_memory()
    assert applied is (platform.libc_ver()[0] == "glibc")
    assert dtkd.keep_freed_memory(0) is applied
    with pytest.raises(TypeError, match="max_bytes must be an int"):
        dtkd.keep_freed_memory(1.5)
    with pytest.raises(ValueError, match=r"max_bytes: must be in \[0, 2\*\*31 - 1\]"):
        dtkd.keep_freed_memory(-1)
    dtkd.keep_freed_memory()  # back to what the trainer sets
