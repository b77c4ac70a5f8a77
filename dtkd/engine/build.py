"""From a config to the pieces of a run: datasets and loaders, student and teacher, distiller,
trainer. What ``python -m dtkd train`` does, callable from Python::

    cfg = dtkd.config.load_config("fashion_mnist/dtkd.yaml", ["SOLVER.EPOCHS", "2"])
    trainer = dtkd.engine.build_trainer(cfg)
    trainer.train()

The data, model and distiller modules are imported when called, so the engine imports without
them.
"""
from pathlib import Path

from .. import io as dtkd_io
from ..config import ConfigError
from .trainer import Trainer, experiment_dir

__all__ = ["build_dataset", "build_datasets", "build_loaders", "build_test_loader", "build_model", "load_teacher_model", "build_trainer",
           "how_to_get_a_teacher"]

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


def how_to_get_a_teacher(cfg):
    """The ways to get teacher weights for ``cfg``, as a sentence for error messages."""
    if cfg.DATASET.TYPE == "fashion_mnist":
        return ("Train one first: `python -m dtkd train --cfg fashion_mnist/teacher.yaml` writes "
                "output/fashion_mnist/teacher_resnet20/model_best.npz under the current directory "
                "(the path the fashion_mnist configs name); `python -m dtkd demo` also trains one "
                "(dtkd_demo/teacher/model_best.npz, then cached in ~/.cache/dtkd/demo/). Or pass "
                "DISTILLER.TEACHER_CHECKPOINT <path> of a teacher you have.")
    return (f"Train {cfg.DISTILLER.TEACHER} with DISTILLER.TYPE NONE (`python -m dtkd train --cfg "
            f"<config> DISTILLER.TYPE NONE DISTILLER.STUDENT {cfg.DISTILLER.TEACHER}` writes "
            "model_best.npz), then pass DISTILLER.TEACHER_CHECKPOINT <path>.")


def load_teacher_model(cfg, dataset):
    """DISTILLER.TEACHER with weights from DISTILLER.TEACHER_CHECKPOINT, in eval mode."""
    path = cfg.DISTILLER.TEACHER_CHECKPOINT
    if not path:
        raise ConfigError(f"DISTILLER.TEACHER_CHECKPOINT: distillation ({cfg.DISTILLER.TYPE}) "
                          f"needs teacher weights. {how_to_get_a_teacher(cfg)}")
    if not Path(path).exists():
        raise dtkd_io.CheckpointError(
            f"DISTILLER.TEACHER_CHECKPOINT: {path} not found (relative paths are taken from the "
            f"current directory, {Path.cwd()}). {how_to_get_a_teacher(cfg)}")
    teacher = build_model(cfg.DISTILLER.TEACHER, dataset, cfg.SEED)
    teacher.load_state_dict(dtkd_io.load_teacher(path))
    teacher.eval()
    return teacher


def build_trainer(cfg, out_dir=None, progress=None):
    """A :class:`Trainer` for ``cfg``; ``out_dir`` defaults to :func:`experiment_dir`."""
    from .. import distill, set_num_threads
    if cfg.NUM_THREADS:
        set_num_threads(cfg.NUM_THREADS)
    train, test = build_datasets(cfg)
    train_loader, test_loader = build_loaders(cfg, train, test)
    student = build_model(cfg.DISTILLER.STUDENT, train, cfg.SEED)
    teacher = None if cfg.DISTILLER.TYPE == "NONE" else load_teacher_model(cfg, train)
    distiller = distill.from_config(cfg, student, teacher)
    return Trainer(cfg, distiller, train_loader, test_loader,
                   experiment_dir(cfg) if out_dir is None else out_dir, progress=progress)
