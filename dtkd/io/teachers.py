"""Where teacher checkpoints are found, as mdistiller lays them out, and what to say when not.

mdistiller's released CIFAR-100 teachers (``cifar_teachers.tar``) unpack to
``download_ckpts/cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``. :func:`find_teacher`
looks for ``<name>_vanilla/ckpt_epoch_240.pth`` in these teachers directories, in order; the
first that holds it wins:

1. ``teacher_dir`` (the config key ``DISTILLER.TEACHER_DIR``), if given;
2. ``$DTKD_TEACHERS``, if set;
3. ``./download_ckpts/cifar_teachers`` under the current directory (mdistiller's place).
"""
import os
import re
import tarfile
from pathlib import Path

from .checkpoint import CheckpointError

__all__ = ["find_teacher", "teacher_dirs", "teacher_checkpoint_in", "how_to_get_teacher",
           "tar_message", "TEACHERS_ENV", "DEFAULT_TEACHERS_DIR", "RELEASES_URL"]

TEACHERS_ENV = "DTKD_TEACHERS"
DEFAULT_TEACHERS_DIR = Path("download_ckpts") / "cifar_teachers"
RELEASES_URL = "https://github.com/megvii-research/mdistiller/releases/tag/v0.1"
_TEACHER_FILE = re.compile(r"(?:(.*)/)?([^/]+)_vanilla/ckpt_epoch_240\.pth")


def teacher_checkpoint_in(directory, name):
    """``<directory>/<name>_vanilla/ckpt_epoch_240.pth``, mdistiller's layout."""
    return Path(directory) / f"{name}_vanilla" / "ckpt_epoch_240.pth"


def teacher_dirs(teacher_dir=None):
    """The teachers directories searched, in order, as (path, what set it) pairs."""
    dirs = []
    if teacher_dir:
        dirs.append((_absolute(teacher_dir), "DISTILLER.TEACHER_DIR"))
    if os.environ.get(TEACHERS_ENV):  # relative: to the current directory, as any env path
        dirs.append((_absolute(os.environ[TEACHERS_ENV]), f"${TEACHERS_ENV}"))
    dirs.append((Path.cwd() / DEFAULT_TEACHERS_DIR, "default, under the current directory"))
    return dirs


def _absolute(path):
    return Path(os.path.abspath(os.path.expanduser(path)))


def find_teacher(name, teacher_dir=None, dataset=None):
    """The checkpoint of teacher ``name`` in the first teachers directory holding
    ``<name>_vanilla/ckpt_epoch_240.pth`` (see the module docstring); CheckpointError listing
    every place searched and how to get a teacher otherwise."""
    searched = []
    for directory, source in teacher_dirs(teacher_dir):
        candidate = teacher_checkpoint_in(directory, name)
        if candidate.is_file():
            return candidate
        searched.append(f"{candidate} ({source})")
    lines = [f"no checkpoint for teacher {name!r} (DISTILLER.TEACHER_CHECKPOINT is empty); "
             "searched:"] + [f"  {s}" for s in searched]
    lines += [tar_message(t) for t in _unextracted_tars(teacher_dir)]
    raise CheckpointError("\n".join(lines) + "\n" + how_to_get_teacher(name, dataset))


def _unextracted_tars(teacher_dir):
    """cifar_teachers.tar files lying where the teachers directories should be."""
    places = [Path.cwd(), Path.cwd() / DEFAULT_TEACHERS_DIR.parent]
    for directory, _ in teacher_dirs(teacher_dir):
        places += [directory, directory.parent]
    found = []
    for place in places:
        candidate = place if place.name.endswith(".tar") else place / "cifar_teachers.tar"
        if candidate.is_file() and candidate not in found:
            found.append(candidate)
    return found


