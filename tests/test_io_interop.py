"""PyTorch checkpoints and safetensors without torch (dtkd.io): files torch.save writes (zip and
legacy format) load here with their values, dtypes, strides and offsets; files written here load
in torch (weights_only=True) and give a torch model the same outputs; crafted pickles are refused
without running; every error names the file and says what is wrong."""
import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

import dtkd
import dtkd.cli
from dtkd import io as dtkd_io
from dtkd.io import CheckpointError

LEGACY = dict(_use_new_zipfile_serialization=False)
FORMATS = {"zip": {}, "legacy": LEGACY}


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch", reason="writing files with torch.save needs PyTorch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are tiny: threads only add start-up and contention
    yield torch
    torch.set_num_threads(threads)


def torch_resnet8(torch, num_classes=10, in_channels=1):
    """mdistiller's resnet8 in PyTorch (tests/test_models.py), with ``in_channels`` inputs and
    BatchNorm statistics and affine parameters moved away from their initial values."""
    from test_models import torch_resnet
    net = torch_resnet(torch, 8, (16, 16, 32, 64), num_classes, torch.relu)
    net.conv1 = torch.nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
        net.train()
        net(torch.randn(8, in_channels, 32, 32, generator=gen))  # running stats move
    return net.eval()


def dtkd_resnet8(seed=1):
    return dtkd.models.create("resnet8", num_classes=10, in_channels=1, seed=seed)


def batch(seed=0, n=4):
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32)).astype(np.float32)


def eval_logits(model, x):
    model.eval()
    with dtkd.nn.no_grad():
        return model(x)


# ----------------------------------------------------------------------------------------------
# torch.save -> dtkd

@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_torch_saved_resnet8_state_dict_loads_with_equal_values_and_outputs(torch, tmp_path, fmt):
    net = torch_resnet8(torch)
    path = tmp_path / "resnet8.pth"
    torch.save(net.state_dict(), path, **FORMATS[fmt])
    state = dtkd_io.load_checkpoint(path)
    assert list(state) == list(net.state_dict())
    for k, v in net.state_dict().items():
        assert state[k].dtype == v.numpy().dtype and state[k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(state[k], v.numpy(), err_msg=k)
    model = dtkd_resnet8()
    model.load(path)
    x = batch()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(eval_logits(model, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_mdistiller_layout_with_module_prefix_and_extras_loads(torch, tmp_path, fmt):
    net = torch_resnet8(torch)
    # as an nn.DataParallel-wrapped model saves it: every key under module.
    parallel = {f"module.{k}": v for k, v in net.state_dict().items()}
    # what SGD(momentum=0.9).state_dict() holds (built by hand: torch.optim's first use is slow)
    params = list(net.parameters())
    optimizer = {"state": {i: {"momentum_buffer": torch.full_like(p, 0.5)} for i, p in enumerate(params)},
                 "param_groups": [{"lr": 0.05, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4,
                                   "nesterov": False, "maximize": False, "foreach": None,
                                   "differentiable": False, "fused": None,
                                   "params": list(range(len(params)))}]}
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": parallel, "epoch": 240, "best_acc": torch.tensor(71.5),
                "optimizer": optimizer}, path, **FORMATS[fmt])
    tree = dtkd_io.load_pth(path)
    assert tree["epoch"] == 240 and float(tree["best_acc"]) == 71.5
    assert all(k.startswith("module.") for k in tree["model"])
    np.testing.assert_array_equal(tree["optimizer"]["state"][0]["momentum_buffer"],
                                  np.full(params[0].shape, 0.5, np.float32))
    assert tree["optimizer"]["param_groups"][0]["foreach"] is None
    state = dtkd_io.load_checkpoint(path)
    assert list(state) == list(net.state_dict())
    model = dtkd_resnet8()
    model.load(path)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v.numpy(), err_msg=k)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_strides_offsets_shared_storages_and_dtypes_are_rebuilt(torch, tmp_path, fmt):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.t(),                      # non-contiguous strides
        "column": base[:, 3],                        # storage offset + stride
        "row": base[2],                              # storage offset, shares the storage
        "scalar": torch.tensor(7),                   # 0-d int64 (num_batches_tracked)
        "empty": torch.zeros(0, 3),
        "half": torch.linspace(-2, 2, 5).half(),
        "double": torch.linspace(-2, 2, 5).double(),
        "bfloat16": torch.tensor([1.5, -2.25, 3.0e38]).bfloat16(),
        "int8": torch.arange(-3, 3, dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "uint16": torch.arange(5).to(torch.uint16),  # written with _rebuild_tensor_v3
        "parameter": torch.nn.Parameter(torch.ones(2, 2)),
    }
    path = tmp_path / "mixed.pth"
    torch.save(tensors, path, **FORMATS[fmt])
    loaded = dtkd_io.load_pth(path)
    for name, t in tensors.items():
        expected = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
        assert loaded[name].dtype == expected.dtype and loaded[name].shape == expected.shape, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)
    # views of one storage come back as separate, writable arrays
    loaded["row"][0] = -1
    assert loaded["transposed"][0, 2] == 12 and loaded["column"][2] == 15
    assert all(a.flags.writeable for a in loaded.values())


