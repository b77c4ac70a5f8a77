"""Parameter, Module and Sequential: the containers every layer and model builds on.

A Module computes ``forward(x)`` and, afterwards, ``backward(grad_out)``: the gradient with
respect to its input, while adding the gradients of its parameters into ``Parameter.grad``
(they accumulate until ``zero_grad()``, as in PyTorch). What backward needs is kept by the
module between the two calls. Names in ``state_dict()`` are PyTorch's, so a PyTorch
checkpoint maps one to one.
"""
from collections import OrderedDict

import numpy as np

from .grad_mode import is_grad_enabled

__all__ = ["Parameter", "Module", "Sequential", "IncompatibleKeys"]


class Parameter:
    """A trainable float32 array ``data`` (PyTorch layout) and its gradient ``grad`` (same shape)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.array(data, dtype=np.float32, order="C", copy=True)  # owns its memory
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape})"


class IncompatibleKeys(tuple):
    """``(missing_keys, unexpected_keys)`` returned by ``load_state_dict``, like PyTorch's."""

    def __new__(cls, missing_keys, unexpected_keys):
        return super().__new__(cls, (missing_keys, unexpected_keys))

    missing_keys = property(lambda self: self[0])
    unexpected_keys = property(lambda self: self[1])


def _check_state_value(name, value, target, owner):
    """A state_dict entry must survive the cast to its target's dtype unchanged in meaning:
    finite and inside float32's range for float targets, whole numbers inside the integer
    range for integer ones (num_batches_tracked), and >= 0 where the owner says so
    (BatchNorm's running_var); never a silent inf, wrap-around or negative variance."""
    if target.dtype.kind == "f":
        if not np.isfinite(value).all():
            raise ValueError(f"state_dict[{name!r}]: contains NaN or Inf")
        if value.size and value.dtype.kind == "f" and value.dtype.itemsize > target.dtype.itemsize:
            big, limit = float(np.max(np.abs(value))), float(np.finfo(target.dtype).max)
            if big > limit:
                raise ValueError(f"state_dict[{name!r}]: values beyond {target.dtype}'s range "
                                 f"(max |v| = {big:.3g} > {limit:.3g})")
    elif target.dtype.kind in "iu" and value.size:
        if value.dtype.kind == "f" and not (np.isfinite(value).all()
                                             and np.array_equal(value, np.floor(value))):
            raise ValueError(f"state_dict[{name!r}]: expected whole numbers for an "
                             f"{target.dtype} entry, got {value.dtype} values")
        info = np.iinfo(target.dtype)
        lo, hi = float(np.min(value)), float(np.max(value))
        if lo < info.min or hi > info.max:
            raise ValueError(f"state_dict[{name!r}]: values {lo:.3g}..{hi:.3g} do not fit "
                             f"{target.dtype}")
    if name.rsplit(".", 1)[-1] in getattr(owner, "_nonnegative_state", ()) and value.size \
            and float(np.min(value)) < 0:
        raise ValueError(f"state_dict[{name!r}]: must be >= 0 (a variance), got "
                         f"{float(np.min(value)):.3g}")


