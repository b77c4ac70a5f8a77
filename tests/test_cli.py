"""Command line: every subcommand's --help works without the optional pieces, errors are one
clear line with exit status 2, and (once data, models and distillers are present) a tiny
``train`` run through the CLI learns."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import dtkd
from dtkd.cli import main

# The subprocess must import the dtkd this process imported (an installed one, or a source tree
# with the extension built in place), and must not start in a source tree whose dtkd/ has no
# compiled extension: `python -m` puts the working directory first on sys.path.
PACKAGE_PARENT = Path(dtkd.__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT))
    return subprocess.run([sys.executable, "-m", "dtkd", *args], capture_output=True, text=True,
                          cwd=cwd or tempfile.gettempdir(), env=env, timeout=600)


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["demo"], ["models"], ["configs"]])
def test_help_works_for_every_subcommand(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m dtkd" in result.stdout


def test_configs_lists_the_shipped_configs(capsys):
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.split()
    assert "cifar100/dtkd/res32x4_res8x4.yaml" in listed and "fashion_mnist/dtkd.yaml" in listed


def test_configs_names_the_distillers_of_the_registry(capsys):
    from dtkd import distill
    assert main(["configs"]) == 0
    err = capsys.readouterr().err
    assert f"DISTILLER.TYPE: {', '.join(distill.names())}" in err and "CTKD" in err


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
    # the config's student is resnet20; the checkpoint holds a resnet8: say so, name --model
    wrong = run_cli("eval", "--cfg", "fashion_mnist/teacher.yaml", "--checkpoint",
                    str(out / "model_best.npz"), "--no-progress", "DATASET.TEST.SUBSET", "500",
                    cwd=tmp_path)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "holds a resnet8, not a resnet20" in wrong.stderr and "--model resnet8" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    named = run_cli("eval", "--cfg", "fashion_mnist/teacher.yaml", "--checkpoint",
                    str(out / "model_best.npz"), "--model", "resnet8", "--json", "--no-progress",
                    "DATASET.TEST.SUBSET", "500", cwd=tmp_path)
    assert named.returncode == 0 and json.loads(named.stdout)["model"] == "resnet8"


def test_eval_of_a_checkpoint_no_backbone_fits_lists_the_mismatch(tmp_path):
    import numpy as np
    from dtkd import io as dtkd_io, models
    state = models.create("resnet8", num_classes=10, in_channels=1).state_dict()
    state["fc.weight"] = np.zeros((10, 7), np.float32)  # fits nothing
    dtkd_io.save(tmp_path / "odd.npz", {"model": state})
    result = run_cli("eval", "--cfg", "fashion_mnist/teacher.yaml", "--checkpoint",
                     str(tmp_path / "odd.npz"), "--model", "resnet8", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "matches no dtkd backbone: reshaped 1 (fc.weight)" in result.stderr


def test_missing_data_error_names_the_cli_way_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DTKD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = run_cli("train", "--cfg", "fashion_mnist/vanilla.yaml",
                     "DATASET.TYPE", "cifar100", "DATASET.ROOT", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "DATASET.DOWNLOAD True" in result.stderr and "DATASET.ROOT" in result.stderr


def test_dataset_download_key_reaches_the_loader(monkeypatch):
    from dtkd import data
    from dtkd.config import load_config
    from dtkd.engine.build import build_dataset
    seen = {}

    def fake_load(name, split, root=None, download=False, pad_to=None):
        seen.update(name=name, download=download)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(data, "load_dataset", fake_load)
    cfg = load_config("fashion_mnist/vanilla.yaml", ["DATASET.DOWNLOAD", "True"])
    with pytest.raises(FileNotFoundError):
        build_dataset(cfg, "train")
    assert seen == {"name": "fashion_mnist", "download": True}


def test_missing_teacher_error_says_how_to_get_one(tmp_path):
    result = run_cli("train", "--cfg", "fashion_mnist/dtkd.yaml", "DATASET.SUBSET", "64", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not found" in result.stderr
    assert "python -m dtkd train --cfg fashion_mnist/teacher.yaml" in result.stderr
