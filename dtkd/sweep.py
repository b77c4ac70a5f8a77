"""Distillation sweeps on Ray: a grid or a random search of runs as Ray Tune trials.

Needs Ray (``pip install 'dtkd[ray]'``). From the command line::

    python -m dtkd sweep --cfg fashion_mnist/dtkd.yaml --grid grid.yaml --out sweep1 \\
        DATASET.SUBSET 2000 SOLVER.EPOCHS 3

``grid.yaml`` holds config keys (the ``KEY VALUE`` overrides of ``python -m dtkd train``) with
their values::

    grid:                 # every combination (Tune grid_search)
      DTKD.T: [2, 4]
      SEED: [0, 1, 2]
    random:               # sampled per trial (Tune search spaces); optional
      DTKD.BETA: {uniform: [0.5, 2.0]}
      SOLVER.LR: {loguniform: [0.01, 0.1]}
      DTKD.ALPHA: {choice: [0.5, 1.0]}
    num_samples: 2        # trials per grid point (random draws); default 1
    retries: 1            # a failed trial is run again this many times; default 1

Every trial is one :meth:`dtkd.testing.Sweep.distill` run (the machinery of the pytest plugin):
it reports every epoch's record (test top-1, loss terms, temperature statistics) to Tune with
``ray.tune.report``, and the sweep ends with the plugin's table (``<out>/results.csv`` and
``.md``: one row per trial, failed ones included with ``status`` ``failed`` and their error).

Ray: with no ``address`` (``--address``, else ``$RAY_ADDRESS``) a local Ray is started with
``num_cpus`` CPUs (default 2) and a small object store; with one, the sweep joins that cluster.
Each trial asks for ``cpus_per_trial`` CPUs and runs with that many threads.

Teachers are trained once per configuration and shared: trials look them up in one cache
directory (``--cache``, default the dtkd teacher cache) through
:func:`dtkd.engine.cached_teacher`, whose file lock makes concurrent trials that need the same
teacher wait for the one that trains it. On a multi-machine cluster, the cache, the run
directory and the dataset root must be on a filesystem every node sees (NFS locks ``flock``
correctly on Linux >= 2.6.12).
"""
import itertools
import json
import os
import re
import time
from pathlib import Path

import yaml

__all__ = ["load_grid", "grid_points", "init_ray", "run_sweep", "SweepOutcome", "RaySweep",
           "RAY_INSTALL"]

RAY_INSTALL = "pip install 'dtkd[ray]'  (or: pip install 'ray[tune]')"
_DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
_RAY_TEMP_ENV = "DTKD_RAY_TMPDIR"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(f"Ray sweeps need Ray: {RAY_INSTALL}") from None
    return ray


# ----------------------------------------------------------------------------------------------
# The grid file

def load_grid(source):
    """Read and check a grid (a YAML path, or the dict it holds). Returns
    ``{"grid": {KEY: [values]}, "random": {KEY: (kind, args)}, "num_samples": n, "retries": r}``.
    Keys are checked against the config defaults (a typo is an error naming close matches)."""
    from .config import ConfigError, get_default_config
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            tree = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"--grid: no file {path}") from None
        where = str(path)
    else:
        tree, where = source, "grid"
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping with 'grid' and/or 'random', got "
                          f"{type(tree).__name__}")
    unknown = set(tree) - {"grid", "random", "num_samples", "retries"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; expected grid, random, "
                          "num_samples, retries")
    grid = tree.get("grid") or {}
    random = tree.get("random") or {}
    if not isinstance(grid, dict) or not isinstance(random, dict):
        raise ConfigError(f"{where}: 'grid' and 'random' map config keys to values")
    if not grid and not random:
        raise ConfigError(f"{where}: nothing to sweep (no 'grid' or 'random' keys)")
    defaults = get_default_config()
    out_grid, out_random = {}, {}
    for key, values in grid.items():
        _check_key(defaults, key, where)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid.{key}: expected a non-empty list of values, got "
                              f"{values!r}")
        out_grid[key] = values
    for key, spec in random.items():
        _check_key(defaults, key, where)
        if key in out_grid:
            raise ConfigError(f"{where}: {key} is in both grid and random")
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in _DISTRIBUTIONS):
            raise ConfigError(f"{where}: random.{key}: expected one of "
                              f"{{{', '.join(d + ': [...]' for d in _DISTRIBUTIONS)}}}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or (kind != "choice" and len(args) != 2) or not args:
            raise ConfigError(f"{where}: random.{key}.{kind}: expected "
                              f"{'a list of values' if kind == 'choice' else '[low, high]'}, "
                              f"got {args!r}")
        out_random[key] = (kind, list(args))
    counts = {}
    for name, default in (("num_samples", 1), ("retries", 1)):
        value = tree.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name ==
                                                                            "num_samples" else 0):
            raise ConfigError(f"{where}: {name}: expected an int >= "
                              f"{1 if name == 'num_samples' else 0}, got {value!r}")
        counts[name] = value
    return {"grid": out_grid, "random": out_random, **counts}


