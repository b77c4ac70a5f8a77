"""Sweeps on Ray (dtkd.sweep): a local Ray of 2 CPUs started by the tests runs a 4-trial sweep on
tiny data through ``python -m dtkd sweep`` (every row present, epochs reported to Tune, one
teacher trained for all trials), a trial that raises is retried and reported failed, and the
pytest plugin's ``--dtkd-backend=ray`` runs a parametrized file's runs as Ray tasks. The grid
file's checks need no Ray."""
import csv
import json
from pathlib import Path

import pytest

from dtkd.config import ConfigError
from dtkd.engine.teacher_cache import TRAINED_LOG
from dtkd.sweep import grid_points, load_grid
from test_data import make_fmnist

pytest_plugins = ["pytester"]

TINY = ["DATASET.SUBSET", "64", "DATASET.TEST.SUBSET", "32", "SOLVER.EPOCHS", "2",
        "SOLVER.BATCH_SIZE", "32", "LOG.PROBE_SAMPLES", "8"]


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray sweeps need Ray: pip install 'dtkd[ray]'")
    pytest.importorskip("ray.tune", reason="Ray sweeps need Ray Tune: pip install 'ray[tune]'")
    from dtkd.sweep import init_ray
    started = init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    make_fmnist(root, "train", n=96, seed=1)
    make_fmnist(root, "test", n=48, seed=2)
    return root


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_four_trial_sweep_has_every_row_epochs_reported_and_one_teacher(
        ray_local, tiny_data, tmp_path, capsys):
    from dtkd.cli import main
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  DTKD.T: [2, 4]\n  SEED: [0, 1]\n")
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    status = main(["sweep", "--cfg", "fashion_mnist/dtkd.yaml", "--grid", str(grid), "--out",
                   str(out), "--cache", str(cache), "DATASET.ROOT", str(tiny_data), *TINY])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "4 trials, 0 failed" in printed
    rows = read_csv(out / "results.csv")
    assert sorted((r["DTKD.T"], r["SEED"]) for r in rows) == [
        ("2", "0"), ("2", "1"), ("4", "0"), ("4", "1")]
    for row in rows:
        assert row["status"] == "ok" and row["method"] == "DTKD" and row["epochs"] == "2"
        assert 0.0 <= float(row["best_acc"]) <= 100.0 and float(row["t_student"]) > 0
        assert (Path(row["run_dir"]) / "log.jsonl").is_file()
    # every trial reported each epoch to Tune (then its final row)
    trials = sorted((out / "tune").glob("trial_*"))
    assert len(trials) == 4
    for trial in trials:
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in reports[:2]] == [1, 2]
        assert all("test_acc" in r and "t_student_mean" in r and "loss_dtkd" in r
                   for r in reports[:2])
        assert reports[-1]["dtkd_done"] == 1
    assert (out / "results.md").read_text().count("| DTKD |") == 4
    # the teacher was trained once, shared by the four trials through the cache's lock
    assert len((cache / TRAINED_LOG).read_text().splitlines()) == 1


def test_a_trial_that_raises_is_retried_and_reported_failed(ray_local, tiny_data, tmp_path):
    from dtkd.sweep import run_sweep
    out = run_sweep("fashion_mnist/kd.yaml",
                    {"grid": {"SOLVER.LR": [0.05, -1.0]}, "retries": 1}, tmp_path / "sweep",
                    overrides=["DATASET.ROOT", str(tiny_data), *TINY, "SOLVER.EPOCHS", "1"],
                    cache_root=tmp_path / "cache")
    assert len(out.rows) == 2 and len(out.failed) == 1
    ok, failed = out.rows
    assert ok["status"] == "ok" and ok["SOLVER.LR"] == 0.05 and ok["attempts"] == 1
    assert failed["status"] == "failed" and failed["SOLVER.LR"] == -1.0
    assert "lr" in failed["error"] and failed["attempts"] == 2
    # the failing trial really ran twice
    attempts = [p for p in (tmp_path / "sweep" / "runs").glob("*/attempts.log")
                if len(p.read_text().splitlines()) == 2]
    assert len(attempts) == 1
    table = read_csv(tmp_path / "sweep" / "results.csv")
    assert [r["status"] for r in table] == ["ok", "failed"]


