"""From what a checkpoint file holds to the state_dict a dtkd model loads, and back.

* :func:`extract_state_dict`: the ``name -> array`` mapping inside a loaded checkpoint tree:
  unwrapped from ``{"model": ...}`` (mdistiller, CRD and the official DTKD repository) or
  ``{"state_dict": ...}``, with the prefixes of PyTorch wrappers removed: ``module.``
  (``nn.DataParallel`` / ``DistributedDataParallel``) and ``student.`` / ``teacher.``
  (mdistiller's ``Distiller.state_dict()`` holds both networks; the student, the one that was
  trained, is taken unless ``prefix=`` says otherwise).
* :func:`fit_report`: how a state_dict differs from a model's (missing, unexpected and
  mismatched keys; a missing BatchNorm ``num_batches_tracked`` is tolerated, as old PyTorch
  checkpoints lack it); :func:`dtkd.models.matches` names the backbone a state_dict holds.
* :func:`state_to_save`: the checked mapping the writers store.
"""
import collections

import numpy as np

from .checkpoint import CheckpointError

__all__ = ["extract_state_dict", "state_to_save", "fit_report", "WRAPPER_KEYS",
           "PARALLEL_PREFIX", "DISTILLER_PREFIXES"]

WRAPPER_KEYS = ("model", "state_dict")
PARALLEL_PREFIX = "module."
DISTILLER_PREFIXES = ("student.", "teacher.")
_TOLERATED_MISSING = ".num_batches_tracked"
_SHOWN = 8  # keys listed per kind in an error message


def state_to_save(model):
    """``model`` (a dtkd Module, or a mapping name -> array or torch tensor) as an OrderedDict
    name -> ndarray; TypeError for anything else."""
    if hasattr(model, "state_dict") and callable(model.state_dict):
        model = model.state_dict()
    if not hasattr(model, "items"):
        raise TypeError(f"model: expected a dtkd Module or a mapping name -> array, got "
                        f"{type(model).__name__}")
    state = collections.OrderedDict()
    for name, value in model.items():
        if not isinstance(name, str):
            raise TypeError(f"model: state_dict keys must be strings, got {name!r}")
        if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        if value.dtype.hasobject:
            raise TypeError(f"model[{name!r}]: expected a numeric array, got dtype object")
        state[name] = value
    return state


def _is_state(node):
    return (isinstance(node, dict) and node
            and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in node.items()))


def extract_state_dict(tree, path, prefix=None):
    """The state_dict (OrderedDict name -> ndarray) in a loaded checkpoint ``tree``.

    ``prefix``: keep only the keys starting with it, removed (``"module.teacher."`` picks the
    teacher of an mdistiller distiller checkpoint). Without it, ``module.`` is removed when every
    key has it, then ``student.`` / ``teacher.`` likewise (the student if both are present).
    ``path`` names the file in errors (:class:`CheckpointError`).
    """
    state = tree
    if not _is_state(state) and isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if _is_state(state.get(key)):
                state = state[key]
                break
    if not _is_state(state):
        raise CheckpointError(f"{path}: holds no state_dict " + _describe_tree(tree))
    state = collections.OrderedDict(state)
    if prefix is not None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix: expected a str, got {type(prefix).__name__}")
        picked = _strip(state, prefix)
        if not picked:
            raise CheckpointError(f"{path}: no key starts with prefix {prefix!r}; the keys start "
                                  f"with {', '.join(_key_prefixes(state))}")
        return picked
    if all(k.startswith(PARALLEL_PREFIX) for k in state):
        state = _strip(state, PARALLEL_PREFIX)
    if all(k.startswith(DISTILLER_PREFIXES) for k in state):
        student = _strip(state, DISTILLER_PREFIXES[0])
        state = student if student else _strip(state, DISTILLER_PREFIXES[1])
    return state


def _strip(state, prefix):
    return collections.OrderedDict((k[len(prefix):], v) for k, v in state.items()
                                   if k.startswith(prefix))


def _key_prefixes(state):
    return sorted({k.split(".")[0] + "." if "." in k else k for k in state})[:10]


def _describe_tree(tree):
    if isinstance(tree, dict):
        parts = []
        for k, v in list(tree.items())[:10]:
            kind = type(v).__name__
            if isinstance(v, np.ndarray):
                kind = f"array {v.dtype}{list(v.shape)}"
            elif isinstance(v, dict):
                kind = f"dict of {len(v)}"
            parts.append(f"{k!r}: {kind}")
        return (f"(expected a mapping of parameter names to arrays, or one under "
                f"{' / '.join(map(repr, WRAPPER_KEYS))}; it holds {{{', '.join(parts)}}})")
    return f"(expected a mapping of parameter names to arrays; it holds a {type(tree).__name__})"


# ----------------------------------------------------------------------------------------------
# Fitting a state_dict to a model

class FitReport:
    """How a state_dict differs from a model's: ``missing`` / ``unexpected`` key lists and
    ``mismatched`` (key, checkpoint shape, model shape) triples. ``ok`` when all are empty."""

    def __init__(self, missing, unexpected, mismatched):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

    @property
    def ok(self):
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self):
        parts = []
        if self.mismatched:
            parts.append(f"shape mismatches ({len(self.mismatched)}): " + _listed(
                [f"{k}: checkpoint {tuple(a)}, model {tuple(b)}" for k, a, b in self.mismatched]))
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): " + _listed(self.missing))
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): " + _listed(self.unexpected))
        return "; ".join(parts)


def _listed(items):
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def fit_report(model_shapes, state):
    """Compare ``state`` (name -> array) with ``model_shapes`` (name -> shape, the model's
    state_dict order). A missing ``*.num_batches_tracked`` is not reported."""
    missing = [k for k in model_shapes if k not in state and not k.endswith(_TOLERATED_MISSING)]
    unexpected = [k for k in state if k not in model_shapes]
    mismatched = [(k, np.shape(state[k]), tuple(shape)) for k, shape in model_shapes.items()
                  if k in state and tuple(np.shape(state[k])) != tuple(shape)]
    return FitReport(missing, unexpected, mismatched)