def _check_key(defaults, key, where):
    from .config import ConfigError
    node = defaults
    parts = str(key).split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            from .config import _unknown_key_message
            raise ConfigError(_unknown_key_message(key, node if isinstance(node, dict) else {},
                                                   ".".join(parts[:i]), where))
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"{where}: {key} is a section, not a config key")


def grid_points(grid):
    """The grid's combinations in Tune's order (first key varies fastest), as dicts."""
    keys = list(grid["grid"])
    combos = itertools.product(*[grid["grid"][k] for k in reversed(keys)])
    return [dict(zip(keys, reversed(c))) for c in combos] or [{}]


def _param_space(grid):
    from ray import tune
    space = {_tune_key(k): tune.grid_search(v) for k, v in grid["grid"].items()}
    for key, (kind, args) in grid["random"].items():
        space[_tune_key(key)] = (tune.choice(args) if kind == "choice"
                                 else getattr(tune, kind)(*args))
    return space


# Tune flattens nested keys with "/" and treats "." specially in some places: keep config keys
# as KEY__SUB in the param space and turn them back for the runs and the table.
def _tune_key(key):
    return key.replace(".", "__")


def _config_key(key):
    return key.replace("__", ".")


# ----------------------------------------------------------------------------------------------
# Ray

def init_ray(address=None, num_cpus=2, object_store_memory=200 * 2**20):
    """Connect to Ray: ``address`` (or ``$RAY_ADDRESS``) joins a running cluster; otherwise a
    local Ray with ``num_cpus`` CPUs, an object store of ``object_store_memory`` bytes and no
    dashboard. Returns True when this call started Ray (the caller shuts it down)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {"env_vars": {"OMP_NUM_THREADS": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        kwargs = {}
        if os.environ.get(_RAY_TEMP_ENV):
            kwargs["_temp_dir"] = os.environ[_RAY_TEMP_ENV]
        ray.init(num_cpus=int(num_cpus), object_store_memory=int(object_store_memory),
                 include_dashboard=False, runtime_env=env, log_to_driver=False, **kwargs)
    return True


def _absolute(overrides):
    """[KEY, VALUE, ...] with the path keys made absolute here, where they were typed (a Ray
    worker runs elsewhere)."""
    from .config import PATH_KEYS
    out = list(overrides)
    for i in range(0, len(out), 2):
        if out[i] in PATH_KEYS and out[i + 1]:
            out[i + 1] = os.path.abspath(os.path.expanduser(str(out[i + 1])))
    return out


def _sweep_settings(runs_dir, cache_root, overrides, teacher_overrides, threads):
    return {"runs_dir": str(Path(runs_dir).resolve()),
            "cache_root": None if cache_root is None else str(Path(cache_root).resolve()),
            "overrides": _absolute(overrides), "teacher_overrides": _absolute(teacher_overrides),
            "threads": int(threads)}


def _local_sweep(settings):
    from .testing.sweep import Sweep
    return Sweep(runs_dir=settings["runs_dir"], cache_root=settings["cache_root"],
                 overrides=settings["overrides"], teacher_overrides=settings["teacher_overrides"],
                 threads=settings["threads"])


def _metrics(record):
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _trial(params, *, config, settings):
    """One Tune trial: a distillation run reporting every epoch."""
    from ray import tune
    from .config import load_config
    from .testing.sweep import as_override_list
    own = [(_config_key(k), v) for k, v in params.items()]
    own_list = as_override_list(own)
    cfg = load_config(config, settings["overrides"] + own_list)
    context = tune.get_context()
    trial_id = context.get_trial_id() if context is not None else "trial"
    sweep = _local_sweep(settings)
    attempt = _attempt(Path(settings["runs_dir"]) / trial_id)
    result = sweep.distill(cfg.DISTILLER.TYPE, own_list, config=config,
                           name=f"{trial_id}/attempt{attempt}",
                           on_epoch=lambda record: tune.report(_metrics(record)))
    row = result.row()
    row.update({_config_key(k): v for k, v in params.items()})
    row["status"] = "ok"
    row["attempts"] = attempt
    final = _metrics(result.history[-1]) if result.history else {}
    final.update({"dtkd_row": json.dumps(row, default=str), "dtkd_done": 1})
    tune.report(final)


def _attempt(folder):
    """Which attempt at this trial this is (1, 2, ...): a line per attempt in
    ``folder/attempts.log`` (one O_APPEND write each)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "attempts.log", os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {time.time():.3f}\n".encode())
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1 << 20).count(b"\n")
    finally:
        os.close(fd)