def test_pytest_backend_ray_runs_the_parametrized_file_as_ray_tasks(
        ray_local, pytester, tiny_data, tmp_path):
    pytester.makepyfile(test_lr="""
        import pytest

        @pytest.mark.parametrize("lr", [0.05, 0.01, -1.0])
        def test_lr(distill, lr):
            result = distill("KD", {"SOLVER.LR": lr})
            assert len(result.history) == 1 and result.run_dir.is_dir()
    """)
    results = tmp_path / "table"
    run = pytester.runpytest(
        "--dtkd-backend=ray", f"--dtkd-set=DATASET.ROOT={tiny_data}",
        f"--dtkd-cache={tmp_path / 'cache'}", f"--dtkd-runs={tmp_path / 'runs'}",
        f"--dtkd-results={results}", "-p", "no:cacheprovider",
        *[f"--dtkd-set={k}={v}" for k, v in zip(TINY[0::2], TINY[1::2])],
        "--dtkd-set=SOLVER.EPOCHS=1")
    outcomes = run.parseoutcomes()
    assert outcomes.get("passed") == 2 and outcomes.get("failed") == 1, run.outlines
    rows = read_csv(f"{results}.csv")
    assert sorted(r["lr"] for r in rows) == ["-1.0", "0.01", "0.05"]
    by_lr = {r["lr"]: r for r in rows}
    assert by_lr["-1.0"]["status"] == "failed" and "lr" in by_lr["-1.0"]["error"]
    assert by_lr["0.05"]["status"] == "ok" and float(by_lr["0.05"]["best_acc"]) >= 0
    assert len((tmp_path / "cache" / TRAINED_LOG).read_text().splitlines()) == 1


# ---- the grid file (no Ray needed) --------------------------------------------------------------

def test_grid_points_expand_in_tune_order():
    grid = load_grid({"grid": {"DTKD.T": [2, 4], "SEED": [0, 1, 2]}})
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"DTKD.T": 2, "SEED": 0}
    assert points[1] == {"DTKD.T": 4, "SEED": 0}
    assert grid["num_samples"] == 1 and grid["retries"] == 1


@pytest.mark.parametrize("tree,message", [
    ({"grid": {"DTKD.TT": [1]}}, "DTKD.TT"),
    ({"grid": {"DTKD.T": 3}}, "non-empty list"),
    ({"random": {"DTKD.BETA": {"normal": [0, 1]}}}, "uniform"),
    ({"random": {"DTKD.BETA": {"uniform": [0]}}}, r"\[low, high\]"),
    ({"grid": {"DTKD": [1]}}, "section"),
    ({"grid": {"SEED": [1]}, "num_samples": 0}, "num_samples"),
    ({"grids": {}}, "unknown section"),
    ({}, "nothing to sweep"),
])
def test_bad_grids_are_refused_naming_the_key(tree, message):
    with pytest.raises(ConfigError, match=message):
        load_grid(tree)


def test_missing_grid_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--grid"):
        load_grid(tmp_path / "nope.yaml")


def test_cli_sweep_refuses_bad_options_before_starting_ray(tmp_path, capsys):
    from dtkd.cli import main
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  SEED: [0]\n")
    base = ["sweep", "--cfg", "fashion_mnist/dtkd.yaml", "--grid", str(grid)]
    assert main(base + ["--num-cpus", "0"]) == 2
    assert "--num-cpus" in capsys.readouterr().err
    assert main(base + ["--teacher-set", "SOLVER.EPOCHS"]) == 2
    assert "--teacher-set" in capsys.readouterr().err
    assert main(base + ["SOLVER.EPOCHS"]) == 2
    assert "KEY VALUE" in capsys.readouterr().err