def test_unsupported_dtypes_are_named(torch, tmp_path):
    path = tmp_path / "float8.pth"
    torch.save({"w": torch.zeros(3).to(torch.float8_e4m3fn)}, path)
    with pytest.raises(CheckpointError, match=r"float8\.pth.*unsupported tensor dtype torch\.float8_e4m3fn"):
        dtkd_io.load_pth(path)


# ----------------------------------------------------------------------------------------------
# dtkd -> torch.load

def test_save_pth_loads_in_torch_weights_only_and_gives_equal_outputs(torch, tmp_path):
    model = dtkd_resnet8(seed=3)
    model.train()
    model(batch(5, n=8))  # moves the BatchNorm running statistics and num_batches_tracked
    path = tmp_path / "student.pth"
    dtkd_io.save_pth(path, model, extra={"epoch": 240, "best_acc": 71.25, "arch": "resnet8"})
    for mmap in (False, True):
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert (loaded["epoch"], loaded["best_acc"], loaded["arch"]) == (240, 71.25, "resnet8")
        for k, v in model.state_dict().items():
            assert loaded["model"][k].dtype == torch.from_numpy(v).dtype, k
            np.testing.assert_array_equal(loaded["model"][k].numpy(), v, err_msg=k)
    net = torch_resnet8(torch)
    net.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    x = batch(6)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(eval_logits(model, x), expected, rtol=1e-4, atol=1e-4)


def test_module_save_and_load_round_trip_in_every_format(tmp_path):
    model = dtkd_resnet8(seed=4)
    model.train()
    model(batch(1, n=8))
    x = batch(2)
    expected = eval_logits(model, x)
    for name in ("m.pth", "m.pt", "m.safetensors", "m.npz"):
        model.save(tmp_path / name)
        fresh = dtkd_resnet8(seed=9)
        fresh.load(tmp_path / name)
        np.testing.assert_array_equal(eval_logits(fresh, x), expected, err_msg=name)
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(fresh.state_dict()[k], v, err_msg=f"{name}: {k}")
    with pytest.raises(ValueError, match="path: expected a .pth"):
        model.save(tmp_path / "m.bin")