class SweepOutcome:
    """What :func:`run_sweep` gives: ``rows`` (the results table, one row per trial, in grid
    order), ``params`` (swept keys), ``failed`` (rows of failed trials), ``seconds`` (wall
    time), ``paths`` (the CSV and Markdown written, or None)."""

    def __init__(self, rows, params, seconds, paths):
        self.rows, self.params, self.seconds, self.paths = rows, params, seconds, paths
        self.failed = [r for r in rows if r.get("status") != "ok"]

    def __repr__(self):
        return (f"SweepOutcome({len(self.rows)} trials, {len(self.failed)} failed, "
                f"{self.seconds:.1f} s)")


def run_sweep(config, grid, out_dir, overrides=(), teacher_overrides=(), cache_root=None,
              address=None, num_cpus=2, cpus_per_trial=1, max_concurrent=None,
              object_store_memory=200 * 2**20, verbose=0):
    """Run ``grid`` (a path or :func:`load_grid` dict) over ``config`` as Ray Tune trials;
    write ``out_dir/results.csv`` and ``.md``; return a :class:`SweepOutcome`.

    overrides : ``[KEY, VALUE, ...]`` for every run, teachers included (budget, data root).
    teacher_overrides : for teachers only.
    cache_root : the shared teacher cache (default :func:`dtkd.engine.default_cache_root`).
    address : a Ray cluster to join (default ``$RAY_ADDRESS``; none: a local Ray of
        ``num_cpus`` CPUs).
    cpus_per_trial : CPUs each trial reserves; it runs with that many threads.
    max_concurrent : trials at once (default: as many as the CPUs allow).
    """
    ray = _import_ray()
    from ray import tune
    from .config import load_config, resolve_config_path
    from .engine.teacher_cache import default_cache_root
    from .testing.results import write_tables
    from .testing.sweep import as_override_list
    grid = load_grid(grid) if not isinstance(grid, dict) or "num_samples" not in grid else grid
    config = str(resolve_config_path(config))
    overrides = as_override_list(list(overrides))
    load_config(config, overrides)  # a bad base config fails here, not in every trial
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _sweep_settings(out_dir / "runs",
                               default_cache_root() if cache_root is None else cache_root,
                               overrides, as_override_list(list(teacher_overrides)),
                               cpus_per_trial)
    started = init_ray(address, num_cpus=num_cpus, object_store_memory=object_store_memory)
    start = time.perf_counter()
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, config=config, settings=settings),
            {"cpu": cpus_per_trial})
        tuner = tune.Tuner(
            trainable, param_space=_param_space(grid),
            tune_config=tune.TuneConfig(num_samples=grid["num_samples"],
                                        max_concurrent_trials=max_concurrent,
                                        trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(name="tune", storage_path=str(out_dir), verbose=verbose,
                                      failure_config=tune.FailureConfig(
                                          max_failures=grid["retries"])))
        results = tuner.fit()
        rows = [_row(r, grid) for r in results]
    finally:
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - start
    rows.sort(key=lambda r: r.pop("_order"))
    params = list(grid["grid"]) + list(grid["random"])
    paths = write_tables(out_dir / "results", rows, params)
    return SweepOutcome(rows, params, seconds, paths)


def _row(result, grid):
    """The table row of one Tune result: the run's row, or a failed row with the error."""
    config = result.config or {}
    params = {_config_key(k): v for k, v in config.items()}
    match = re.search(r"_(\d+)$", Path(result.path).name if result.path else "")
    order = int(match.group(1)) if match else 0
    metrics = result.metrics or {}
    if result.error is None and "dtkd_row" in metrics:
        row = json.loads(metrics["dtkd_row"])
    else:
        error = result.error if result.error is not None else RuntimeError(
            "the trial ended without reporting its result")
        cause = getattr(error, "cause", None) or error
        row = {**params, "status": "failed",
               "error": f"{type(cause).__name__}: {_first_line(cause)}",
               "attempts": grid["retries"] + 1,
               "epochs": metrics.get("epoch"), "run_dir": ""}
    row["_order"] = order
    return row


def _first_line(error):
    text = str(error).strip()
    # Ray wraps the trial's exception in a traceback: keep its last line (the exception itself)
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else repr(error))[:300]


