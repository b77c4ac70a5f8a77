"""The pytest plugin (entry point ``pytest11: dtkd``; active once dtkd is installed).

Fixtures:
  ``distill(method, overrides, *, seed, teacher, config)`` -> :class:`DistillResult`
      trains a student and records the run in the results table.
  ``dtkd_teacher(model, config, overrides)`` -> :class:`dtkd.engine.CachedTeacher`
      a trained teacher, cached for the session and on disk, file-locked across workers.
  ``dtkd_results`` records extra rows: ``dtkd_results.add(column=value, ...)``.
  ``dtkd_sweep`` the session's :class:`Sweep` (runs dir, cache, overrides).

Options (``pytest --help``, group "dtkd"): ``--dtkd-results PATH`` (CSV + Markdown at session
end), ``--dtkd-set KEY=VALUE`` (every run), ``--dtkd-teacher-set KEY=VALUE`` (teachers),
``--dtkd-cache DIR``, ``--dtkd-runs DIR``, ``--dtkd-threads N``, ``--dtkd-progress``.

Rows travel as the test reports' ``user_properties``, which pytest-xdist sends from the workers
to the controller; the controller alone writes the tables, so no row is lost under ``-n N``.
"""
import json
import uuid
from pathlib import Path

import pytest

from .results import seed_summary, to_markdown, write_tables
from .sweep import Sweep, default_threads

_PROPERTY = "dtkd_run"


def pytest_addoption(parser):
    group = parser.getgroup("dtkd", "dtkd distillation sweeps (dtkd.testing)")
    group.addoption("--dtkd-results", metavar="PATH",
                    help="write every distill() run's config and result to PATH.csv and PATH.md "
                         "at the end of the session")
    group.addoption("--dtkd-set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, teachers and students (repeatable), "
                         "e.g. --dtkd-set DATASET.SUBSET=2000 --dtkd-set SOLVER.EPOCHS=3; a "
                         "test's own overrides win over it")
    group.addoption("--dtkd-teacher-set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for teachers only, after --dtkd-set (repeatable)")
    group.addoption("--dtkd-cache", metavar="DIR",
                    help="trained-teacher cache (default $XDG_CACHE_HOME/dtkd/teachers)")
    group.addoption("--dtkd-runs", metavar="DIR",
                    help="where runs write logs and checkpoints, one folder per test "
                         "(default: pytest's temporary directory)")
    group.addoption("--dtkd-threads", type=int, metavar="N",
                    help="threads per run (default: the cores divided among xdist workers)")
    group.addoption("--dtkd-progress", action="store_true",
                    help="progress bars for the runs (with -s to see them)")
    group.addoption("--dtkd-backend", choices=("local", "ray"), default="local",
                    help="where distill() runs: in the test's process (local, default) or as a "
                         "Ray task (ray; needs pip install 'dtkd[ray]'): a local Ray, or the "
                         "cluster of --dtkd-ray-address / $RAY_ADDRESS")
    group.addoption("--dtkd-ray-address", metavar="ADDR",
                    help="Ray cluster for --dtkd-backend=ray (default $RAY_ADDRESS, else a "
                         "local Ray)")
    group.addoption("--dtkd-ray-cpus", type=int, default=2, metavar="N",
                    help="CPUs of the local Ray that --dtkd-backend=ray starts (default 2)")
    group.addoption("--dtkd-retries", type=int, default=1, metavar="N",
                    help="--dtkd-backend=ray: a failed run is retried N times (default 1) and, "
                         "failing still, recorded with status 'failed'")


def _pairs(values, option):
    out = []
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise pytest.UsageError(f"{option}: expected KEY=VALUE, got {text!r}")
        out += [key.strip(), value.strip()]
    return out


class _Collector:
    """Gathers the rows of every test report (local or from xdist workers) on the process that
    reports: the controller, or the only process without xdist."""

    def __init__(self, config):
        self.config = config
        self.rows = {}      # run id -> row
        self.params = {}    # parameter names, in first-seen order
        self.written = None  # (csv, md) paths once written

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        for name, value in getattr(report, "user_properties", ()):
            if name != _PROPERTY:
                continue
            row = json.loads(value)
            run_id = row.pop("_id")
            if run_id not in self.rows:
                for p in row.pop("_params", ()):
                    self.params.setdefault(p, None)
                self.rows[run_id] = row
            else:
                row.pop("_params", None)

    def sorted_rows(self):
        rows = sorted(self.rows.values(), key=lambda r: (r.get("_order", 0), r.get("_call", 0)))
        return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]

    @pytest.hookimpl
    def pytest_sessionfinish(self, session):
        path = self.config.getoption("dtkd_results")
        if path and self.rows:
            self.written = write_tables(path, self.sorted_rows(), list(self.params))

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter):
        if not self.rows:
            return
        rows = self.sorted_rows()
        tr = terminalreporter
        tr.section(f"dtkd: {len(rows)} distillation run(s)")
        tr.write(to_markdown(rows, list(self.params)))
        summary = seed_summary(rows, list(self.params))
        if summary:
            tr.write_line("")
            tr.write_line("mean ± std over seeds:")
            tr.write(summary)
        if self.written:
            tr.write_line(f"results: {self.written[0]}  {self.written[1]}")
        elif not self.config.getoption("dtkd_results"):
            tr.write_line("(--dtkd-results PATH writes this table to PATH.csv and PATH.md)")


