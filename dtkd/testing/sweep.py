"""Runs of an ablation sweep, without pytest: the method list, cached teachers, ``distill``.

:class:`Sweep` is what the pytest fixtures (:mod:`dtkd.testing.plugin`) drive; a script or a
notebook can use it directly::

    sweep = Sweep(runs_dir="runs", overrides={"DATASET.SUBSET": 2000, "SOLVER.EPOCHS": 3})
    result = sweep.distill("DTKD", {"DTKD.ALPHA": 1.0})
    result.best_acc, result.last_acc, result.temperatures
"""
import dataclasses
import json
import os
import re
import time
from pathlib import Path

__all__ = ["Method", "METHODS", "TEACHER_CONFIGS", "DistillResult", "Sweep", "as_override_list"]


@dataclasses.dataclass(frozen=True)
class Method:
    """A distillation method as a sweep runs it: a shipped config (or a YAML path) and the
    overrides that select the method on top of it."""
    config: str
    overrides: tuple = ()   # ((KEY, VALUE), ...)


def _m(config, **overrides):
    # KEY__SUB=value -> ("KEY.SUB", value): dotted config keys as keyword arguments
    return Method(config, tuple((k.replace("__", "."), v) for k, v in overrides.items()))


# The method list of the sweeps (benchmarks/ablations/), Fashion-MNIST sized for 2 cores.
# Adding a method is one line: a name, its config, the overrides that select it.
METHODS = {
    "vanilla": _m("fashion_mnist/vanilla.yaml"),
    "KD": _m("fashion_mnist/kd.yaml"),
    "DKD": _m("fashion_mnist/dkd.yaml"),
    "DTKD": _m("fashion_mnist/dtkd.yaml"),
    "DTKD-TCKD": _m("fashion_mnist/dtkd.yaml", DTKD__VARIANT="tckd"),  # dynamic T in TCKD only
    "DTKD-NCKD": _m("fashion_mnist/dtkd.yaml", DTKD__VARIANT="nckd"),  # dynamic T in NCKD only
    "DTKD+DKD": _m("fashion_mnist/dtkd.yaml", DTKD__VARIANT="dkd"),    # dynamic T in both terms
    "DTKD-exact": _m("fashion_mnist/dtkd.yaml", DTKD__RULE="exact"),   # exact sharpness match
    # logit standardization (Sun et al., CVPR 2024) on each method
    "KD+LS": _m("fashion_mnist/kd.yaml", KD__LOGIT_STAND=True),
    "DKD+LS": _m("fashion_mnist/dkd.yaml", DKD__LOGIT_STAND=True),
    "DTKD+LS": _m("fashion_mnist/dtkd.yaml", DTKD__LOGIT_STAND=True),
    # CTKD (Li et al., AAAI 2023) on KD's budget; its lambda ramp (10 of 240 epochs) scaled to 2 of 5
    "CTKD": _m("fashion_mnist/kd.yaml", DISTILLER__TYPE="CTKD", CTKD__DECAY_LOOPS=2),
}

# The config that trains a dataset's teachers (DISTILLER.STUDENT is set to the teacher's name).
TEACHER_CONFIGS = {"fashion_mnist": "fashion_mnist/teacher.yaml"}


