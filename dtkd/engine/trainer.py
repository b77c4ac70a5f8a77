"""The training loop: epochs, LR schedule, evaluation, checkpoints, logs and progress bars.

One training step, as the trainer runs it::

    optimizer.zero_grad()
    stats = distiller.train_step(x, y, epoch)   # teacher fwd, student fwd, loss, student bwd
    optimizer.step()

Everything a run needs to continue exactly where it stopped (student weights and buffers,
optimizer momentum, the training loader's generator, best accuracy, the per-epoch history) is in
``latest.npz``, rewritten atomically after every epoch; ``Trainer.train(resume=True)`` picks it
up, so an interrupted-and-resumed run ends with the same weights, bit for bit (same thread count),
as an uninterrupted one -- also after a SIGKILL or power cut in the middle of a save, since saves
are atomic (tests/test_crash_safety.py kills runs inside saves and resumes them).

One run per output directory: ``train()`` holds an exclusive ``flock`` on ``out_dir/.lock`` for its
whole duration, so a second run into the same directory is refused (:class:`OutputDirInUse`)
before it touches any file. The OS drops the lock when the process ends, however it ends.
"""
import json
import math
import os
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded against sharing a directory
    fcntl = None

from .. import io as dtkd_io
from .. import keep_freed_memory
from ..io.atomic import remove_stale_temp_files
from .._progress import tqdm
from ..nn.grad_mode import no_grad
from .metrics import cross_entropy_sum, topk_correct
from .schedule import learning_rate

__all__ = ["Trainer", "OutputDirInUse", "evaluate", "experiment_dir", "read_log", "read_probe"]

LATEST = "latest.npz"
MODEL_BEST = "model_best.npz"
MODEL_LAST = "model_last.npz"
LOG_JSONL = "log.jsonl"
PROBE_JSONL = "probe.jsonl"
WORKLOG = "worklog.txt"
CONFIG_COPY = "config.yaml"
LOCK = ".lock"


class OutputDirInUse(RuntimeError):
    """Another training run holds the output directory's lock."""


def experiment_dir(cfg):
    """mdistiller's output layout: ``LOG.PREFIX/EXPERIMENT.PROJECT/(EXPERIMENT.NAME or TAG)``."""
    name = cfg.EXPERIMENT.NAME or cfg.EXPERIMENT.TAG
    return Path(cfg.LOG.PREFIX) / cfg.EXPERIMENT.PROJECT / name