def pytest_configure(config):
    # A malformed --dtkd-set is a usage error at start-up, not in the first test that runs.
    _pairs(config.getoption("dtkd_set"), "--dtkd-set")
    _pairs(config.getoption("dtkd_teacher_set"), "--dtkd-teacher-set")
    if not hasattr(config, "workerinput"):  # the xdist controller, or a run without xdist
        config.pluginmanager.register(_Collector(config), "dtkd-results-collector")


@pytest.fixture(scope="session")
def dtkd_sweep(request, tmp_path_factory):
    """The session's :class:`dtkd.testing.Sweep`, configured from the ``--dtkd-*`` options."""
    opt = request.config.getoption
    runs = opt("dtkd_runs")
    runs_dir = Path(runs) if runs else tmp_path_factory.getbasetemp() / "dtkd_runs"
    threads = opt("dtkd_threads")
    progress = opt("dtkd_progress")
    if opt("dtkd_backend") == "ray":
        from ..sweep import RaySweep, init_ray
        if init_ray(opt("dtkd_ray_address"), num_cpus=opt("dtkd_ray_cpus")):
            import ray
            request.addfinalizer(ray.shutdown)
        return RaySweep(runs_dir=runs_dir, cache_root=opt("dtkd_cache"),
                        overrides=_pairs(opt("dtkd_set"), "--dtkd-set"),
                        teacher_overrides=_pairs(opt("dtkd_teacher_set"), "--dtkd-teacher-set"),
                        threads=threads or 1, retries=opt("dtkd_retries"))
    return Sweep(runs_dir=runs_dir, cache_root=opt("dtkd_cache"),
                 overrides=_pairs(opt("dtkd_set"), "--dtkd-set"),
                 teacher_overrides=_pairs(opt("dtkd_teacher_set"), "--dtkd-teacher-set"),
                 threads=default_threads() if threads is None else threads,
                 progress=progress, log=print if progress else None)


class ResultsRecorder:
    """Adds rows for the current test to the session's results table."""

    def __init__(self, node):
        self._node = node
        self._calls = 0

    def add(self, **row):
        """Record one row (column=value; values JSON scalars). ``test`` and the test's
        parameters are filled in."""
        node = self._node
        params = {}
        callspec = getattr(node, "callspec", None)
        if callspec is not None:
            params = {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
                      for k, v in callspec.params.items()}
        self._calls += 1
        full = {"test": node.nodeid}
        full.update({k: v for k, v in params.items() if k not in row})
        full.update(row)
        full.update({"_id": uuid.uuid4().hex, "_params": [k for k in params if k not in row],
                     "_order": getattr(node, "_dtkd_order", 0), "_call": self._calls})
        node.user_properties.append((_PROPERTY, json.dumps(full, default=str)))


@pytest.fixture
def dtkd_results(request):
    """Record rows in the results table: ``dtkd_results.add(method="mine", acc=91.2)``."""
    return ResultsRecorder(request.node)


@pytest.fixture
def dtkd_teacher(dtkd_sweep):
    """``dtkd_teacher(model="resnet20", config=None, overrides=None)`` -> a trained teacher
    (:class:`dtkd.engine.CachedTeacher`: ``.path``, ``.best_acc``, ``.trained``)."""
    return dtkd_sweep.teacher


@pytest.fixture
def distill(request, dtkd_sweep, dtkd_results):
    """``distill(method="DTKD", overrides=None, *, seed=None, teacher=None, config=None)``:
    train a student (see :meth:`dtkd.testing.Sweep.distill`), record it in the results table,
    return the :class:`DistillResult` (``.best_acc``, ``.last_acc``, ``.history``,
    ``.temperatures``)."""
    folder = _node_folder(request.node)

    remote = request.config.getoption("dtkd_backend") == "ray"

    def run(method="DTKD", overrides=None, *, seed=None, teacher=None, config=None, name=None):
        try:
            result = dtkd_sweep.distill(method, overrides, seed=seed, teacher=teacher,
                                        config=config,
                                        name=f"{folder}/{name or method or Path(config).stem}")
        except Exception as e:
            if remote:  # a Ray run that failed after its retries: a row that says so
                from .sweep import as_override_list
                own = as_override_list(overrides)
                dtkd_results.add(method=method or Path(config).stem,
                                 overrides=" ".join(f"{k}={v}" for k, v in
                                                    zip(own[0::2], own[1::2])),
                                 seed=seed, status="failed",
                                 error=f"{type(e).__name__}: {str(e).strip()[:300]}")
            raise
        row = result.row()
        if remote:
            row["status"] = "ok"
        dtkd_results.add(**row)
        return result

    return run


def _node_folder(node):
    name = node.nodeid.split("::", 1)[-1]
    return "".join(c if c.isalnum() or c in "._-=+" else "_" for c in name)[:100]


def pytest_collection_modifyitems(session, config, items):
    # Each worker collects the same items in the same order: the index sorts the table in
    # collection order whichever worker ran a test.
    for index, item in enumerate(items):
        item._dtkd_order = index


def pytest_report_header(config):
    results = config.getoption("dtkd_results")
    return f"dtkd: results -> {results}" if results else None
