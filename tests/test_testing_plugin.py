"""The pytest plugin dtkd.testing: a tiny sweep yields a results table with every row (also the
README's alpha sweep, verbatim), under pytest-xdist two workers share one teacher trained once
and lose no row, and the teacher cache's key and lock."""
import csv
import json
import re
from pathlib import Path

import pytest

from dtkd.config import load_config
from dtkd.engine import cached_teacher, config_digest
from dtkd.engine.teacher_cache import TRAINED_LOG
from dtkd.testing import seed_summary, to_markdown
from test_data import make_fmnist

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"DATASET.SUBSET": 64, "DATASET.TEST.SUBSET": 32, "SOLVER.EPOCHS": 1,
        "SOLVER.BATCH_SIZE": 32, "LOG.PROBE_SAMPLES": 8}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    make_fmnist(root, "train", n=96, seed=1)
    make_fmnist(root, "test", n=48, seed=2)
    return root


def tiny_args(data, cache):
    args = [f"--dtkd-set=DATASET.ROOT={data}", f"--dtkd-cache={cache}", "--dtkd-threads=1",
            "-p", "no:cacheprovider"]
    return args + [f"--dtkd-set={k}={v}" for k, v in TINY.items()]


def readme_sweep():
    """The README's parametrized alpha sweep (the python block that defines test_dtkd_alpha)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if "def test_dtkd_alpha(distill" in b]
    assert len(found) == 1, "README.md should hold exactly one alpha-sweep example"
    return found[0]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_readme_alpha_sweep_writes_a_table_with_every_run(pytester, tiny_data, tmp_path):
    source = readme_sweep()
    assert len(source.strip().splitlines()) <= 15
    alphas = re.search(r"ALPHAS = \[(.*?)\]", source).group(1).split(",")
    pytester.makepyfile(test_alpha=source)
    results = tmp_path / "alpha"
    run = pytester.runpytest(*tiny_args(tiny_data, tmp_path / "cache"), f"--dtkd-results={results}")
    outcomes = run.parseoutcomes()
    # A 1-epoch run on random images may or may not beat chance; every run must be recorded.
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == len(alphas), run.outlines
    rows = read_csv(f"{results}.csv")
    assert sorted(float(r["alpha"]) for r in rows) == sorted(float(a) for a in alphas)
    for row in rows:
        assert row["method"] == "DTKD" and row["teacher"] == "resnet20" and row["student"] == "resnet8"
        assert 0.0 <= float(row["best_acc"]) <= 100.0 and row["epochs"] == "1"
        assert float(row["t_student"]) > 0 and float(row["t_teacher"]) > 0
        assert row["overrides"] == f"DTKD.ALPHA={row['alpha']}"
        assert (Path(row["run_dir"]) / "log.jsonl").is_file()
    markdown = Path(f"{results}.md").read_text()
    assert markdown.count("| test_alpha.py::test_dtkd_alpha[") == len(alphas)
    run.stdout.fnmatch_lines([f"*dtkd: {len(alphas)} distillation run(s)*",
                              "| test | method | alpha |*", f"results: {results}.csv*"])
    # one teacher for the whole sweep
    assert len((tmp_path / "cache" / TRAINED_LOG).read_text().splitlines()) == 1


def test_xdist_workers_share_one_teacher_and_lose_no_row(pytester, tiny_data, tmp_path):
    pytest.importorskip("xdist", reason="needs pytest-xdist (in the 'test' extra)")
    pytester.makepyfile(test_pair="""
        import pytest

        @pytest.mark.parametrize("seed", [0, 1])
        def test_kd(distill, seed):
            result = distill("KD", seed=seed)
            assert result.teacher is not None and result.teacher.model == "resnet20"
    """)
    results = tmp_path / "table.csv"
    run = pytester.runpytest_subprocess("-n", "2", "-v", *tiny_args(tiny_data, tmp_path / "cache"),
                                        f"--dtkd-results={results}")
    run.assert_outcomes(passed=2)
    # both workers ran a test, each needing the teacher at the same time; it was trained once
    assert {"[gw0]", "[gw1]"} <= set(re.findall(r"\[gw\d\]", run.stdout.str()))
    trained = (tmp_path / "cache" / TRAINED_LOG).read_text().splitlines()
    assert len(trained) == 1 and json.loads(trained[0])["model"] == "resnet20"
    rows = read_csv(results)
    assert sorted(r["seed"] for r in rows) == ["0", "1"]
    assert {r["teacher_acc"] for r in rows} == {str(json.loads(trained[0])["best_acc"])}
    assert (tmp_path / "table.md").read_text().count("test_pair.py::test_kd[") == 2


def test_a_failing_run_is_still_recorded_and_rows_keep_collection_order(pytester, tiny_data,
                                                                        tmp_path):
    pytester.makepyfile(test_order="""
        import pytest

        @pytest.mark.parametrize("step", [3, 1, 2])
        def test_rows(dtkd_results, step):
            dtkd_results.add(method="custom", best_acc=float(step))
            assert step != 1, "a failing test keeps its row"
    """)
    results = tmp_path / "rows"
    run = pytester.runpytest(*tiny_args(tiny_data, tmp_path / "cache"), f"--dtkd-results={results}")
    run.assert_outcomes(passed=2, failed=1)
    assert [r["step"] for r in read_csv(f"{results}.csv")] == ["3", "1", "2"]


def test_bad_option_names_the_option(pytester):
    pytester.makepyfile(test_x="def test_x():\n    assert True\n")
    run = pytester.runpytest("--dtkd-set=SOLVER.EPOCHS")
    assert run.ret != 0
    run.stderr.fnmatch_lines(["*--dtkd-set: expected KEY=VALUE, got 'SOLVER.EPOCHS'*"])


def test_seed_summary_is_mean_and_std_over_seeds_of_one_configuration():
    rows = [{"test": f"t[{s}-{a}]", "method": "DTKD", "alpha": a, "seed": s, "best_acc": acc,
             "last_acc": acc - 1}
            for s, (a, acc) in enumerate([(1.0, 80.0), (1.0, 82.0), (3.0, 90.0)])]
    summary = seed_summary(rows, ["alpha"])
    assert "| DTKD | 1.00 | 81.00 ± 1.41 | 80.00 ± 1.41 | 2 |" in summary
    assert "3.00" not in summary  # one seed only: nothing to summarise
    assert to_markdown(rows, ["alpha"]).splitlines()[0] == "| test | method | alpha | seed | best_acc | last_acc |"


def test_teacher_key_ignores_logging_and_threads_but_not_training():
    base = load_config("fashion_mnist/teacher.yaml")
    same = load_config("fashion_mnist/teacher.yaml", ["LOG.PREFIX", "/elsewhere", "NUM_THREADS", "1",
                                                      "EXPERIMENT.NAME", "x", "DTKD.ALPHA", "9"])
    assert config_digest(base) == config_digest(same)
    for key, value in (("SOLVER.EPOCHS", "7"), ("DATASET.SUBSET", "100"), ("SEED", "3"),
                       ("DISTILLER.STUDENT", "resnet32")):
        assert config_digest(load_config("fashion_mnist/teacher.yaml", [key, value])) != config_digest(base), key


def test_cached_teacher_retrains_an_unfinished_entry_and_refuses_a_student_config(tiny_data, tmp_path):
    overrides = ["DATASET.ROOT", str(tiny_data), "DISTILLER.STUDENT", "resnet8", "NUM_THREADS", "1"]
    for key, value in TINY.items():
        overrides += [key, str(value)]
    cfg = load_config("fashion_mnist/teacher.yaml", overrides)
    first = cached_teacher(cfg, cache_root=tmp_path, log=None)
    again = cached_teacher(cfg, cache_root=tmp_path, log=None)
    assert first.trained and not again.trained and again.path == first.path
    assert again.best_acc == first.best_acc
    (first.path.parent / "teacher.json").unlink()  # as if training had been killed
    assert cached_teacher(cfg, cache_root=tmp_path, log=None).trained
    assert len((tmp_path / TRAINED_LOG).read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="DISTILLER.TYPE NONE"):
        cached_teacher(load_config("fashion_mnist/kd.yaml"), cache_root=tmp_path)


def test_distill_errors_name_the_argument(tmp_path):
    from dtkd.config import ConfigError
    from dtkd.testing import Sweep
    from dtkd.testing.sweep import as_override_list
    sweep = Sweep(tmp_path)
    with pytest.raises(ConfigError, match="method: unknown method 'DTDK'.*DTKD"):
        sweep.distill("DTDK")
    with pytest.raises(ConfigError, match="unknown config key 'DTKD.ALPA'"):
        sweep.distill("DTKD", {"DTKD.ALPA": 1.0})
    with pytest.raises(ValueError, match="overrides: expected a dict"):
        as_override_list(["SOLVER.EPOCHS"])
    assert as_override_list({"SOLVER.LR_DECAY_STAGES": [3], "DTKD.ALPHA": 0.5, "X": True}) == \
        ["SOLVER.LR_DECAY_STAGES", "[3]", "DTKD.ALPHA", "0.5", "X", "true"]
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
