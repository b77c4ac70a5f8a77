"""From a config to the pieces of a run: datasets and loaders, student and teacher, distiller,
trainer. What ``python -m dtkd train`` does, callable from Python::

    cfg = dtkd.config.load_config("fashion_mnist/dtkd.yaml", ["SOLVER.EPOCHS", "2"])
    trainer = dtkd.engine.build_trainer(cfg)
    trainer.train()

The data, model and distiller modules are imported when called, so the engine imports without
them.
"""
import os
from pathlib import Path

from .. import io as dtkd_io
from ..io.teachers import how_to_get_teacher
from .logit_cache import teacher_cache_from_config
from .trainer import Trainer, experiment_dir

__all__ = ["build_dataset", "build_datasets", "build_loaders", "build_test_loader", "build_model",
           "teacher_checkpoint", "load_teacher_model", "build_trainer"]

# Datasets whose images are smaller than the 32x32 the CIFAR backbones take: zero-pad them.
_PAD_TO = {"fashion_mnist": 32}


def build_dataset(cfg, split):
    """The ``split`` ('train' or 'test') :class:`dtkd.data.Dataset` per DATASET.*, with the
    DATASET.SUBSET (train) or DATASET.TEST.SUBSET (test) subset drawn with SEED."""
    from .. import data
    dataset = data.load_dataset(cfg.DATASET.TYPE, split, root=cfg.DATASET.ROOT or None,
                                download=cfg.DATASET.DOWNLOAD, pad_to=_PAD_TO.get(cfg.DATASET.TYPE))
    subset = cfg.DATASET.SUBSET if split == "train" else cfg.DATASET.TEST.SUBSET
    if 0 < subset < len(dataset):
        dataset = dataset.subset(subset, seed=cfg.SEED)
    return dataset


def build_datasets(cfg):
    """(train, test) datasets, see :func:`build_dataset`."""
    return build_dataset(cfg, "train"), build_dataset(cfg, "test")


def build_loaders(cfg, train, test):
    """Seeded shuffling (and DATASET.AUGMENT) for training; fixed order for evaluation."""
    from .. import data
    train_loader = data.DataLoader(train, cfg.SOLVER.BATCH_SIZE, shuffle=True,
                                   augment=cfg.DATASET.AUGMENT, seed=cfg.SEED)
    return train_loader, build_test_loader(cfg, test)


def build_test_loader(cfg, test):
    from .. import data
    return data.DataLoader(test, cfg.DATASET.TEST.BATCH_SIZE, shuffle=False, augment=False,
                           seed=cfg.SEED)


def build_model(name, dataset, seed):
    """Backbone ``name`` sized for ``dataset`` (classes, channels), initialised from ``seed``."""
    from .. import models
    return models.create(name, num_classes=dataset.num_classes,
                         in_channels=dataset.image_shape[-1], seed=seed)


def teacher_checkpoint(cfg):
    """The teacher's checkpoint file: DISTILLER.TEACHER_CHECKPOINT if set (relative paths as
    dtkd.config anchors them, else against the current directory), otherwise
    ``<teachers dir>/<DISTILLER.TEACHER>_vanilla/ckpt_epoch_240.pth`` in DISTILLER.TEACHER_DIR,
    $DTKD_TEACHERS or ./download_ckpts/cifar_teachers (mdistiller's layout; first found).
    :class:`dtkd.io.CheckpointError` says how to get one when there is none."""
    explicit = cfg.DISTILLER.TEACHER_CHECKPOINT
    if not explicit:
        return dtkd_io.find_teacher(cfg.DISTILLER.TEACHER, cfg.DISTILLER.TEACHER_DIR or None,
                                    dataset=cfg.DATASET.TYPE)
    path = Path(os.path.abspath(os.path.expanduser(explicit)))
    if path.exists():
        return path
    try:
        found = dtkd_io.find_teacher(cfg.DISTILLER.TEACHER, cfg.DISTILLER.TEACHER_DIR or None)
        other = (f"; {found} exists: set DISTILLER.TEACHER_CHECKPOINT '' to use it "
                 "(an empty value searches the teachers directories)")
    except dtkd_io.CheckpointError:
        other = ""
    raise dtkd_io.CheckpointError(
        f"DISTILLER.TEACHER_CHECKPOINT: {path} not found (teacher {cfg.DISTILLER.TEACHER}"
        f"{other}).\n" + how_to_get_teacher(cfg.DISTILLER.TEACHER, cfg.DATASET.TYPE))


def load_teacher_model(cfg, dataset, path=None):
    """DISTILLER.TEACHER with weights from ``path`` (default :func:`teacher_checkpoint`), in
    eval mode. Any format dtkd.io reads: a PyTorch .pth (mdistiller's teachers), .safetensors,
    or a dtkd .npz (``model_best.npz`` of a `python -m dtkd train` run)."""
    path = teacher_checkpoint(cfg) if path is None else path
    teacher = build_model(cfg.DISTILLER.TEACHER, dataset, cfg.SEED)
    teacher.load(path)
    teacher.eval()
    return teacher


def build_trainer(cfg, out_dir=None, progress=None):
    """A :class:`Trainer` for ``cfg``; ``out_dir`` defaults to :func:`experiment_dir`. The
    distiller gets the teacher-logit cache DISTILLER.TEACHER_CACHE asks for
    (:mod:`dtkd.engine.logit_cache`; on disk by default where safe)."""
    from .. import distill, set_num_threads
    if cfg.NUM_THREADS:
        set_num_threads(cfg.NUM_THREADS)
    # find the teacher's file before loading data, so that a missing one fails at once
    teacher_path = None if cfg.DISTILLER.TYPE == "NONE" else teacher_checkpoint(cfg)
    train, test = build_datasets(cfg)
    train_loader, test_loader = build_loaders(cfg, train, test)
    student = build_model(cfg.DISTILLER.STUDENT, train, cfg.SEED)
    teacher = None
    if teacher_path is not None:
        teacher = load_teacher_model(cfg, train, teacher_path)
        cfg = cfg.clone()  # the run's config.yaml records the file the teacher came from
        cfg.DISTILLER.TEACHER_CHECKPOINT = str(teacher_path)
    distiller = distill.from_config(cfg, student, teacher)
    distiller.teacher_cache, _ = teacher_cache_from_config(cfg, distiller, train_loader)
    return Trainer(cfg, distiller, train_loader, test_loader,
                   experiment_dir(cfg) if out_dir is None else out_dir, progress=progress)