def test_save_pth_without_torch_reads_back_with_its_structure(tmp_path):
    state = collections.OrderedDict([("w", np.arange(6, dtype=np.float32).reshape(2, 3).T),
                                     ("n", np.array(3)), ("b", np.array([True, False]))])
    extra = {"epoch": 7, "acc": 0.5, "big": 2**70, "neg": -(2**40), "none": None,
             "nested": {"lrs": [0.1, 0.01], "pair": (1, "a")}}
    dtkd_io.save_pth(tmp_path / "a.pth", state, extra=extra)
    tree = dtkd_io.load_pth(tmp_path / "a.pth")
    assert isinstance(tree["model"], collections.OrderedDict) and list(tree["model"]) == list(state)
    for k, v in state.items():
        assert tree["model"][k].dtype == v.dtype and tree["model"][k].shape == v.shape
        np.testing.assert_array_equal(tree["model"][k], v)
    assert {k: tree[k] for k in extra} == extra
    dtkd_io.save_pth(tmp_path / "bare.pth", state, key=None)
    assert list(dtkd_io.load_pth(tmp_path / "bare.pth")) == list(state)
    with pytest.raises(TypeError, match=r"obj\['model'\]\['c'\]: cannot save dtype complex64"):
        dtkd_io.save_pth(tmp_path / "c.pth", {"c": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError, match="cannot save a set"):
        dtkd_io.save_pth(tmp_path / "s.pth", state, extra={"s": {1, 2}})
    assert not (tmp_path / "c.pth").exists() and not (tmp_path / "s.pth").exists()


def test_save_pth_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "t.pth"
    dtkd_io.save_pth(path, {"w": np.ones(3, np.float32)})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        dtkd_io.save_pth(path, {"w": np.zeros(3, np.float32)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.pth"]  # no temporary file left


def test_big_endian_zip_checkpoints_are_read(tmp_path):
    # the zip format records the writer's byte order; rewrite a file as a big-endian one
    dtkd_io.save_pth(tmp_path / "le.pth", {"w": np.arange(4, dtype=np.float32),
                                           "n": np.array(258, dtype=np.int64)}, key=None)
    with zipfile.ZipFile(tmp_path / "le.pth") as src, \
            zipfile.ZipFile(tmp_path / "be.pth", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("byteorder"):
                data = b"big"
            elif info.filename.endswith("data/0"):
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            elif info.filename.endswith("data/1"):
                data = np.frombuffer(data, "<i8").astype(">i8").tobytes()
            dst.writestr(info.filename, data)
    loaded = dtkd_io.load_pth(tmp_path / "be.pth")
    np.testing.assert_array_equal(loaded["w"], np.arange(4, dtype=np.float32))
    assert loaded["n"] == 258 and loaded["w"].dtype.isnative


# ----------------------------------------------------------------------------------------------
# Prefixes and partial state_dicts

def _state(prefix=""):
    model = dtkd_resnet8(seed=5)
    return model, collections.OrderedDict((prefix + k, v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("prefix", ["", "module.", "module.student.", "module.teacher.", "student."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    source, state = _state(prefix)
    dtkd_io.save_pth(tmp_path / "p.pth", state)
    assert list(dtkd_io.load_checkpoint(tmp_path / "p.pth")) == list(source.state_dict())
    model = dtkd_resnet8(seed=6)
    model.load(tmp_path / "p.pth")
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


def test_distiller_checkpoint_with_both_networks_gives_the_student_unless_asked(tmp_path):
    student = dtkd_resnet8(seed=1)
    teacher = dtkd.models.create("resnet14", num_classes=10, in_channels=1, seed=2)
    state = collections.OrderedDict(
        [(f"module.student.{k}", v) for k, v in student.state_dict().items()]
        + [(f"module.teacher.{k}", v) for k, v in teacher.state_dict().items()])
    dtkd_io.save_pth(tmp_path / "latest.pth", state)
    assert list(dtkd_io.load_checkpoint(tmp_path / "latest.pth")) == list(student.state_dict())
    picked = dtkd_io.load_checkpoint(tmp_path / "latest.pth", prefix="module.teacher.")
    assert list(picked) == list(teacher.state_dict())
    fresh = dtkd.models.create("resnet14", num_classes=10, in_channels=1, seed=3)
    fresh.load(tmp_path / "latest.pth", prefix="module.teacher.")
    np.testing.assert_array_equal(fresh.state_dict()["fc.weight"], teacher.state_dict()["fc.weight"])
    with pytest.raises(CheckpointError, match=r"no key starts with prefix 'teacher\.'.*module\."):
        dtkd_io.load_checkpoint(tmp_path / "latest.pth", prefix="teacher.")


def test_missing_num_batches_tracked_is_tolerated(tmp_path):
    source, state = _state()
    stripped = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    dtkd_io.save_pth(tmp_path / "old.pth", stripped)
    model = dtkd_resnet8(seed=7)
    result = model.load(tmp_path / "old.pth")
    assert result.missing_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    np.testing.assert_array_equal(model.state_dict()["fc.weight"], source.state_dict()["fc.weight"])


def test_wrong_architecture_lists_the_differences_and_names_the_checkpoints_model(tmp_path):
    big = dtkd.models.create("resnet32x4", num_classes=100)
    dtkd_io.save_pth(tmp_path / "res32x4.pth", big)
    model = dtkd_resnet8()
    before = model.state_dict()
    with pytest.raises(CheckpointError) as err:
        model.load(tmp_path / "res32x4.pth")
    message = str(err.value)
    assert str(tmp_path / "res32x4.pth") in message
    assert "holds a resnet32x4 (100 classes, 3 input channels)" in message
    assert "resnet8 (10 classes, 1 input channel)" in message
    assert "conv1.weight: checkpoint (32, 3, 3, 3), model (16, 1, 3, 3)" in message
    assert "unexpected keys (150)" in message and "... and" in message
    for k, v in model.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(v, before[k])
    # same architecture, other number of classes: the shapes that differ
    dtkd_io.save_pth(tmp_path / "r8c100.pth", dtkd.models.create("resnet8", in_channels=1))
    with pytest.raises(CheckpointError, match=r"holds a resnet8 \(100 classes, 1 input channel\).*"
                                              r"fc\.weight: checkpoint \(100, 64\), model \(10, 64\)"):
        model.load(tmp_path / "r8c100.pth")
    # keys of no dtkd backbone, and a missing key
    state = model.state_dict()
    del state["fc.bias"]
    dtkd_io.save_pth(tmp_path / "partial.pth", state)
    with pytest.raises(CheckpointError, match=r"nor any dtkd backbone.*missing keys \(1\): fc\.bias"):
        model.load(tmp_path / "partial.pth")
    assert model.load(tmp_path / "partial.pth", strict=False).missing_keys == ["fc.bias"]


def test_non_finite_weights_are_refused_naming_the_file(tmp_path):
    _, state = _state()
    state["fc.weight"] = state["fc.weight"].copy()
    state["fc.weight"][0, 0] = np.nan
    dtkd_io.save_pth(tmp_path / "nan.pth", state)
    with pytest.raises(CheckpointError, match=r"nan\.pth.*fc\.weight.*NaN"):
        dtkd_resnet8().load(tmp_path / "nan.pth")


# ----------------------------------------------------------------------------------------------
# Crafted pickles

def call_pickle(module, name, argument):
    """Protocol-2 pickle bytes that call ``module.name(argument)`` when unpickled."""
    arg = argument.encode()
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + struct.pack("<I", len(arg)) + arg + b"\x85R.")


def as_torch_zip(payload):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", b"little")
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def as_legacy(payload):
    header = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950a86a20f9469cfc6c, 1001, {"protocol_version": 1001, "little_endian": True}))
    return header + payload + pickle.dumps([], protocol=2)


def nested(payload):
    """The call inside {'model': OrderedDict([('w', <call>)])}: past the first opcodes."""
    call = payload[2:-1]  # without PROTO and STOP
    return (b"\x80\x02}X\x05\x00\x00\x00modelccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w"
            + call + b"us.")


def payloads(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": call_pickle("os", "system", f"touch {marker}"),
        "posix.system": call_pickle("posix", "system", f"touch {marker}"),
        "builtins.eval": call_pickle("builtins", "eval", touch),
        "builtins.exec": call_pickle("builtins", "exec", touch),
    }


@pytest.mark.parametrize("target", ["os.system", "posix.system", "builtins.eval", "builtins.exec"])
def test_crafted_pickles_are_refused_without_running(tmp_path, target):
    marker = tmp_path / "pwned"
    payload = payloads(marker)[target]
    # the payload is live: plain pickle runs it (in a child process)
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=payload, check=True, capture_output=True)
    assert marker.exists()
    marker.unlink()
    files = {"zip.pth": as_torch_zip(payload), "nested.pth": as_torch_zip(nested(payload)),
             "legacy.pth": as_legacy(payload), "legacy_nested.pt": as_legacy(nested(payload)),
             "plain.pkl": payload}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            dtkd_io.load_checkpoint(tmp_path / name)
        assert f"refusing to load the global {target}" in str(err.value), name
        assert str(tmp_path / name) in str(err.value) and "nothing in the file was executed" in str(err.value)
        with pytest.raises(CheckpointError):
            dtkd_resnet8().load(tmp_path / name)
        assert not marker.exists(), f"{name}: the payload ran"


def test_a_pickled_model_object_is_refused_with_advice(torch, tmp_path):
    for fmt, kwargs in FORMATS.items():
        path = tmp_path / f"{fmt}.pth"
        torch.save(torch.nn.Linear(2, 2), path, **kwargs)
        with pytest.raises(CheckpointError, match="refusing to load the global torch.nn.modules.linear.Linear"
                                                  "|pickled model object"):
            dtkd_io.load_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# Damaged files and files that are not checkpoints

@pytest.fixture
def saved(tmp_path):
    model = dtkd_resnet8()
    dtkd_io.save_pth(tmp_path / "zip.pth", model)
    dtkd_io.save_safetensors(tmp_path / "model.safetensors", model)
    return tmp_path


@pytest.mark.parametrize("name", ["zip.pth", "model.safetensors"])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_files_are_reported(saved, name, keep):
    data = (saved / name).read_bytes()
    cut = saved / f"cut_{name}"
    cut.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated|corrupt") as err:
        dtkd_io.load_checkpoint(cut)
    assert str(cut) in str(err.value)


@pytest.mark.parametrize("keep", [20, 300, -40])
def test_truncated_legacy_files_are_reported(torch, tmp_path, keep):
    torch.save({"model": torch_resnet8(torch).state_dict()}, tmp_path / "l.pth", **LEGACY)
    data = (tmp_path / "l.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="truncated|corrupt|not a PyTorch checkpoint") as err:
        dtkd_io.load_checkpoint(tmp_path / "cut.pth")
    assert str(tmp_path / "cut.pth") in str(err.value)


def test_corrupt_storage_bytes_fail_the_crc(saved):
    data = bytearray((saved / "zip.pth").read_bytes())
    with zipfile.ZipFile(saved / "zip.pth") as z:
        info = z.getinfo("archive/data/0")
    data[info.header_offset + 200] ^= 0xFF  # inside the first storage's data
    (saved / "bad.pth").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.pth: truncated or corrupt.*CRC"):
        dtkd_io.load_checkpoint(saved / "bad.pth")


def test_not_checkpoints_are_named(tmp_path):
    cases = {
        "empty.pth": (b"", "empty file"),
        "text.pth": (b"hello, not a checkpoint\n" * 30, "not a checkpoint dtkd reads"),
        "other.zip": (None, "neither a PyTorch nor a dtkd checkpoint"),
        "dict.pkl": (pickle.dumps({"w": 1}, protocol=2), "not a PyTorch checkpoint"),
    }
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    for name, (data, words) in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=words) as err:
            dtkd_io.load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        dtkd_io.load_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="is a directory.*ckpt_epoch_240.pth"):
        dtkd_io.load_checkpoint(tmp_path)
    dtkd_io.save_pth(tmp_path / "no_state.pth", {"w": np.ones(2, np.float32)}, key="weights",
                     extra={"epoch": 3})
    with pytest.raises(CheckpointError, match=r"holds no state_dict.*'weights': dict of 1.*'epoch': int"):
        dtkd_io.load_checkpoint(tmp_path / "no_state.pth")


def test_unextracted_teachers_tar_says_to_extract_it_and_where(tmp_path):
    ckpt = tmp_path / "ckpt.pth"
    dtkd_io.save_pth(ckpt, {"w": np.ones(2, np.float32)})
    tar_path = tmp_path / "cifar_teachers.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in ("resnet56", "resnet32x4", "wrn_40_2"):
            tar.add(ckpt, arcname=f"cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth")
    with pytest.raises(CheckpointError) as err:
        dtkd_io.load_checkpoint(tar_path)
    message = str(err.value)
    assert message.startswith(f"{tar_path}: a tar archive of mdistiller's teachers (resnet32x4, resnet56, wrn_40_2)")
    assert f"mkdir -p download_ckpts && tar xf {tar_path} -C download_ckpts" in message
    assert "download_ckpts/cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth" in message
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as tar:
        tar.add(ckpt, arcname="run/best.pth")
    with pytest.raises(CheckpointError, match=r"a tar archive, not a checkpoint \(it holds run/best\.pth\): extract it"):
        dtkd_resnet8().load(tmp_path / "other.tar.gz")


def test_pth_tar_suffix_is_read_by_content(tmp_path):
    model = dtkd_resnet8()
    dtkd_io.save_pth(tmp_path / "checkpoint.pth.tar", model)  # a common name for torch files
    assert list(dtkd_io.load_checkpoint(tmp_path / "checkpoint.pth.tar")) == list(model.state_dict())


# ----------------------------------------------------------------------------------------------
# safetensors

def test_safetensors_round_trip_keeps_dtypes_shapes_order_and_metadata(tmp_path):
    state = collections.OrderedDict([
        ("b.weight", np.arange(6, dtype=np.float32).reshape(2, 3)), ("a.count", np.array(4)),
        ("z.half", np.linspace(-1, 1, 5).astype(np.float16)), ("m.mask", np.array([True, False])),
        ("e.empty", np.zeros((0, 4), np.float32)), ("d.double", np.arange(3.0)),
        ("t.transposed", np.arange(6, dtype=np.int32).reshape(2, 3).T)])
    path = tmp_path / "s.safetensors"
    dtkd_io.save_safetensors(path, state, metadata={"format": "pt", "arch": "resnet8"})
    loaded = dtkd_io.load_safetensors(path)
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
        np.testing.assert_array_equal(loaded[k], v)
    assert dtkd_io.safetensors_metadata(path) == {"format": "pt", "arch": "resnet8"}
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    assert (8 + header_len) % 8 == 0  # the buffer starts aligned
    with pytest.raises(TypeError, match="metadata"):
        dtkd_io.save_safetensors(path, state, metadata={"epoch": 3})


def test_safetensors_corrupt_headers_are_reported(tmp_path):
    path = tmp_path / "s.safetensors"
    dtkd_io.save_safetensors(path, {"w": np.ones((2, 2), np.float32), "v": np.ones(3, np.float32)})
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + header_len]
    bad = {
        "overlap": header.replace(b"[16,28]", b"[12,24]"),
        "dtype": header.replace(b'"F32"', b'"F8_E4M3"', 1),
        "shape": header.replace(b"[2,2]", b"[2,3]"),
    }
    for name, new_header in bad.items():
        assert new_header != header, name
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(raw[:8] + new_header + raw[8 + header_len:])
        with pytest.raises(CheckpointError, match="corrupt|does not read|does not fit") as err:
            dtkd_io.load_safetensors(p)
        assert str(p) in str(err.value), name


def test_safetensors_files_agree_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed "
                             "(pip install safetensors) for the cross-check")
    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.array(5, np.int64),
             "h": np.ones(3, np.float16), "b": np.array([True, False]), "u": np.arange(4, dtype=np.uint8)}
    dtkd_io.save_safetensors(tmp_path / "ours.safetensors", state)
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    st.save_file(state, str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    ours = dtkd_io.load_safetensors(tmp_path / "theirs.safetensors")
    for k, v in state.items():
        for got in (theirs[k], ours[k]):
            assert got.dtype == v.dtype and got.shape == v.shape, k
            np.testing.assert_array_equal(got, v)
    assert dtkd_io.safetensors_metadata(tmp_path / "theirs.safetensors") == {"k": "v"}


def test_bfloat16_safetensors_from_torch_are_widened_exactly(torch, tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="the safetensors package is not installed "
                             "(pip install safetensors) for the cross-check")
    t = torch.tensor([1.5, -2.25, 3.0e38, 1e-3]).bfloat16()
    st.save_file({"w": t}, str(tmp_path / "bf16.safetensors"))
    loaded = dtkd_io.load_safetensors(tmp_path / "bf16.safetensors")
    np.testing.assert_array_equal(loaded["w"], t.float().numpy())


# ----------------------------------------------------------------------------------------------
# Naming what a checkpoint holds; the CLI's eval on a PyTorch file

def test_matches_ignores_key_order_and_missing_batch_counters():
    state = dtkd.models.create("resnet14", num_classes=7, in_channels=2).state_dict()
    shuffled = dict(sorted((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")))
    assert dtkd.models.matches(shuffled) == [("resnet14", 7, 2)]
    assert dtkd.models.identify(shuffled) == ["resnet14"]
    shuffled["fc.weight"] = np.zeros((7, 3), np.float32)
    assert dtkd.models.matches(shuffled) == []


def test_cli_eval_reads_an_old_pytorch_checkpoint(tmp_path, capsys):
    from test_cli import FASHION_MNIST
    if not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST files not found (install dataset-fashion-mnist)")
    _, state = _state("module.")
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    dtkd_io.save_pth(tmp_path / "ckpt_epoch_240.pth", old, extra={"epoch": 240})
    argv = ["eval", "--cfg", "fashion_mnist/vanilla.yaml", "--checkpoint",
            str(tmp_path / "ckpt_epoch_240.pth"), "--json", "--no-progress",
            "DATASET.TEST.SUBSET", "64", "NUM_THREADS", "1"]
    assert dtkd.cli.main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "resnet8" and result["n"] == 64 and 0 <= result["top1"] <= 100


def test_pth_zip_with_a_compression_method_torch_never_writes_is_a_checkpoint_error(tmp_path):
    # found by fuzzing: zipfile's NotImplementedError escaped load_pth
    import struct
    from dtkd import models
    path = tmp_path / "odd.pth"
    dtkd.io.save_pth(path, models.create("resnet8", num_classes=10, in_channels=1))
    raw = bytearray(path.read_bytes())
    local = raw.index(b"PK\x03\x04")
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<H", raw, local + 8, 99)     # method 99 (AES): zipfile cannot read it
    struct.pack_into("<H", raw, central + 10, 99)
    path.write_bytes(bytes(raw))
    with pytest.raises(dtkd.io.CheckpointError, match=r"odd\.pth: a zip archive PyTorch does not write"):
        dtkd.io.load_pth(path)


def _recompressed_with_a_corrupt_member(path):
    """``path`` rewritten as a zip whose members are deflated and whose first member's deflate
    stream is garbage (the fuzzer's find: zlib errors escaped as raw exceptions)."""
    with zipfile.ZipFile(path) as src:
        members = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name, data in members:
            dst.writestr(name, data)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[26:30])  # the first local file header
    start = 30 + name_len + extra_len
    raw[start:start + 4] = b"\xff\xff\xff\xff"  # an invalid deflate block type
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("suffix", [".pth", ".npz"])
def test_a_member_flagged_compressed_but_corrupt_is_a_checkpoint_error(tmp_path, suffix):
    model = dtkd.models.create("resnet8", num_classes=10, in_channels=1)
    path = tmp_path / f"m{suffix}"
    model.save(path)
    _recompressed_with_a_corrupt_member(path)
    with pytest.raises(CheckpointError, match=str(path)):
        dtkd_io.load_checkpoint(path)