def how_to_get_teacher(name, dataset=None):
    """Ways to get a teacher checkpoint for ``name`` (on ``dataset``), one per line, for errors."""
    ways = []
    layout = f"<teachers dir>/{name}_vanilla/ckpt_epoch_240.pth"
    if dataset == "fashion_mnist":
        overrides = "" if name == "resnet20" else f" DISTILLER.STUDENT {name} EXPERIMENT.NAME teacher_{name}"
        ways.append(f"train it here: python -m dtkd train --cfg fashion_mnist/teacher.yaml{overrides} "
                    f"(writes ./output/fashion_mnist/teacher_{name}/model_best.npz, the file the "
                    "shipped fashion_mnist configs read when run from the same directory)")
        demo = _demo_teachers(name)
        if demo:
            ways.append(f"use the demo's cached teacher: DISTILLER.TEACHER_CHECKPOINT {demo[-1]}")
        elif name == "resnet20":
            ways.append("or run `python -m dtkd demo` once: its teacher is "
                        "dtkd_demo/teacher/model_best.npz, also cached under "
                        f"{_demo_folder()}")
    else:
        ways.append(f"use mdistiller's released CIFAR-100 teachers: download cifar_teachers.tar "
                    f"({RELEASES_URL}), then here `mkdir -p download_ckpts && tar xf "
                    f"cifar_teachers.tar -C download_ckpts`, or extract it anywhere and set "
                    f"${TEACHERS_ENV} (or DISTILLER.TEACHER_DIR) to its cifar_teachers folder")
        ways.append(f"train one: python -m dtkd train --cfg <config> DISTILLER.TYPE NONE "
                    f"DISTILLER.STUDENT {name} (its model_best.npz is a teacher checkpoint)")
    ways.append(f"or give any checkpoint (PyTorch .pth/.pt, .safetensors, dtkd .npz) as "
                f"DISTILLER.TEACHER_CHECKPOINT <file>, or put a PyTorch one at {layout} and set "
                f"${TEACHERS_ENV} (or DISTILLER.TEACHER_DIR) to <teachers dir>")
    return "To get a teacher:\n" + "\n".join(f"  - {w}" for w in ways)


def _demo_folder():
    from ..data.dataset import cache_dir  # where the demo caches its teacher
    return cache_dir() / "demo"


def _demo_teachers(name):
    folder = _demo_folder()
    return sorted(folder.glob(f"teacher-{name}-*.npz")) if folder.is_dir() else []


def tar_message(path):
    """What to say about a tar archive given where a checkpoint was expected."""
    try:
        with tarfile.open(path) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as e:
        return (f"{path}: a damaged tar archive, not a checkpoint ({type(e).__name__}: {e}); "
                "download it again")
    if {"sys_info", "pickle", "storages", "tensors"} <= {Path(n).name for n in names}:
        return (f"{path}: a PyTorch <= 0.3 tar checkpoint, which dtkd does not read: load it "
                "with an old PyTorch and re-save it with torch.save(state_dict, path)")
    teachers = [(m.group(1), m.group(2)) for m in map(_TEACHER_FILE.fullmatch, names) if m]
    if teachers:
        top = teachers[0][0]  # the folder the archive unpacks to ("cifar_teachers"), if any
        into = DEFAULT_TEACHERS_DIR.parent if top else DEFAULT_TEACHERS_DIR
        folder = into / top if top else into
        found_by = ("run from that directory, DISTILLER.TEACHER finds the teachers there"
                    if folder == DEFAULT_TEACHERS_DIR else
                    f"then set ${TEACHERS_ENV} to {folder} so that DISTILLER.TEACHER finds them")
        return (f"{path}: a tar archive of mdistiller's teachers "
                f"({', '.join(sorted(n for _, n in teachers))}), not a checkpoint: extract it "
                f"first, `mkdir -p {into} && tar xf {path} -C {into}`, which creates "
                f"{folder}/<name>_vanilla/ckpt_epoch_240.pth; {found_by} (or point "
                "DISTILLER.TEACHER_CHECKPOINT at one .pth inside)")
    inside = [n for n in names if n.endswith((".pth", ".pt", ".safetensors", ".npz"))]
    shown = ", ".join(inside[:5]) if inside else ", ".join(names[:5])
    return (f"{path}: a tar archive, not a checkpoint (it holds {shown}{', ...' if len(names) > 5 else ''}): "
            f"extract it (`tar xf {path}`) and point DISTILLER.TEACHER_CHECKPOINT at the "
            "checkpoint inside")
