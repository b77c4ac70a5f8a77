"""Checkpoints: dtkd's own format, PyTorch ``.pth`` and safetensors, all without torch.

Reading a model's weights, whatever wrote them::

    state = dtkd.io.load_checkpoint("ckpt_epoch_240.pth")   # name -> ndarray
    model.load("ckpt_epoch_240.pth")                        # the same, checked against the model

:func:`load_checkpoint` recognises the format by the file's first bytes (not its suffix):
dtkd checkpoints (``.npz``, :mod:`dtkd.io.checkpoint`), PyTorch checkpoints in the zip and the
legacy format (``.pth``, ``.pt``, ``.pth.tar``; :mod:`dtkd.io.pth`) and safetensors
(:mod:`dtkd.io.safetensors`); it unwraps ``{"model": state_dict, ...}`` and strips
``module.`` / ``student.`` / ``teacher.`` prefixes (:mod:`dtkd.io.state_dict`). Pickles are read
with an allow-list of globals, so a file cannot run code. Every problem (missing, truncated or
corrupt file, a tar archive still to extract, an unsupported dtype, no state_dict inside) raises
:class:`CheckpointError` naming the file.

Writing: :func:`save` (dtkd's ``.npz`` tree), :func:`save_pth` (``{"model": state_dict}`` that
``torch.load`` reads, ``weights_only=True`` included), :func:`save_safetensors`; all atomic.

Teachers: :func:`find_teacher` looks in mdistiller's teachers layout
(:mod:`dtkd.io.teachers`).
"""
import tarfile
import zipfile
from pathlib import Path

from .atomic import atomic_write, write_text_atomic
from .checkpoint import CheckpointError, load, save
from .pth import is_torch_zip, load_pth, save_pth
from .safetensors import is_safetensors, load_safetensors, safetensors_metadata, save_safetensors
from .state_dict import extract_state_dict, fit_report
from .teachers import find_teacher, tar_message, teacher_dirs

__all__ = ["save", "load", "load_checkpoint", "load_teacher", "checkpoint_format",
           "save_pth", "load_pth", "save_safetensors", "load_safetensors",
           "safetensors_metadata", "find_teacher", "teacher_dirs", "fit_report",
           "CheckpointError", "atomic_write", "write_text_atomic"]


def checkpoint_format(path):
    """``"dtkd"``, ``"torch"``, ``"safetensors"`` or ``"tar"`` from the file's first bytes;
    CheckpointError for a missing, empty or unrecognised file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file (give the file "
                              "inside, e.g. .../resnet32x4_vanilla/ckpt_epoch_240.pth)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if not head:
        raise CheckpointError(f"{path}: empty file (0 bytes): truncated or not written")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt zip archive (a PyTorch or dtkd "
                                  f"checkpoint cut short? {type(e).__name__}: {e})") from None
        if is_torch_zip(names):
            return "torch"
        if any(n.startswith("__dtkd__") for n in names):
            return "dtkd"
        raise CheckpointError(f"{path}: a zip archive that is neither a PyTorch nor a dtkd "
                              f"checkpoint (members: {', '.join(names[:6])})")
    if head[:1] == b"\x80":  # a pickle: the legacy PyTorch format starts with one
        return "torch"
    if is_safetensors(head):
        return "safetensors"
    if head[257:262] == b"ustar" or head.startswith(b"\x1f\x8b") and tarfile.is_tarfile(path):
        return "tar"
    raise CheckpointError(f"{path}: not a checkpoint dtkd reads (expected a PyTorch .pth/.pt, "
                          "a .safetensors or a dtkd .npz file)")


def load_checkpoint(path, prefix=None):
    """The state_dict (OrderedDict name -> ndarray) in a checkpoint file of any format dtkd
    reads (see the module docstring). ``prefix`` selects and strips keys (e.g.
    ``"module.teacher."``); without it wrapper prefixes are stripped automatically."""
    path = Path(path)
    kind = checkpoint_format(path)
    if kind == "tar":
        raise CheckpointError(tar_message(path))
    if kind == "torch":
        tree = load_pth(path)
    elif kind == "safetensors":
        tree = load_safetensors(path)
    else:
        tree = load(path)
    return extract_state_dict(tree, path, prefix)


def load_teacher(path, prefix=None):
    """A teacher's state_dict from any checkpoint file: :func:`load_checkpoint` under the name
    the engine uses. ``teacher.load(path)`` also checks it against the model."""
    return load_checkpoint(path, prefix)
