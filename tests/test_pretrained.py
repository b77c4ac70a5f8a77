"""The teacher shipped as package data (dtkd.pretrained): it loads, its record says how it was
made, its accuracy on a test subset is what the record says, and the demo distils from it
without training a teacher."""
import json
from pathlib import Path

import numpy as np
import pytest

from dtkd import demo, models, pretrained
from dtkd.config import load_config

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL = (REAL_FMNIST / "t10k-images-idx3-ubyte.gz").is_file()
NEED_REAL = "Fashion-MNIST files not found (apt-get install dataset-fashion-mnist); CI installs them"


def test_the_demo_teacher_is_shipped_with_its_record():
    assert pretrained.DEMO_TEACHER in pretrained.available()
    t = pretrained.shipped_teacher()
    assert t.path.suffix == ".npz" and t.path.parent == pretrained.DIRECTORY
    assert 0.5e6 < t.path.stat().st_size < 2e6, "resnet20 weights are about 1 MB"
    p = t.provenance
    # how it was made: the project's own command on the shipped teacher config
    assert "python -m dtkd train --cfg fashion_mnist/teacher.yaml" in p["command"]
    assert p["config_name"] == "fashion_mnist/teacher.yaml" and p["config_matches_shipped"]
    shipped = load_config("fashion_mnist/teacher.yaml")
    assert p["model"] == shipped.DISTILLER.STUDENT == "resnet20"
    assert p["seed"] == shipped.SEED and p["config"]["SEED"] == p["seed"]
    assert p["epochs"] == shipped.SOLVER.EPOCHS == len(p["test_acc_per_epoch"])
    assert p["best_acc"] == max(p["test_acc_per_epoch"]) == t.best_acc
    assert p["check"]["n"] == int(p["check"]["overrides"][1])
    assert p["sha256"] == pretrained.sha256(t.path)


def test_the_shipped_teacher_loads_into_its_backbone():
    t = pretrained.shipped_teacher()
    model = models.create(t.model, num_classes=10, in_channels=1, seed=0)
    model.load(t.path)  # strict: every key and shape matches
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    logits = model(x) if callable(model) else model.forward(x)
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


@pytest.mark.skipif(not HAVE_REAL, reason=NEED_REAL)
def test_the_shipped_teacher_scores_what_its_record_says():
    t = pretrained.shipped_teacher()
    result = pretrained.check_accuracy(t, root=REAL_FMNIST)
    check = t.provenance["check"]
    assert result["n"] == check["n"]
    # the same images and weights; 3 of 1000 predictions may flip on another SIMD path (near-ties)
    assert abs(result["top1"] - check["top1"]) <= 0.3, (result["top1"], check["top1"])


def test_a_damaged_or_unknown_shipped_teacher_is_refused(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="name: no shipped teacher 'nope'"):
        pretrained.shipped_teacher("nope")
    with pytest.raises(ValueError, match="name:"):
        pretrained.shipped_teacher("../configs")
    src = pretrained.shipped_teacher()
    monkeypatch.setattr(pretrained, "DIRECTORY", tmp_path)
    (tmp_path / f"{src.name}.json").write_text(json.dumps(src.provenance))
    damaged = bytearray(src.path.read_bytes())
    damaged[-10] ^= 0xFF
    (tmp_path / f"{src.name}.npz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="SHA-256"):
        pretrained.shipped_teacher(src.name)


def test_demo_quick_uses_the_shipped_teacher_without_training(tmp_path, monkeypatch, capsys):
    from test_data import make_fmnist
    monkeypatch.delenv("DTKD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "fmnist"
    make_fmnist(data, "train", n=192, seed=1)
    make_fmnist(data, "test", n=96, seed=2)

    def no_training(*a, **k):
        raise AssertionError("the demo trained a teacher")

    monkeypatch.setattr(demo, "train_teacher", no_training)
    out = tmp_path / "q"
    assert demo.main(["--quick", "--out", str(out), "--data", str(data), "--no-plot",
                      "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    t = pretrained.shipped_teacher()
    assert "shipped with dtkd" in printed and printed.count("epoch 1: lr ") == 3  # students only
    assert not (out / "teacher").exists()
    for method in ("kd", "dtkd"):
        cfg = (out / method / "config.yaml").read_text()
        assert str(t.path) in cfg, f"{method} did not distil from the shipped teacher"
    assert f"{t.best_acc:.2f}" in (out / "results.txt").read_text()


def test_the_demo_budget_is_the_one_the_reproduction_measured():
    import importlib.util
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"
    if not script.is_file():
        pytest.skip("needs the repository's benchmarks/reproduce.py (a source checkout)")
    spec = importlib.util.spec_from_file_location("reproduce", script)
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    budget = reproduce.PAIR_STUDENT
    assert demo.DEFAULTS == {"epochs": budget["SOLVER.EPOCHS"], "subset": budget["DATASET.SUBSET"],
                             "test_subset": budget["DATASET.TEST.SUBSET"]}
    assert budget["SOLVER.LR_DECAY_STAGES"] == [demo.DEFAULTS["epochs"] - 1]
    args = demo.build_parser().parse_args([])
    for key, value in demo.DEFAULTS.items():
        setattr(args, key, value)
    overrides = demo._overrides(args)
    pairs = dict(zip(overrides[0::2], overrides[1::2]))
    assert pairs["SOLVER.LR_DECAY_STAGES"] == str(budget["SOLVER.LR_DECAY_STAGES"])