class Trainer:
    """Trains ``distiller.student`` with SGD under ``cfg.SOLVER`` and evaluates it every epoch.

    cfg : a :class:`dtkd.config.CfgNode` (uses SOLVER.*, LOG.SAVE_CHECKPOINT_FREQ).
    distiller : has ``.student`` (a dtkd Module) and ``train_step(x, y, epoch) -> dict`` which
        runs forward and backward on the student (gradients accumulate into its parameters) and
        returns per-step statistics: ``"loss"`` (required), other loss terms, ``"logits"`` (the
        student's logits, for training accuracy; optional), and any scalars. Aggregation over an
        epoch follows the key: ``*_min`` -> min, ``*_max`` -> max, ``n_*`` -> sum (counts, e.g.
        ``n_fallback``), anything else -> mean weighted by batch size (e.g. ``t_student_mean``).
    train_loader, val_loader : iterables of ``(x float32 NCHW, y int64)``; the train loader's
        ``state_dict()``/``load_state_dict()`` (if it has them) are checkpointed for resume.
    out_dir : where checkpoints and logs go (created).
    progress : True: tqdm bars on epochs and steps (and a line per epoch); None (default): bars
        when stderr is a terminal, otherwise plain lines on stdout for a log file — one per epoch
        and, within an epoch, one every ``heartbeat_s`` seconds; False: nothing printed.
    optimizer : defaults to ``dtkd.optim.SGD`` over ``distiller.parameters()`` (the student's,
        plus a distiller's own such as CTKD's temperature) with
        SOLVER.MOMENTUM / WEIGHT_DECAY / NESTEROV. Any object with ``lr`` (settable), ``step()``,
        ``zero_grad()``, ``state_dict()``, ``load_state_dict()`` works.

    Files in ``out_dir``: ``latest.npz`` (full state, every epoch), ``epoch_<e>.npz`` (full
    state every LOG.SAVE_CHECKPOINT_FREQ epochs and at the end), ``model_best.npz`` /
    ``model_last.npz`` (student weights; usable as a teacher via ``dtkd.io.load_teacher``),
    ``log.jsonl`` (one JSON object per epoch), ``probe.jsonl`` (per-sample max logit, logsumexp
    and DTKD temperatures of student and teacher on the first LOG.PROBE_SAMPLES test images,
    before training and after every epoch), ``worklog.txt`` (mdistiller-style text log),
    ``config.yaml`` (the resolved config).
    """

    def __init__(self, cfg, distiller, train_loader, val_loader, out_dir, progress=None,
                 optimizer=None, heartbeat_s=60.0):
        self.cfg = cfg
        self.distiller = distiller
        self.student = distiller.student
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.out_dir = Path(out_dir)
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        # no bars because the output is not a terminal (a log file, a pipe): plain lines instead
        self.log_lines = progress is None and not self.progress
        self.heartbeat_s = heartbeat_s
        self.optimizer = (optimizer if optimizer is not None
                          else _default_optimizer(cfg, _trainable_parameters(distiller)))
        self.epoch = 0            # last completed epoch
        self.best_acc = None      # best test top-1 so far (percent)
        self.best_epoch = None
        self.history = []         # one record (dict of JSON scalars) per completed epoch
        self._probe = None        # (images, labels, teacher logits) of the sharpness probe
        self.on_epoch = []        # callables(record), after each epoch's checkpoint and logs
        # False on the processes of a data-parallel run that are not rank 0: they train and
        # evaluate but write no file (dtkd.distributed.mpi.MPITrainer)
        self.writes_files = True

    # ------------------------------------------------------------------------------------------
    def train(self, resume=False):
        """Train to SOLVER.EPOCHS; with ``resume``, continue from ``out_dir/latest.npz``.

        Returns ``{"best_acc", "best_epoch", "last_acc", "epochs", "out_dir"}``.
        """
        if not self.writes_files:
            return self._train(resume)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with _DirectoryLock(self.out_dir / LOCK):
            return self._train(resume)

    def _train(self, resume):
        if os.environ.get("DTKD_KEEP_FREED_MEMORY", "1") != "0":
            keep_freed_memory()  # no page faults of the activations every step (see there)
        if self.writes_files:
            remove_stale_temp_files(self.out_dir)  # of writes killed mid-way (SIGKILL, power cut)
        if resume:
            self._resume()
        elif self.writes_files:
            for name in (LOG_JSONL, WORKLOG, PROBE_JSONL):
                (self.out_dir / name).write_text("")
            self._log_probe(0)  # the untrained student, the reference point of the curves
        if self.writes_files:
            (self.out_dir / CONFIG_COPY).write_text(self.cfg.dump())
        epochs = self.cfg.SOLVER.EPOCHS
        bar = tqdm(range(self.epoch + 1, epochs + 1), desc="epochs", initial=self.epoch,
                   total=epochs, disable=not self.progress, dynamic_ncols=True)
        for epoch in bar:
            record = self.train_epoch(epoch)
            bar.set_postfix(test_acc=f"{record['test_acc']:.2f}", best=f"{self.best_acc:.2f}")
        bar.close()
        if self.history:
            self._write_final()
        return self.summary()

    def summary(self):
        return {"best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "last_acc": self.history[-1]["test_acc"] if self.history else None,
                "epochs": self.epoch, "out_dir": str(self.out_dir)}

    def train_epoch(self, epoch):
        """One epoch of training, then evaluation, checkpoints and logs. Returns its record."""
        solver = self.cfg.SOLVER
        lr = learning_rate(epoch, solver.LR, solver.EPOCHS, solver.SCHEDULE,
                           solver.LR_DECAY_STAGES, solver.LR_DECAY_RATE)
        self.optimizer.lr = lr
        self.student.train()
        meter = _EpochMeter()
        start = time.perf_counter()
        total = _len_or_none(self.train_loader)
        steps = tqdm(self.train_loader, desc=f"epoch {epoch}", total=total,
                     leave=False, disable=not self.progress, dynamic_ncols=True)
        last_line = start
        cached = getattr(self.distiller, "teacher_cache", None) is not None
        for step, batch in enumerate(steps):
            x, y = batch
            self.optimizer.zero_grad()
            keys = getattr(batch, "key", None) if cached else None
            x, y, keys = self._local_batch(x, y, keys)
            if keys is not None:
                # a dtkd.data.Batch names its samples: the teacher-logit cache can serve them
                stats = self.distiller.train_step(x, y, epoch, keys=keys)
            else:
                stats = self.distiller.train_step(x, y, epoch)
            loss = self._after_backward(stats)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss is {loss} at epoch {epoch}, step {step} (lr {lr:g}); the "
                    f"last good state is {self.out_dir / LATEST}. Lower SOLVER.LR and resume or restart.")
            self.optimizer.step()
            meter.update(stats, y)
            if self.progress:
                steps.set_postfix(loss=f"{meter.mean('loss'):.4f}", lr=f"{lr:.4g}")
            elif self.log_lines and time.perf_counter() - last_line >= self.heartbeat_s:
                last_line = time.perf_counter()
                of = f"/{total}" if total is not None else ""
                print(f"epoch {epoch}: step {step + 1}{of}  loss {meter.mean('loss'):.4f}  "
                      f"{last_line - start:.0f} s", flush=True)
        steps.close()
        train_time = time.perf_counter() - start
        val = self.evaluate()

        record = {"epoch": epoch, "lr": lr}
        record.update(self._epoch_results(meter))
        record.update({"test_acc": val["top1"], "test_acc_top5": val["top5"],
                       "test_loss": val["loss"], "train_time_s": train_time,
                       "epoch_time_s": time.perf_counter() - start})
        improved = self.best_acc is None or val["top1"] > self.best_acc
        if improved:
            self.best_acc, self.best_epoch = val["top1"], epoch
        record["best_acc"] = self.best_acc
        self.epoch = epoch
        self.history.append(record)

        self._save_state(epoch, improved)
        self._append_logs(record)
        self._log_probe(epoch)
        for callback in self.on_epoch:  # e.g. dtkd.sweep reports the epoch to Ray Tune
            callback(record)
        if self.progress:
            tqdm.write(_one_line(record))
        elif self.log_lines:
            print(_one_line(record) + f"  ({record['epoch_time_s']:.0f} s)", flush=True)
        return record

    # Hooks of data-parallel training (dtkd.distributed.mpi.MPITrainer overrides them)
    def _local_batch(self, x, y, keys):
        """The part of the global batch this process trains on (``keys``: the samples' cache
        keys or None, cut alike)."""
        return x, y, keys

    def _after_backward(self, stats):
        """After the backward of a step, before the optimizer: returns the step's loss."""
        return float(stats["loss"])

    def _epoch_results(self, meter):
        return meter.results()

    def evaluate(self, loader=None):
        """:func:`evaluate` of the student on ``loader`` (default: the validation loader)."""
        return evaluate(self.student, self.val_loader if loader is None else loader, self.progress)

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self):
        """Everything needed to continue this run (a tree ``dtkd.io.save`` can write)."""
        loader_state = (self.train_loader.state_dict()
                        if hasattr(self.train_loader, "state_dict") else None)
        state = {"kind": "trainer", "epoch": self.epoch, "model": self.student.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng": {"train_loader": loader_state},
                 "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                 "history": self.history, "config": self.cfg.dump()}
        extra = getattr(self.distiller, "extra_state_dict", dict)()
        if extra:  # a distiller's own trainable state (CTKD's temperature module)
            state["distiller"] = extra
        return state

    def load_state_dict(self, state):
        self.student.load_state_dict(state["model"])
        if "distiller" in state or getattr(self.distiller, "extra_state_dict", dict)():
            self.distiller.load_extra_state_dict(state.get("distiller", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        loader_state = state["rng"]["train_loader"]
        if loader_state is not None:
            if not hasattr(self.train_loader, "load_state_dict"):
                raise TypeError("the checkpoint holds a loader state but train_loader has no "
                                "load_state_dict(); resume needs the same kind of loader")
            self.train_loader.load_state_dict(loader_state)
        self.epoch = int(state["epoch"])
        self.best_acc, self.best_epoch = state["best_acc"], state["best_epoch"]
        self.history = list(state["history"])

    def _save_state(self, epoch, improved):
        if not self.writes_files:
            return
        state = self.state_dict()
        dtkd_io.save(self.out_dir / LATEST, state)
        if epoch % max(self.cfg.LOG.SAVE_CHECKPOINT_FREQ, 1) == 0 or epoch == self.cfg.SOLVER.EPOCHS:
            dtkd_io.save(self.out_dir / f"epoch_{epoch}.npz", state)
        if improved:
            dtkd_io.save(self.out_dir / MODEL_BEST, self._model_tree(epoch))

    def _model_tree(self, epoch):
        return {"kind": "model", "model": self.student.state_dict(), "epoch": epoch,
                "test_acc": self.history[-1]["test_acc"], "config": self.cfg.dump()}

    def _resume(self):
        path = self.out_dir / LATEST
        if not path.exists():
            raise FileNotFoundError(f"resume: no checkpoint at {path}; start without resume "
                                    "(or point out_dir / LOG.PREFIX at the interrupted run)")
        state = dtkd_io.load(path)
        if state.get("kind") != "trainer":
            raise dtkd_io.CheckpointError(f"{path}: not a trainer checkpoint (kind {state.get('kind')!r})")
        self.load_state_dict(state)
        if not self.writes_files:
            return
        # Logs are rebuilt from the checkpoint's history: lines an interrupted run wrote after
        # its last checkpoint are dropped, so the logs match the weights.
        (self.out_dir / LOG_JSONL).write_text("".join(json.dumps(r) + "\n" for r in self.history))
        (self.out_dir / WORKLOG).write_text("".join(_worklog_block(r) for r in self.history))
        with open(self.out_dir / WORKLOG, "a") as f:
            f.write(f"resumed after epoch {self.epoch}\n")
        probe = self.out_dir / PROBE_JSONL
        if probe.exists():
            kept = [line for line in probe.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line)["epoch"] <= self.epoch]
            probe.write_text("".join(kept))

    def _write_final(self):
        if not self.writes_files:
            return
        dtkd_io.save(self.out_dir / MODEL_LAST, self._model_tree(self.epoch))
        with open(self.out_dir / WORKLOG, "a") as f:
            f.write(f"best_acc\t{self.best_acc:.2f}\t(epoch {self.best_epoch})\n")
            f.write(f"last_acc\t{self.history[-1]['test_acc']:.2f}\t(epoch {self.epoch})\n")

    def _log_probe(self, epoch):
        """Append per-sample sharpness of the student (and teacher) on a fixed probe set, the
        first LOG.PROBE_SAMPLES test images, to probe.jsonl: max logit and logsumexp per sample,
        and the DTKD temperatures they give at the distiller's reference temperature. This is
        what ``dtkd.plots`` draws the sharpness figure and the temperature spread from."""
        n = self.cfg.LOG.PROBE_SAMPLES
        if n <= 0 or not self.writes_files:
            return
        import numpy as np
        from .. import losses
        if self._probe is None:
            xs, ys, count = [], [], 0
            for x, y in self.val_loader:
                xs.append(x[: n - count])
                ys.append(y[: n - count])
                count += len(xs[-1])
                if count >= n:
                    break
            x = np.ascontiguousarray(np.concatenate(xs))
            teacher = (self.distiller.teacher_logits(x)
                       if getattr(self.distiller, "teacher", None) is not None else None)
            self._probe = (x, np.concatenate(ys), teacher)
        x, y, teacher_logits = self._probe
        was_training = getattr(self.student, "training", True)
        self.student.eval()
        try:
            with no_grad():
                student_logits = self.student.forward(x)
        finally:
            if was_training:
                self.student.train()
        record = {"epoch": epoch, "labels": y.tolist(),
                  "max_student": student_logits.max(axis=1).tolist(),
                  "lse_student": losses.logsumexp(student_logits).tolist()}
        if teacher_logits is not None:
            T = float(getattr(self.distiller, "temperature", self.cfg.DTKD.T))
            t_s, t_t, _ = losses.dynamic_temperatures(student_logits, teacher_logits, T)
            record.update({"temperature": T, "max_teacher": teacher_logits.max(axis=1).tolist(),
                           "lse_teacher": losses.logsumexp(teacher_logits).tolist(),
                           "t_student": np.asarray(t_s).tolist(),
                           "t_teacher": np.asarray(t_t).tolist()})
        with open(self.out_dir / PROBE_JSONL, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _append_logs(self, record):
        if not self.writes_files:
            return
        with open(self.out_dir / LOG_JSONL, "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.out_dir / WORKLOG, "a") as f:
            f.write(_worklog_block(record))


class _DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (created; holds the owner's pid)."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd = None

    def __enter__(self):
        if fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputDirInUse(
                f"{self.path.parent}: another training run (pid {owner}) is writing into this "
                "directory; wait for it to finish, stop it, or give this run another output "
                "directory (LOG.PREFIX / EXPERIMENT.NAME, or --out)") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


# ----------------------------------------------------------------------------------------------

def read_log(run_dir):
    """The per-epoch records of a run's log.jsonl (a list of dicts, epoch order)."""
    return _read_jsonl(Path(run_dir) / LOG_JSONL)


def read_probe(run_dir):
    """The records of a run's probe.jsonl (per-sample sharpness and temperatures at epoch 0 and
    after every epoch); [] for runs that logged none."""
    path = Path(run_dir) / PROBE_JSONL
    return _read_jsonl(path) if path.exists() else []


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate(model, loader, progress=False):
    """Top-1 / top-5 accuracy (percent), mean cross-entropy and sample count of ``model`` on
    ``loader``, in eval mode (the model's train/eval mode is restored afterwards)."""
    was_training = getattr(model, "training", True)
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    try:
        for x, y in tqdm(loader, desc="eval", total=_len_or_none(loader), leave=False,
                         disable=not progress, dynamic_ncols=True):
            with no_grad():  # keep no activations; eval-mode BN folds into the convs
                logits = model.forward(x)
            c1, c5 = topk_correct(logits, y, (1, 5))
            correct1, correct5 = correct1 + c1, correct5 + c5
            loss_sum += cross_entropy_sum(logits, y)
            n += len(y)
    finally:
        if was_training:
            model.train()
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "n": n}


class _EpochMeter:
    """Aggregates the per-step stats of one epoch (see Trainer's docstring for the rules)."""

    def __init__(self):
        self.n = 0
        self.sums, self.mins, self.maxs, self.counts = {}, {}, {}, {}
        self.correct1 = self.correct5 = self.n_logits = 0

    def update(self, stats, labels):
        batch = len(labels)
        self.n += batch
        for key, value in stats.items():
            if key == "logits":
                c1, c5 = topk_correct(value, labels, (1, 5))
                self.correct1 += c1
                self.correct5 += c5
                self.n_logits += batch
                continue
            value = float(value)
            if key.endswith("_min"):
                self.mins[key] = min(self.mins.get(key, value), value)
            elif key.endswith("_max"):
                self.maxs[key] = max(self.maxs.get(key, value), value)
            elif key.startswith("n_"):
                self.counts[key] = self.counts.get(key, 0) + value
            else:
                self.sums[key] = self.sums.get(key, 0.0) + value * batch

    def mean(self, key):
        return self.sums[key] / self.n

    def results(self):
        out = {"train_loss": self.mean("loss")}
        if self.n_logits:
            out["train_acc"] = 100.0 * self.correct1 / self.n_logits
            out["train_acc_top5"] = 100.0 * self.correct5 / self.n_logits
        out.update({k: v / self.n for k, v in self.sums.items() if k != "loss"})
        out.update(self.mins)
        out.update(self.maxs)
        out.update({k: int(v) if float(v).is_integer() else v for k, v in self.counts.items()})
        return out


_MAIN_KEYS = ("lr", "train_loss", "train_acc", "train_acc_top5", "test_acc", "test_acc_top5",
              "test_loss", "best_acc")


def _worklog_block(record):
    """mdistiller's worklog.txt block for one epoch, plus loss terms and temperature stats."""
    lines = ["-" * 25, f"epoch: {record['epoch']}"]
    lines += [f"{k}: {record[k]:.6g}" if k == "lr" else f"{k}: {record[k]:.4f}"
              for k in _MAIN_KEYS if k in record]
    rest = {k: v for k, v in record.items()
            if k not in _MAIN_KEYS and k not in ("epoch", "train_time_s", "epoch_time_s")}
    # Group <name>_mean/_min/_max (e.g. the DTKD temperatures T_s, T_t) on one line.
    groups = {}
    for key in rest:
        for suffix in ("_mean", "_min", "_max"):
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[suffix[1:]] = rest[key]
    grouped = {f"{g}_{s}" for g, parts in groups.items() for s in parts if len(parts) > 1}
    for key, value in rest.items():
        if key not in grouped:
            lines.append(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    for name, parts in groups.items():
        if len(parts) > 1:
            lines.append(f"{name}: " + " ".join(f"{s} {parts[s]:.4f}" for s in ("mean", "min", "max")
                                                 if s in parts))
    lines.append(f"time: {record.get('epoch_time_s', 0.0):.1f} s")
    lines.append("-" * 25)
    return "\n".join(lines) + "\n"


def _one_line(record):
    text = (f"epoch {record['epoch']}: lr {record['lr']:.4g}  train_loss {record['train_loss']:.4f}"
            f"  test_acc {record['test_acc']:.2f}  best {record['best_acc']:.2f}")
    if "t_student_mean" in record and "t_teacher_mean" in record:
        text += f"  T_s {record['t_student_mean']:.3f}  T_t {record['t_teacher_mean']:.3f}"
    return text


def _len_or_none(loader):
    try:
        return len(loader)
    except TypeError:
        return None


def _trainable_parameters(distiller):
    """What the default optimizer updates: ``distiller.parameters()`` when the distiller has it
    (the student's, plus e.g. CTKD's temperature module), else the student's."""
    params = getattr(distiller, "parameters", None)
    return params() if params is not None else distiller.student.parameters()


def _default_optimizer(cfg, parameters):
    if cfg.SOLVER.TYPE != "SGD":
        raise ValueError(f"SOLVER.TYPE: only 'SGD' is implemented, got {cfg.SOLVER.TYPE!r}")
    from ..optim import SGD  # imported here: the optimizer module is optional for custom ones
    return SGD(parameters, lr=cfg.SOLVER.LR, momentum=cfg.SOLVER.MOMENTUM,
               weight_decay=cfg.SOLVER.WEIGHT_DECAY, nesterov=cfg.SOLVER.NESTEROV)
