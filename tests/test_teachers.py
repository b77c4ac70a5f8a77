"""Finding teachers as mdistiller lays them out, config paths that mean the same files from any
directory, errors that say how to get a teacher, and the end-to-end demonstration: a teacher
saved by PyTorch in mdistiller's layout distills a student through the CLI."""
import json
import tarfile

import numpy as np
import pytest

import dtkd
from dtkd import io as dtkd_io
from dtkd.config import load_config
from dtkd.engine.build import teacher_checkpoint
from dtkd.io import CheckpointError


def write_yaml(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "exp.yaml"
    path.write_text(text)
    return path


def put_teacher(teachers_dir, name="resnet8"):
    """A checkpoint at <teachers_dir>/<name>_vanilla/ckpt_epoch_240.pth (mdistiller's layout)."""
    path = dtkd_io.teachers.teacher_checkpoint_in(teachers_dir, name)
    model = dtkd.models.create(name, num_classes=10, in_channels=1)
    dtkd_io.save_pth(path, model, extra={"epoch": 240})
    return path


# ----------------------------------------------------------------------------------------------
# Relative paths in configs

def test_paths_in_a_yaml_file_resolve_against_its_folder_from_any_cwd(tmp_path, monkeypatch):
    exp = tmp_path / "experiments"
    yaml_path = write_yaml(exp, "DISTILLER:\n  TEACHER_CHECKPOINT: teachers/t.pth\n"
                                "  TEACHER_DIR: ../zoo\nDATASET:\n  ROOT: ./data\n")
    (exp / "teachers").mkdir()
    dtkd_io.save_pth(exp / "teachers" / "t.pth", {"w": np.ones(2, np.float32)})
    for cwd in (tmp_path, exp / "teachers"):
        monkeypatch.chdir(cwd)
        cfg = load_config(str(yaml_path))
        assert cfg.DISTILLER.TEACHER_CHECKPOINT == str(exp / "teachers" / "t.pth")
        assert cfg.DISTILLER.TEACHER_DIR == str(tmp_path / "zoo")
        assert cfg.DATASET.ROOT == str(exp / "data")
        assert teacher_checkpoint(cfg) == exp / "teachers" / "t.pth"
    # a config given by a relative path: its folder is still the base
    monkeypatch.chdir(tmp_path)
    assert load_config("experiments/exp.yaml").DATASET.ROOT == str(exp / "data")


def test_command_line_paths_resolve_against_the_cwd_and_are_pinned(tmp_path, monkeypatch):
    yaml_path = write_yaml(tmp_path / "exp", "DISTILLER:\n  TEACHER_CHECKPOINT: in_yaml.pth\n")
    for cwd in (tmp_path / "a", tmp_path / "b"):
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        cfg = load_config(str(yaml_path), ["DISTILLER.TEACHER_CHECKPOINT", "runs/best.npz",
                                           "DISTILLER.TEACHER_DIR", "~/zoo"])
        assert cfg.DISTILLER.TEACHER_CHECKPOINT == str(cwd / "runs" / "best.npz")
        assert cfg.DISTILLER.TEACHER_DIR.startswith("/") and cfg.DISTILLER.TEACHER_DIR.endswith("/zoo")
        assert "~" not in cfg.DISTILLER.TEACHER_DIR
        # pinned: a dump reloaded elsewhere (the run's config.yaml) names the same files
        dumped = write_yaml(tmp_path / "elsewhere", cfg.dump())
        assert load_config(str(dumped)).DISTILLER.TEACHER_CHECKPOINT == str(cwd / "runs" / "best.npz")


def test_shipped_configs_resolve_against_the_cwd_where_runs_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("fashion_mnist/dtkd.yaml")
    assert cfg.DISTILLER.TEACHER_CHECKPOINT == str(tmp_path / "output" / "fashion_mnist" /
                                                   "teacher_resnet20" / "model_best.npz")
    # empty stays empty (= not set), and a Python assignment is kept as given
    assert load_config("cifar100/dtkd/res32x4_res8x4.yaml").DISTILLER.TEACHER_CHECKPOINT == ""
    cfg.DISTILLER.TEACHER_CHECKPOINT = "t.pth"
    assert cfg.DISTILLER.TEACHER_CHECKPOINT == "t.pth"


# ----------------------------------------------------------------------------------------------
# The teachers directory

def test_teacher_is_found_in_the_documented_order(tmp_path, monkeypatch):
    config_dir, env_dir = tmp_path / "from_config", tmp_path / "from_env"
    cwd = tmp_path / "work"
    default_dir = cwd / "download_ckpts" / "cifar_teachers"
    paths = {d: put_teacher(d) for d in (config_dir, env_dir, default_dir)}
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("DTKD_TEACHERS", "../from_env")  # relative to the cwd, made absolute
    cfg = load_config(None, ["DISTILLER.TYPE", "KD", "DISTILLER.TEACHER", "resnet8",
                             "DISTILLER.TEACHER_DIR", str(config_dir)])
    assert teacher_checkpoint(cfg) == paths[config_dir]
    paths[config_dir].unlink()
    assert teacher_checkpoint(cfg) == paths[env_dir]
    monkeypatch.delenv("DTKD_TEACHERS")
    assert teacher_checkpoint(cfg) == paths[default_dir]
    # an explicit checkpoint wins over the search
    cfg.DISTILLER.TEACHER_CHECKPOINT = str(paths[env_dir])
    assert teacher_checkpoint(cfg) == paths[env_dir]


def test_no_teacher_error_lists_where_it_looked_and_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DTKD_TEACHERS", str(tmp_path / "env_teachers"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = load_config("cifar100/dtkd/res32x4_res8x4.yaml")
    with pytest.raises(CheckpointError) as err:
        teacher_checkpoint(cfg)
    message = str(err.value)
    assert "no checkpoint for teacher 'resnet32x4'" in message
    assert f"{tmp_path}/env_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth ($DTKD_TEACHERS)" in message
    assert f"{tmp_path}/download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth" in message
    assert "cifar_teachers.tar" in message and "mdistiller/releases" in message
    assert "DISTILLER.TYPE NONE DISTILLER.STUDENT resnet32x4" in message
    # the Fashion-MNIST configs point at their own teacher run, and at the demo's cached teacher
    cfg = load_config("fashion_mnist/dtkd.yaml")
    with pytest.raises(CheckpointError) as err:
        teacher_checkpoint(cfg)
    message = str(err.value)
    assert message.startswith(f"DISTILLER.TEACHER_CHECKPOINT: {tmp_path}/output/fashion_mnist/")
    assert "python -m dtkd train --cfg fashion_mnist/teacher.yaml" in message
    assert "python -m dtkd demo" in message
    demo = tmp_path / "cache" / "dtkd" / "demo" / "teacher-resnet20-0123456789abcdef.npz"
    demo.parent.mkdir(parents=True)
    demo.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"demo's cached teacher: DISTILLER.TEACHER_CHECKPOINT {demo}"):
        teacher_checkpoint(cfg)
    # a teacher in the teachers directory is pointed out when the explicit path is missing
    found = put_teacher(tmp_path / "env_teachers", "resnet20")
    with pytest.raises(CheckpointError, match=f"{found} exists: set DISTILLER.TEACHER_CHECKPOINT ''"):
        teacher_checkpoint(cfg)