def as_override_list(overrides):
    """``{KEY: value}``, ``[(KEY, value)]`` or ``[KEY, value, ...]`` -> ``[KEY, "value", ...]``
    (values as the command line would give them)."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        items = list(overrides)
        if all(isinstance(i, (tuple, list)) and len(i) == 2 for i in items):
            pairs = [tuple(i) for i in items]
        elif len(items) % 2 == 0:
            pairs = list(zip(items[0::2], items[1::2]))
        else:
            raise ValueError(f"overrides: expected a dict, (KEY, VALUE) pairs or a flat "
                             f"[KEY, VALUE, ...] list, got {overrides!r}")
    out = []
    for key, value in pairs:
        if not isinstance(key, str):
            raise ValueError(f"overrides: keys are dotted config names (str), got {key!r}")
        out += [key, _as_text(value)]
    return out


def _as_text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


@dataclasses.dataclass
class DistillResult:
    """What one distillation run gave.

    best_acc / best_epoch / last_acc : test top-1 (%) as the trainer measured it.
    history : the per-epoch records of the run's log.jsonl (loss terms, accuracy, temperatures).
    temperatures : for dynamic-temperature methods, T_s and T_t over the run: ``t_student`` /
        ``t_teacher`` (last epoch's mean), ``*_min`` / ``*_max`` (over all epochs); else empty.
    n_fallback : samples whose temperatures fell back to T (summed over the run).
    """
    method: str
    best_acc: float
    best_epoch: int
    last_acc: float
    history: list
    temperatures: dict
    n_fallback: int
    seconds: float
    run_dir: Path
    config: object          # the resolved dtkd.config.CfgNode
    overrides: list         # the call's own overrides, [KEY, VALUE, ...]
    teacher: object = None  # dtkd.engine.CachedTeacher, or None (vanilla, or a given checkpoint)

    def row(self):
        """One flat row for the results table (JSON scalars only)."""
        cfg = self.config
        row = {"method": self.method,
               "overrides": " ".join(f"{k}={v}" for k, v in zip(self.overrides[0::2],
                                                              self.overrides[1::2])
                                     if k != "SEED"),
               "seed": cfg.SEED, "student": cfg.DISTILLER.STUDENT,
               "teacher": (cfg.DISTILLER.TEACHER if cfg.DISTILLER.TYPE != "NONE" else ""),
               "teacher_acc": self.teacher.best_acc if self.teacher is not None else None,
               "train_images": cfg.DATASET.SUBSET or None, "epochs": len(self.history),
               "best_acc": self.best_acc, "best_epoch": self.best_epoch,
               "last_acc": self.last_acc}
        row.update(self.temperatures)
        if self.temperatures:
            row["n_fallback"] = self.n_fallback
        row.update({"seconds": round(self.seconds, 2), "run_dir": str(self.run_dir)})
        return row


class Sweep:
    """Distillation runs sharing a teacher cache, run directory and budget overrides.

    runs_dir : each run writes its logs and checkpoints to ``runs_dir/<name>``.
    cache_root : the teacher cache (default ``$XDG_CACHE_HOME/dtkd/teachers``).
    overrides : applied to every run, teachers and students (the budget: DATASET.SUBSET,
        SOLVER.EPOCHS, DATASET.ROOT, ...); a call's own overrides come after and win.
    teacher_overrides : applied to teachers only, after ``overrides``.
    threads : NUM_THREADS of every run (0: the library default).
    progress : progress bars.
    log : callable for one-line messages (teacher training / waiting), or None.
    """

    def __init__(self, runs_dir, cache_root=None, overrides=None, teacher_overrides=None,
                 threads=0, progress=False, log=None):
        self.runs_dir = Path(runs_dir)
        self.cache_root = cache_root
        self.overrides = as_override_list(overrides)
        self.teacher_overrides = as_override_list(teacher_overrides)
        self.threads = int(threads)
        self.progress = bool(progress)
        self.log = log
        self._teachers = {}     # config digest -> CachedTeacher, for this process's lifetime
        self._names = set()

    # ------------------------------------------------------------------------------------------
    def teacher(self, model=None, config=None, overrides=None, dataset="fashion_mnist"):
        """A trained teacher (:class:`dtkd.engine.CachedTeacher`): from this sweep's memory,
        else the disk cache, else trained now (file-locked against concurrent trainers).

        model : backbone name (sets DISTILLER.STUDENT of the teacher config).
        config : the teacher's config (default: ``TEACHER_CONFIGS[dataset]``).
        """
        from ..config import ConfigError, load_config
        from ..engine import cached_teacher, config_digest
        if config is None:
            if dataset not in TEACHER_CONFIGS:
                raise ConfigError(
                    f"dataset: no shipped teacher config for {dataset!r} (have: "
                    f"{', '.join(TEACHER_CONFIGS)}); pass config= a teacher YAML, or give the "
                    f"student DISTILLER.TEACHER_CHECKPOINT in its overrides")
            config = TEACHER_CONFIGS[dataset]
        extra = ["DISTILLER.STUDENT", model] if model else []
        cfg = load_config(config, extra + self.overrides + self.teacher_overrides
                          + as_override_list(overrides) + self._thread_override())
        key = config_digest(cfg)
        if key not in self._teachers:
            self._teachers[key] = cached_teacher(cfg, cache_root=self.cache_root,
                                                 progress=self.progress, log=self.log)
        return self._teachers[key]

    def distill(self, method="DTKD", overrides=None, *, seed=None, teacher=None, config=None,
                name=None, on_epoch=None):
        """Train a student with ``method`` (a key of :data:`METHODS`) and ``overrides``; returns
        a :class:`DistillResult`.

        seed : SEED of the run (model init, data order); None keeps the config's.
        teacher : a backbone name (trained or taken from the cache), a CachedTeacher, or None
            for the config's DISTILLER.TEACHER. Not used when the overrides set
            DISTILLER.TEACHER_CHECKPOINT or the method needs no teacher.
        config : a config (shipped name or path) to use instead of the method's.
        name : the run directory's name under runs_dir (default: method and a counter).
        on_epoch : callable(record) after every epoch (the epoch's log.jsonl record).
        """
        from ..config import ConfigError, load_config
        from ..engine import CachedTeacher, build_trainer, read_log
        if config is None:
            if method not in METHODS:
                raise ConfigError(f"method: unknown method {method!r}; known: "
                                  f"{', '.join(METHODS)} (or pass config=)")
            config, base = METHODS[method].config, as_override_list(METHODS[method].overrides)
        else:
            base = []
        own = as_override_list(overrides) + (["SEED", str(int(seed))] if seed is not None else [])
        cfg = load_config(config, base + self.overrides + own + self._thread_override())
        given_checkpoint = "DISTILLER.TEACHER_CHECKPOINT" in own[0::2]
        cached = None
        if cfg.DISTILLER.TYPE != "NONE" and not given_checkpoint:
            if isinstance(teacher, CachedTeacher):
                cached = teacher
            else:
                cached = self.teacher(teacher or cfg.DISTILLER.TEACHER, dataset=cfg.DATASET.TYPE)
            cfg.merge_from_list(["DISTILLER.TEACHER", cached.model,
                                 "DISTILLER.TEACHER_CHECKPOINT", str(cached.path)])
        run_dir = self.runs_dir / self._unique(name or method or Path(config).stem)
        start = time.perf_counter()
        trainer = build_trainer(cfg, out_dir=run_dir, progress=self.progress)
        if on_epoch is not None:
            trainer.on_epoch.append(on_epoch)
        summary = trainer.train()
        seconds = time.perf_counter() - start
        history = read_log(run_dir)
        return DistillResult(
            method=method or Path(config).stem, best_acc=summary["best_acc"],
            best_epoch=summary["best_epoch"], last_acc=summary["last_acc"], history=history,
            temperatures=_temperature_summary(history),
            n_fallback=int(sum(h.get("n_fallback", 0) for h in history)), seconds=seconds,
            run_dir=run_dir, config=cfg, overrides=own, teacher=cached)

    # ------------------------------------------------------------------------------------------
    def _thread_override(self):
        return ["NUM_THREADS", str(self.threads)] if self.threads else []

    def _unique(self, name):
        parts = [re.sub(r"[^A-Za-z0-9_.+=-]+", "_", part).strip("_.")[:120]
                 for part in str(name).split("/")]
        base = "/".join(p for p in parts if p) or "run"
        candidate, k = base, 1
        while candidate in self._names or (self.runs_dir / candidate).exists():
            k += 1
            candidate = f"{base}-{k}"
        self._names.add(candidate)
        return candidate


def _temperature_summary(history):
    if not history or "t_student_mean" not in history[-1]:
        return {}
    out = {}
    for who in ("t_student", "t_teacher"):
        out[who] = history[-1][f"{who}_mean"]
        out[f"{who}_min"] = min(h[f"{who}_min"] for h in history)
        out[f"{who}_max"] = max(h[f"{who}_max"] for h in history)
    return out


def default_threads():
    """Threads per run: the cores divided among pytest-xdist workers (1 worker: all cores)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers)) if workers > 1 else 0
