"""Command line: every subcommand's --help works without the optional pieces, errors are one
clear line with exit status 2, and (once data, models and distillers are present) a tiny
``train`` run through the CLI learns."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtkd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "dtkd", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=600)


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["demo"], ["models"], ["configs"]])
def test_help_works_for_every_subcommand(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m dtkd" in result.stdout


def test_configs_lists_the_shipped_configs(capsys):
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.split()
    assert "cifar100/dtkd/res32x4_res8x4.yaml" in listed and "fashion_mnist/dtkd.yaml" in listed


@pytest.mark.parametrize("argv, words", [
    (["train", "--cfg", "fashion_mnist/dtkd.yaml", "SOLVER.EPOCH", "3"], ["unknown config key", "SOLVER.EPOCHS"]),
    (["train", "--cfg", "fashion_mnist/dtkd.yaml", "SOLVER.EPOCHS", "2.5"], ["SOLVER.EPOCHS", "integer"]),
    (["train", "--cfg", "fashion_mnist/dtkd.yaml", "SOLVER.EPOCHS", "3", "--resume"], ["--resume", "before"]),
    (["train", "--cfg", "no/such.yaml"], ["config file not found", "no/such.yaml"]),
    (["eval", "--cfg", "fashion_mnist/dtkd.yaml", "--checkpoint", "x.npz", "SOLVER.LR"], ["KEY VALUE pairs"]),
])
def test_config_errors_are_one_line_with_status_2(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dtkd {argv[0]}: error: ") and "Traceback" not in err
    for word in words:
        assert word in err


def test_missing_required_cfg_is_a_usage_error():
    result = run_cli("train")
    assert result.returncode == 2 and "--cfg" in result.stderr


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def test_tiny_train_run_through_the_cli_beats_chance(tmp_path):
    for module in ("dtkd.data", "dtkd.models", "dtkd.distill", "dtkd.optim"):
        pytest.importorskip(module, reason=f"{module} is not in this build yet")
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists() and not os.environ.get("DTKD_DATA"):
        pytest.skip("Fashion-MNIST files not found (install dataset-fashion-mnist or set DTKD_DATA)")
    out = tmp_path / "run"
    result = run_cli("train", "--cfg", "fashion_mnist/teacher.yaml", "--out", str(out), "--no-progress",
                     "DISTILLER.STUDENT", "resnet8", "SOLVER.EPOCHS", "2", "SOLVER.LR_DECAY_STAGES", "[]",
                     "DATASET.SUBSET", "1024", "DATASET.TEST.SUBSET", "500", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert max(r["test_acc"] for r in records) > 25.0  # chance is 10% on 10 classes
    evaluated = run_cli("eval", "--cfg", "fashion_mnist/teacher.yaml", "--checkpoint",
                        str(out / "model_best.npz"), "--json", "--no-progress",
                        "DISTILLER.STUDENT", "resnet8", "DATASET.TEST.SUBSET", "500", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["top1"] == pytest.approx(max(r["test_acc"] for r in records))