class Module:
    """Base class of layers and models (see the module docstring)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration: assigning a Parameter or a Module registers it under that name --------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if name in self._buffers and isinstance(value, np.ndarray):
            # e.g. `self.num_batches_tracked += 1` rebinds the buffer: keep it registered, in place
            self._buffers[name] = value
        else:
            for registry in (self._parameters, self._modules, self._buffers):
                registry.pop(name, None)
            if isinstance(value, Parameter):
                self._parameters[name] = value
            elif isinstance(value, Module):
                self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """A state array that is saved in ``state_dict`` but not trained (running stats)."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    # -- calling --------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def _save_for_backward(self, value):
        """Keep what backward needs (nothing under ``no_grad``)."""
        self._saved = value if is_grad_enabled() else None

    def _saved_for_backward(self, saved):
        """What the last forward stored, or a clear error when backward comes first."""
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward "
                               "(or twice after one forward, or after a forward under no_grad)")
        return saved

    # -- traversal --------------------------------------------------------------------------
    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix=""):
        for module_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix=""):
        for module_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                yield (f"{module_name}.{name}" if module_name else name), b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    # -- training state ---------------------------------------------------------------------
    def zero_grad(self):
        """Set every parameter gradient to zero, in place (the arrays are reused)."""
        for p in self.parameters():
            p.grad.fill(0.0)

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    # -- state_dict --------------------------------------------------------------------------
    def _state_entries(self):
        """(name, array) in PyTorch's order: per module, its parameters then its buffers."""
        for module_name, m in self.named_modules():
            for name, arr in list(m._parameters.items()) + list(m._buffers.items()):
                full = f"{module_name}.{name}" if module_name else name
                yield full, (arr.data if isinstance(arr, Parameter) else arr)

    def state_dict(self):
        """OrderedDict of copies of every parameter and buffer, keyed by PyTorch names."""
        return OrderedDict((name, arr.copy()) for name, arr in self._state_entries())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into this module's parameters and buffers (in place, keeping dtypes).

        With ``strict`` (default) missing or unexpected keys raise KeyError; a shape mismatch
        always raises ValueError. Nothing is modified if any check fails. Returns
        ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {type(state_dict).__name__}")
        targets = OrderedDict(self._state_entries())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match {type(self).__name__}: "
                           f"missing keys {missing}, unexpected keys {unexpected}")
        owners = {(f"{mn}.{n}" if mn else n): m for mn, m in self.named_modules()
                  for n in list(m._parameters) + list(m._buffers)}
        converted = {}
        for name, target in targets.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {target.shape}, got {value.shape}")
            if value.dtype.kind not in "fiub":
                raise TypeError(f"state_dict[{name!r}]: expected a numeric array, got dtype {value.dtype}")
            converted[name] = value
            _check_state_value(name, value, target, owners[name])
        for name, value in converted.items():
            np.copyto(targets[name], value, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # -- checkpoint files -------------------------------------------------------------------
    def load(self, path, strict=True, prefix=None):
        """Load weights from a checkpoint file: PyTorch ``.pth``/``.pt`` (zip or legacy format,
        e.g. mdistiller's ``ckpt_epoch_240.pth``), ``.safetensors`` or a dtkd ``.npz``.

        Read by :func:`dtkd.io.load_checkpoint` (no torch needed, no code run from the file):
        ``{"model": ...}`` is unwrapped, ``module.`` / ``student.`` / ``teacher.`` prefixes are
        stripped (``prefix=`` picks one explicitly), and a missing BatchNorm
        ``num_batches_tracked`` keeps the module's value. Keys and shapes must match the model
        (with ``strict=False`` missing and unexpected keys are allowed, mismatched shapes never);
        otherwise :class:`dtkd.io.CheckpointError` lists the differences and names the model the
        checkpoint seems to hold. Nothing is modified if a check fails.
        Returns ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        from .. import io as dtkd_io  # io sits below nn; imported here to keep nn import-light
        state = dtkd_io.load_checkpoint(path, prefix=prefix)
        shapes = OrderedDict((name, arr.shape) for name, arr in self._state_entries())
        report = dtkd_io.fit_report(shapes, state)
        if report.mismatched or (strict and not report.ok):
            # name the backbones (the registry sits above nn: imported for this message only)
            from ..models import matches
            ours, held = matches(dict(self._state_entries())), matches(state)
            this = f"this {type(self).__name__}" + (f" ({_described(ours[0])})" if ours else "")
            what = (f"holds a {' or a '.join(map(_described, held))}, which does not fit {this}"
                    if held else f"does not fit {this} (nor any dtkd backbone)")
            raise dtkd_io.CheckpointError(f"{path}: {what}: {report.message()}")
        try:
            return self.load_state_dict(state, strict=False)
        except (ValueError, TypeError) as e:  # NaN/Inf or non-numeric values in the file
            raise dtkd_io.CheckpointError(f"{path}: {e}") from None

    def save(self, path):
        """Write this module's state_dict, atomically, in the format the suffix names:
        ``.pth``/``.pt`` (``{"model": state_dict}``, read by ``torch.load`` and mdistiller),
        ``.safetensors``, or ``.npz`` (dtkd's format, ``{"model": state_dict}``)."""
        from .. import io as dtkd_io
        suffix = str(path).lower().rsplit(".", 1)[-1] if "." in str(path) else ""
        if suffix in ("pth", "pt"):
            dtkd_io.save_pth(path, self)
        elif suffix == "safetensors":
            dtkd_io.save_safetensors(path, self)
        elif suffix == "npz":
            dtkd_io.save(path, {"model": self.state_dict()})
        else:
            raise ValueError(f"path: expected a .pth, .pt, .safetensors or .npz file name, got "
                             f"{str(path)!r}")

    # -- display ----------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _described(match):
    name, classes, channels = match
    return f"{name} ({classes} classes, {channels} input channel{'s' if channels != 1 else ''})"


class Sequential(Module):
    """Children applied in order; backward runs them in reverse. Named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{i}]: expected a Module, got {type(m).__name__}")
            setattr(self, str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_out):
        for m in reversed(self._modules.values()):
            grad_out = m.backward(grad_out)
        return grad_out
