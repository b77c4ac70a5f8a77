"""Checkpoints: dtkd's own ``.npz`` format (:mod:`dtkd.io.checkpoint`) and teacher loading.

``load_teacher(path)`` is the one entry point for teacher weights; it dispatches on the file
format so that PyTorch ``.pth`` import (a later issue) slots in without changing callers.
"""
from pathlib import Path

import numpy as np

from .atomic import atomic_write, write_text_atomic
from .checkpoint import CheckpointError, load, save

__all__ = ["save", "load", "load_teacher", "CheckpointError", "TORCH_SUFFIXES", "atomic_write",
           "write_text_atomic"]

TORCH_SUFFIXES = (".pth", ".pt", ".tar")


def load_teacher(path):
    """The teacher's ``state_dict`` (name -> ndarray) from a checkpoint file.

    Accepts a dtkd checkpoint (``.npz``) holding either a bare state_dict or a tree with a
    ``"model"`` entry (what :class:`dtkd.engine.Trainer` writes: ``model_best.npz``,
    ``latest.npz``, ...). Load it with ``teacher.load_state_dict(load_teacher(path))``.
    PyTorch ``.pth``/``.pt``/``.tar`` files (mdistiller's teachers) are not readable yet.
    """
    path = Path(path)
    if path.suffix.lower() in TORCH_SUFFIXES:
        raise NotImplementedError(
            f"{path}: PyTorch checkpoints ({', '.join(TORCH_SUFFIXES)}) cannot be imported yet; "
            "this arrives in a later dtkd release. For now train the teacher with dtkd "
            "(`python -m dtkd train --cfg ...` writes model_best.npz) and point "
            "DISTILLER.TEACHER_CHECKPOINT at that file.")
    tree = load(path)
    state = tree.get("model", tree) if isinstance(tree, dict) else None
    if (not isinstance(state, dict) or not state
            or not all(isinstance(v, np.ndarray) for v in state.values())):
        raise CheckpointError(f"{path}: holds no model state_dict (expected a 'model' entry or a "
                              "mapping of parameter names to arrays)")
    return state
