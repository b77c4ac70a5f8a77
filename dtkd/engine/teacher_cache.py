"""Trained teachers cached on disk, keyed by the part of the config that determines them.

A distillation sweep (and the demo) needs the same teacher again and again: training it once and
reusing the weights is most of the saving. ``cached_teacher(cfg)`` returns the weights of the
model ``cfg`` trains, training it only when no finished entry with the same key exists::

    cfg = load_config("fashion_mnist/teacher.yaml", ["DISTILLER.STUDENT", "resnet56"])
    teacher = cached_teacher(cfg)            # trains on the first call, then reuses
    teacher.path, teacher.best_acc           # -> DISTILLER.TEACHER_CHECKPOINT for a student

Layout under the cache root (default ``$XDG_CACHE_HOME/dtkd/teachers``)::

    <model>-<key>/model_best.npz     the weights
    <model>-<key>/teacher.json       written last (atomically): the entry is complete
    <model>-<key>/run/               the training run's logs and checkpoints
    <model>-<key>.lock               held (fcntl.flock) while the entry is being trained
    trained.jsonl                    one line per teacher trained, for the record

The key is a hash of :func:`determining_config` and the dtkd version. Concurrent processes (e.g.
pytest-xdist workers) asking for the same teacher serialise on the lock file: one trains, the
others wait and then read its entry, so a teacher is never trained twice at once.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent processes may each train the teacher
    fcntl = None

from .. import io as dtkd_io

__all__ = ["CachedTeacher", "cached_teacher", "config_digest", "determining_config",
           "default_cache_root", "TRAINED_LOG"]

TRAINED_LOG = "trained.jsonl"
_META = "teacher.json"
_WEIGHTS = "model_best.npz"


@dataclasses.dataclass(frozen=True)
class CachedTeacher:
    """A trained model in the cache. ``path`` is its weights (``model_best.npz``)."""
    model: str          # backbone name (the config's DISTILLER.STUDENT: the model it trained)
    path: Path          # weights, usable as DISTILLER.TEACHER_CHECKPOINT
    best_acc: float     # its best test top-1 (%) during training
    key: str            # config digest
    trained: bool       # True if this call trained it, False if it was reused
    seconds: float      # training wall time (0 when reused)
    run_dir: Path       # where the training run's logs are


def determining_config(cfg):
    """The part of ``cfg`` that determines the weights a run produces, as a plain dict.

    Left out: where and how it is logged (LOG, EXPERIMENT), the thread count and worker count,
    the evaluation batch size; for vanilla training (DISTILLER.TYPE NONE, how teachers are
    trained) also the distillation settings (KD, DKD, DTKD, DISTILLER.TEACHER[_CHECKPOINT]).
    """
    tree = cfg.to_dict()
    for key in ("LOG", "EXPERIMENT", "NUM_THREADS"):
        tree.pop(key, None)
    tree["DATASET"].pop("NUM_WORKERS", None)
    tree["DATASET"]["TEST"].pop("BATCH_SIZE", None)
    if tree["DISTILLER"]["TYPE"] == "NONE":
        for key in ("KD", "DKD", "DTKD"):
            tree.pop(key, None)
        tree["DISTILLER"].pop("TEACHER", None)
        tree["DISTILLER"].pop("TEACHER_CHECKPOINT", None)
    return tree


def config_digest(cfg):
    """Hex SHA-256 of :func:`determining_config` and the dtkd version."""
    from .._version import __version__
    text = json.dumps([determining_config(cfg), __version__], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_root():
    from ..data.dataset import cache_dir
    return cache_dir() / "teachers"


def cached_teacher(cfg, cache_root=None, retrain=False, run_dir=None, progress=None, log=print):
    """The teacher ``cfg`` trains (vanilla training of DISTILLER.STUDENT), from the cache or
    trained now. Returns a :class:`CachedTeacher`.

    cache_root : cache directory (default :func:`default_cache_root`).
    retrain : train even if a finished entry exists (it is replaced).
    run_dir : where the training run writes its logs (default ``<entry>/run``).
    log : callable for one-line status messages (None: silent).
    """
    if cfg.DISTILLER.TYPE != "NONE":
        raise ValueError(f"cfg: a teacher is trained with DISTILLER.TYPE NONE (vanilla "
                         f"cross-entropy), got {cfg.DISTILLER.TYPE!r}")
    say = log or (lambda message: None)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = config_digest(cfg)
    name = f"{cfg.DISTILLER.STUDENT}-{key[:16]}"
    entry = root / name
    if not retrain:
        found = _read_entry(entry, cfg.DISTILLER.STUDENT, key)
        if found is not None:
            return found
    with open(root / f"{name}.lock", "a") as lock:
        _lock(lock, lambda: say(f"[dtkd] teacher {cfg.DISTILLER.STUDENT}: another process is "
                                f"training it ({entry}); waiting"))
        try:
            # Someone may have finished it while we waited for the lock.
            found = None if retrain else _read_entry(entry, cfg.DISTILLER.STUDENT, key)
            if found is not None:
                return found
            return _train(cfg, root, entry, key, run_dir, progress, say)
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _lock(lock, on_wait):
    if fcntl is None:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        on_wait()
        fcntl.flock(lock, fcntl.LOCK_EX)


def _read_entry(entry, model, key):
    try:
        meta = json.loads((entry / _META).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if meta.get("key") != key or not (entry / _WEIGHTS).is_file():
        return None
    return CachedTeacher(model=model, path=entry / _WEIGHTS, best_acc=float(meta["best_acc"]),
                         key=key, trained=False, seconds=0.0, run_dir=Path(meta["run_dir"]))


def _train(cfg, root, entry, key, run_dir, progress, say):
    from .build import build_trainer
    (entry / _META).unlink(missing_ok=True)  # the entry is incomplete until it is rewritten
    run_dir = Path(run_dir) if run_dir is not None else entry / "run"
    say(f"[dtkd] training teacher {cfg.DISTILLER.STUDENT} ({cfg.SOLVER.EPOCHS} epochs on "
        f"{cfg.DATASET.SUBSET or 'all'} {cfg.DATASET.TYPE} images) -> {entry}")
    start = time.perf_counter()
    summary = build_trainer(cfg, out_dir=run_dir, progress=progress).train()
    seconds = time.perf_counter() - start
    with open(run_dir / _WEIGHTS, "rb") as src, dtkd_io.atomic_write(entry / _WEIGHTS) as dst:
        shutil.copyfileobj(src, dst)
    meta = {"key": key, "model": cfg.DISTILLER.STUDENT, "best_acc": summary["best_acc"],
            "best_epoch": summary["best_epoch"], "last_acc": summary["last_acc"],
            "seconds": seconds, "run_dir": str(run_dir), "trained_at": time.time(),
            "pid": os.getpid(), "config": cfg.dump()}
    dtkd_io.write_text_atomic(entry / _META, json.dumps(meta, indent=1))
    line = {k: meta[k] for k in ("key", "model", "best_acc", "seconds", "trained_at", "pid")}
    # One write() of one short line on an O_APPEND file: lines of concurrent writers never mix.
    fd = os.open(root / TRAINED_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
    return CachedTeacher(model=cfg.DISTILLER.STUDENT, path=entry / _WEIGHTS,
                         best_acc=float(summary["best_acc"]), key=key, trained=True,
                         seconds=seconds, run_dir=run_dir)