# ----------------------------------------------------------------------------------------------
# The pytest plugin's backend: each distill() call a Ray task

class RaySweep:
    """A :class:`dtkd.testing.Sweep` whose ``distill`` runs as a Ray task (retried
    ``retries`` times on failure) on the connected Ray: what ``pytest --dtkd-backend=ray`` uses.
    Teachers come from the shared cache as in a local sweep."""

    def __init__(self, runs_dir, cache_root=None, overrides=None, teacher_overrides=None,
                 threads=0, progress=False, log=None, retries=1, cpus_per_run=1):
        from .engine.teacher_cache import default_cache_root
        from .testing.sweep import as_override_list
        self._local = None
        self.retries = int(retries)
        self.cpus_per_run = int(cpus_per_run)
        self.settings = _sweep_settings(
            runs_dir, default_cache_root() if cache_root is None else cache_root,
            as_override_list(overrides), as_override_list(teacher_overrides),
            threads or cpus_per_run)
        self.log = log

    @property
    def runs_dir(self):
        return Path(self.settings["runs_dir"])

    def teacher(self, model=None, config=None, overrides=None, dataset="fashion_mnist"):
        """The teacher, trained in a Ray task when not cached (so it runs where the runs do)."""
        ray = _import_ray()
        task = ray.remote(num_cpus=self.cpus_per_run, max_retries=self.retries,
                          retry_exceptions=True)(_remote_teacher)
        return _get(ray, task.remote(self.settings, model, config, overrides, dataset))

    def distill(self, method="DTKD", overrides=None, *, seed=None, teacher=None, config=None,
                name=None, on_epoch=None):
        """As :meth:`dtkd.testing.Sweep.distill`, run as a Ray task (``on_epoch`` is not
        supported: the run happens in another process)."""
        if on_epoch is not None:
            raise ValueError("on_epoch: not supported by the Ray backend (the run is a Ray task "
                             "in another process)")
        ray = _import_ray()
        if config is not None:
            from .config import resolve_config_path
            config = str(resolve_config_path(config))
        task = ray.remote(num_cpus=self.cpus_per_run, max_retries=self.retries,
                          retry_exceptions=True)(_remote_distill)
        return _get(ray, task.remote(self.settings, method, overrides, seed, teacher, config,
                                     name))


def _get(ray, ref):
    """ray.get, raising the task's own exception (after Ray's retries) rather than Ray's
    wrapper."""
    from ray.exceptions import RayTaskError
    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = e.cause
        if not isinstance(cause, Exception):
            raise
        if hasattr(cause, "add_note"):  # Python >= 3.11: where it happened
            where = {k: e.__dict__.get(k) for k in ("function_name", "pid", "ip")}
            cause.add_note("(in the Ray task {function_name}, pid {pid}, {ip})".format(**where))
        raise cause from None


def _remote_teacher(settings, model, config, overrides, dataset):
    return _local_sweep(settings).teacher(model, config, overrides, dataset)


def _remote_distill(settings, method, overrides, seed, teacher, config, name):
    return _local_sweep(settings).distill(method, overrides, seed=seed, teacher=teacher,
                                          config=config, name=name)