def test_unextracted_teachers_tar_is_pointed_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DTKD_TEACHERS", raising=False)
    ckpt = put_teacher(tmp_path / "staging", "resnet32x4")
    (tmp_path / "download_ckpts").mkdir()
    with tarfile.open(tmp_path / "download_ckpts" / "cifar_teachers.tar", "w") as tar:
        tar.add(ckpt, arcname="cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth")
    cfg = load_config("cifar100/dtkd/res32x4_res8x4.yaml")
    with pytest.raises(CheckpointError) as err:
        teacher_checkpoint(cfg)
    assert (f"download_ckpts/cifar_teachers.tar: a tar archive of mdistiller's teachers "
            "(resnet32x4), not a checkpoint: extract it first") in str(err.value)
    with tarfile.open(tmp_path / "download_ckpts" / "cifar_teachers.tar") as tar:
        tar.extractall(tmp_path / "download_ckpts")
    assert teacher_checkpoint(cfg) == (tmp_path / "download_ckpts" / "cifar_teachers" /
                                       "resnet32x4_vanilla" / "ckpt_epoch_240.pth")


# ----------------------------------------------------------------------------------------------
# The demonstration: a PyTorch teacher in mdistiller's layout distills a student via the CLI

def test_pytorch_teacher_in_mdistiller_layout_distills_through_the_cli(tmp_path):
    torch = pytest.importorskip("torch", reason="saving the teacher with torch.save needs PyTorch")
    from test_cli import FASHION_MNIST, run_cli
    from test_models import torch_resnet
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST files not found (install dataset-fashion-mnist)")
    # A Fashion-MNIST-shaped resnet20 (1 channel, 10 classes) written by PyTorch, saved as
    # mdistiller saves teachers: {"model": state_dict, ...} at <name>_vanilla/ckpt_epoch_240.pth
    torch.manual_seed(0)
    net = torch_resnet(torch, 20, (16, 16, 32, 64), 10, torch.relu)
    net.conv1 = torch.nn.Conv2d(1, 16, 3, 1, 1, bias=False)
    teachers = tmp_path / "teachers"
    ckpt = teachers / "resnet20_vanilla" / "ckpt_epoch_240.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": net.state_dict(), "epoch": 240, "best_acc": 0.0}, ckpt)
    out = tmp_path / "run"
    work = tmp_path / "somewhere_else"
    work.mkdir()
    result = run_cli("train", "--cfg", "fashion_mnist/dtkd.yaml", "--out", str(out), "--no-progress",
                     "DISTILLER.TEACHER", "resnet20", "DISTILLER.TEACHER_CHECKPOINT", "",
                     "DISTILLER.TEACHER_DIR", str(teachers), "SOLVER.EPOCHS", "1",
                     "DATASET.SUBSET", "128", "DATASET.TEST.SUBSET", "128", "NUM_THREADS", "1",
                     cwd=work)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and np.isfinite(record["train_loss"]) and record["train_loss"] > 0
    assert 0 < record["t_teacher_mean"] and 0 < record["t_student_mean"]  # DTKD ran on the teacher
    assert f"TEACHER_CHECKPOINT: {ckpt}" in (out / "config.yaml").read_text()
