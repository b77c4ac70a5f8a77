"""Teachers shipped with dtkd as package data, each with the record of how it was made.

A shipped teacher is a dtkd checkpoint (``<name>.npz``, the ``model_best.npz`` of a
``python -m dtkd train`` run) next to its provenance (``<name>.json``): the command that trained
it, its config and seed, its test accuracy, the CPU and the dtkd commit, and a check (top-1 on
a small test subset) that anyone can repeat in seconds (:func:`check_accuracy`)::

    from dtkd import pretrained
    t = pretrained.shipped_teacher("fashion_mnist_resnet20")
    t.path, t.model, t.best_acc, t.provenance["command"]

The demo (``python -m dtkd demo``) distils from ``fashion_mnist_resnet20`` unless told to train
its teacher (``--train-teacher`` / ``--retrain-teacher``). ``benchmarks/ship_teacher.py`` writes
these files from a finished run.
"""
import dataclasses
import hashlib
import json
from pathlib import Path

__all__ = ["ShippedTeacher", "shipped_teacher", "available", "check_accuracy", "DIRECTORY",
           "DEMO_TEACHER", "sha256"]

DIRECTORY = Path(__file__).resolve().parent
DEMO_TEACHER = "fashion_mnist_resnet20"


@dataclasses.dataclass(frozen=True)
class ShippedTeacher:
    """A teacher shipped with dtkd: ``path`` (the .npz), ``model`` (backbone name), ``best_acc``
    (test top-1 % its training run measured), ``provenance`` (the whole .json record)."""
    name: str
    path: Path
    model: str
    best_acc: float
    provenance: dict


def available():
    """Names of the shipped teachers (those with both their .npz and their .json)."""
    return sorted(p.stem for p in DIRECTORY.glob("*.json") if p.with_suffix(".npz").is_file())


def shipped_teacher(name=DEMO_TEACHER):
    """The shipped teacher ``name`` (see :func:`available`). FileNotFoundError names what is
    missing; ValueError if the checkpoint's SHA-256 differs from its record."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ValueError(f"name: expected a shipped teacher's name (one of {available()}), "
                         f"got {name!r}")
    record, weights = DIRECTORY / f"{name}.json", DIRECTORY / f"{name}.npz"
    for path in (record, weights):
        if not path.is_file():
            raise FileNotFoundError(f"name: no shipped teacher {name!r} ({path} is missing); "
                                    f"shipped: {available() or 'none'}")
    provenance = json.loads(record.read_text())
    digest = sha256(weights)
    if provenance.get("sha256") != digest:
        raise ValueError(f"{weights}: SHA-256 {digest} differs from its record "
                         f"{provenance.get('sha256')} in {record}: damaged or replaced file")
    return ShippedTeacher(name=name, path=weights, model=provenance["model"],
                          best_acc=float(provenance["best_acc"]), provenance=provenance)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_accuracy(teacher, root=None, threads=0):
    """Evaluate ``teacher`` (a :class:`ShippedTeacher` or a name) on the test subset its record's
    ``check`` names; returns the :func:`dtkd.engine.evaluate` result (``top1`` in %, ``n``).
    ``root``: folder with the dataset files (default: where dtkd looks for them)."""
    from .. import set_num_threads
    from ..config import load_config
    from ..engine.build import build_dataset, build_model, build_test_loader
    from ..engine.trainer import evaluate
    if isinstance(teacher, str):
        teacher = shipped_teacher(teacher)
    check = teacher.provenance["check"]
    overrides = list(check["overrides"])
    if root is not None:
        overrides += ["DATASET.ROOT", str(root)]
    cfg = load_config(teacher.provenance["config_name"], overrides)
    if threads:
        set_num_threads(threads)
    test = build_dataset(cfg, "test")
    model = build_model(teacher.model, test, cfg.SEED)
    model.load(teacher.path)
    return evaluate(model, build_test_loader(cfg, test))
