"""Experiment configs: a small yacs-like tree with mdistiller's keys and defaults.

An experiment is a YAML file that overrides some defaults (``configs/cifar100/dtkd/*.yaml``);
the command line overrides it further with dotted ``KEY VALUE`` pairs::

    cfg = load_config("cifar100/dtkd/res32x4_res8x4.yaml", ["SOLVER.EPOCHS", "10"])
    cfg.SOLVER.EPOCHS        # 10

Every key must already exist in the defaults (a typo is an error that lists close matches), and
every value is coerced to the type of its default (``SOLVER.EPOCHS 1.5`` is an error).

Paths a run reads (:data:`PATH_KEYS`: ``DISTILLER.TEACHER_CHECKPOINT``, ``DISTILLER.TEACHER_DIR``,
``DATASET.ROOT``) are made absolute when they are merged, so the same config means the same
files wherever the command is typed. A relative path resolves against

* the folder of the YAML file that sets it, for your own config files (keep a config next to
  its teacher: ``TEACHER_CHECKPOINT: teachers/resnet32x4.pth``);
* the current directory for command-line overrides, :meth:`CfgNode.merge_from_dict`, and the
  configs shipped inside dtkd (their relative paths point into run outputs, which
  ``LOG.PREFIX: ./output`` puts under the current directory, as in mdistiller).

``~`` is expanded. ``LOG.PREFIX`` (where a run writes) stays relative to the current directory,
as in mdistiller. A value assigned in Python (``cfg.DISTILLER.TEACHER_CHECKPOINT = "t.pth"``) is
kept as given and read relative to the current directory when used.

Teacher weights: ``DISTILLER.TEACHER_CHECKPOINT`` if set; otherwise the checkpoint of
``DISTILLER.TEACHER`` in mdistiller's teachers layout, ``<teachers dir>/<TEACHER>_vanilla/
ckpt_epoch_240.pth``, searched in ``DISTILLER.TEACHER_DIR``, then ``$DTKD_TEACHERS``, then
``./download_ckpts/cifar_teachers`` (see :mod:`dtkd.io.teachers`).

The defaults are mdistiller's (mdistiller/engine/cfg.py) and the official DTKD repository's
(JinYu1998/DTKD, same file), plus dtkd's own keys marked below.
"""
import copy
import difflib
import math
import os
import reprlib
from pathlib import Path

import yaml

from ._validate import nesting_depth

__all__ = ["CfgNode", "ConfigError", "get_default_config", "load_config", "resolve_config_path",
           "shipped_configs", "CONFIG_DIR", "PATH_KEYS"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Keys naming files or folders a run reads: anchored to a base folder when merged (docstring).
PATH_KEYS = ("DATASET.ROOT", "DISTILLER.TEACHER_CHECKPOINT", "DISTILLER.TEACHER_DIR")

# Keys whose value must be one of a fixed set; checked after every merge.
_CHOICES = {
    "DISTILLER.TYPE": None,  # the distiller registry's names (dtkd.distill.names()), read when checked
    "SOLVER.TYPE": ("SGD",),
    "SOLVER.SCHEDULE": ("step", "cosine"),
    # official: alpha*L_DTKD + beta*L_KD + CE (the paper's method); tckd / nckd: dynamic
    # temperatures applied to DKD's TCKD or NCKD term only; dkd: DTKD combined with DKD.
    "DTKD.VARIANT": ("official", "tckd", "nckd", "dkd"),
    # official: temperatures from the max logits; exact: the sharpness-matching root (dtkd.losses)
    "DTKD.RULE": ("official", "exact"),
    "CTKD.MLP": ("global", "instance"),
    # teacher-logit cache (dtkd/engine/logit_cache.py): auto = disk where safe, else off
    "DISTILLER.TEACHER_CACHE": ("auto", "disk", "memory", "off"),
    "DISTILLER.TEACHER_CACHE_DTYPE": ("float32", "float16"),
}


class ConfigError(ValueError):
    """A config key that does not exist, a value of the wrong type, or a malformed file."""


# Values quoted in error messages: a few levels and items, strings cut short. A YAML alias bomb
# (each line 10 references to the one before) is cheap to parse -- aliases share one object --
# but its full repr grows ~10x per line; error messages quote it through this.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40
_FLOAT32_MAX = 3.4028234663852886e38


def _short(value):
    """``repr(value)``, bounded in size (and work) whatever ``value`` is."""
    return _REPR.repr(value)[:200]


class CfgNode(dict):
    """A dict whose keys are also attributes (``cfg.SOLVER.LR``), nested for sub-trees."""

    def __init__(self, init=None):
        super().__init__()
        for key, value in (init or {}).items():
            self[key] = CfgNode(value) if isinstance(value, dict) else value

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(_unknown_key_message(name, self, "")) from None

    def __setattr__(self, name, value):
        # Attribute assignment is checked like an override: a typo must not add a new key.
        if name not in self:
            raise AttributeError(_unknown_key_message(name, self, ""))
        if isinstance(self[name], CfgNode):
            raise AttributeError(f"{name} is a group of keys; set its keys one by one")
        self[name] = _coerce(value, self[name], name, "assignment")

    def __deepcopy__(self, memo):
        return CfgNode(copy.deepcopy(dict(self), memo))

    def clone(self):
        return copy.deepcopy(self)

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v) for k, v in self.items()}

    def dump(self):
        """The tree as YAML text (what ``load_config`` reads back)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def merge_from_dict(self, tree, source="config", base=None):
        """Override existing keys from a nested dict; unknown keys and wrong types raise.
        Relative :data:`PATH_KEYS` values are anchored to ``base`` (default: the current
        directory)."""
        _merge(self, tree, prefix="", source=source, base=Path.cwd() if base is None else Path(base))
        _check_choices(self, source)

    def merge_from_file(self, path):
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{raw[e.start]:02x} at "
                              f"offset {e.start}, line {line})") from None
        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e)[:500]})") from None
        except RecursionError:
            tree = _TOO_DEEP
        # a config is a few levels deep; whether a deep file overflows the parser's recursion
        # depends on the caller's stack, so the depth itself is the rule
        if tree is _TOO_DEEP or nesting_depth(tree, MAX_DEPTH) > MAX_DEPTH:
            raise ConfigError(f"{path}: not a config file: its YAML nests lists / mappings "
                              f"too deeply (more than {MAX_DEPTH} levels)") from None
        if tree is None:
            return
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level, "
                              f"got {type(tree).__name__}")
        # relative paths in the file mean "next to this file", except in the shipped configs
        # (see the module docstring)
        folder = path.resolve().parent
        shipped = folder == CONFIG_DIR or CONFIG_DIR in folder.parents
        self.merge_from_dict(tree, source=str(path), base=None if shipped else folder)

    def merge_from_list(self, overrides):
        """Apply command-line overrides ``[KEY, VALUE, KEY, VALUE, ...]`` (dotted keys)."""
        overrides = list(overrides)
        if len(overrides) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number of items: {overrides}")
        for key, text in zip(overrides[0::2], overrides[1::2]):
            node, leaf = self, key.split(".")
            for depth, part in enumerate(leaf[:-1]):
                prefix = ".".join(leaf[:depth])
                if part in node and not isinstance(node[part], CfgNode):
                    here = f"{prefix}.{part}" if prefix else part
                    raise ConfigError(
                        f"command line: {key}: {here} is a value (default {_short(node[part])}), "
                        f"not a group of keys; set it with `{here} VALUE`")
                if part not in node:
                    raise ConfigError(_unknown_key_message(part, node, prefix, source="command line"))
                node = node[part]
            prefix = ".".join(leaf[:-1])
            _merge(node, {leaf[-1]: _parse_text(text)}, prefix=prefix, source="command line",
                   base=Path.cwd())
        _check_choices(self, "command line")


def get_default_config():
    """A fresh tree holding every key with its default value."""
    return CfgNode(_DEFAULTS).clone()


def load_config(path=None, overrides=()):
    """Defaults, then the YAML file ``path`` (if given), then ``overrides`` (``[KEY, VALUE, ...]``).

    ``path`` may be a file path or the name of a shipped config relative to ``dtkd/configs``
    (``"cifar100/dtkd/res32x4_res8x4.yaml"``); see :func:`shipped_configs`.
    """
    cfg = get_default_config()
    if path is not None:
        cfg.merge_from_file(resolve_config_path(path))
    cfg.merge_from_list(overrides)
    return cfg


def resolve_config_path(path):
    """A config file path: as given if it exists, else looked up among the shipped configs."""
    given = Path(path)
    if given.is_file():
        return given
    shipped = CONFIG_DIR / path
    if shipped.is_file():
        return shipped
    names = shipped_configs()
    close = difflib.get_close_matches(str(path), names, n=5, cutoff=0.5)
    hint = f"; close shipped configs: {', '.join(close)}" if close else ""
    raise ConfigError(f"config file not found: {path} (neither a file nor a shipped config "
                      f"under {CONFIG_DIR}){hint}")


def shipped_configs():
    """Names of the configs shipped with dtkd, relative to ``dtkd/configs`` (sorted)."""
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))


# ----------------------------------------------------------------------------------------------
# Merging and type coercion

def _merge(node, tree, prefix, source, base):
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in node:
            raise ConfigError(_unknown_key_message(key, node, prefix, source))
        if isinstance(node[key], CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full} is a group of keys ({', '.join(node[key])}); "
                                  f"got a {type(value).__name__} value {_short(value)}")
            _merge(node[key], value, full, source, base)
        else:
            node[key] = _coerce(value, node[key], full, source)
            if full in PATH_KEYS and node[key]:
                node[key] = _anchor(node[key], base)


def _anchor(path, base):
    """``path`` with ``~`` expanded, made absolute against ``base`` if relative."""
    path = Path(path).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def _coerce(value, default, key, source):
    """``value`` converted to the type of ``default``, or ConfigError naming ``key``."""
    def fail(expected):
        return ConfigError(f"{source}: {key} expects {expected} (default {default!r}), "
                           f"got {type(value).__name__} {_short(value)}")

    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        value = _number_or_text(value)  # PyYAML reads "5e-4" (no dot) as a string
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise fail("an integer")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            if abs(value) >= 2 ** 63:
                raise fail("an integer within int64's range")
            return value
        raise fail("an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise fail("a finite number")
            if abs(value) > _FLOAT32_MAX:  # the kernels compute in float32 (ints: exact compare)
                raise fail(f"a number within float32's range (|x| <= {_FLOAT32_MAX:.4g})")
            return float(value)
        raise fail("a number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        if value is None:  # an empty YAML value means the empty string here
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a numeric EXPERIMENT.TAG
        if isinstance(value, bool):
            # YAML 1.1 reads off/no/false (on/yes/true) as a bool: `TEACHER_CACHE off` on the
            # command line or in a file means the choice spelled so
            words = ("on", "yes", "true") if value else ("off", "no", "false")
            spelled = [w for w in words if w in (_CHOICES.get(key) or ())]
            if spelled:
                return spelled[0]
        raise fail("a string")
    if isinstance(default, list):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `LR_DECAY_STAGES 150` on the command line: one stage
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        if default:  # elements take the type of the default's elements
            return [_coerce(v, default[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
        return list(value)
    raise fail(type(default).__name__)


def _number_or_text(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# Deepest nesting of lists / mappings a config file may have (the shipped ones use 3).
MAX_DEPTH = 32
_TOO_DEEP = object()


def _parse_text(text):
    """A command-line value: YAML scalars and flow lists (``0.1``, ``true``, ``[3, 4]``)."""
    if not isinstance(text, str):
        return text
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, RecursionError):
        return text


def _unknown_key_message(key, node, prefix, source="config"):
    full = f"{prefix}.{key}" if prefix else str(key)
    siblings = list(map(str, node))
    # Match the key as typed and upper-cased (configs use upper-case keys).
    close = difflib.get_close_matches(str(key), siblings, n=5, cutoff=0.5)
    close += difflib.get_close_matches(str(key).upper(), siblings, n=5, cutoff=0.5)
    close = [f"{prefix}.{c}" if prefix else c for c in dict.fromkeys(close)]
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    where = f" under {prefix}" if prefix else ""
    return (f"{source}: unknown config key {full!r}{hint} "
            f"(valid keys{where}: {', '.join(sorted(siblings))})")


def _check_choices(cfg, source):
    for key, allowed in _CHOICES.items():
        if allowed is None:
            from . import distill  # the registry; imported here (distill sits below config)
            allowed = tuple(distill.names())
        node = cfg
        for part in key.split("."):
            node = node[part]
        if node not in allowed:
            close = difflib.get_close_matches(str(node)[:100], allowed, n=3, cutoff=0.4)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"{source}: {key} must be one of {', '.join(map(repr, allowed))}, "
                              f"got {_short(node)}{hint}")


# ----------------------------------------------------------------------------------------------
# Defaults. mdistiller's keys and values unless marked "dtkd".

_DEFAULTS = {
    "EXPERIMENT": {"PROJECT": "distill", "NAME": "", "TAG": "default"},
    "DATASET": {
        "TYPE": "cifar100",
        "NUM_WORKERS": 2,       # accepted for mdistiller configs; dtkd's loader runs in-process
        "ROOT": "",             # dtkd: data directory; "" = $DTKD_DATA / cache / system paths
        "DOWNLOAD": False,      # dtkd: fetch missing dataset files from the official URLs (MD5-checked)
        "SUBSET": 0,            # dtkd: train on this many samples (seeded pick); 0 = all
        "AUGMENT": True,        # dtkd: random crop 32 pad 4 + horizontal flip on training batches
        "TEST": {
            "BATCH_SIZE": 64,
            "SUBSET": 0,        # dtkd: evaluate on this many test samples; 0 = all
        },
    },
    "DISTILLER": {
        "TYPE": "NONE",         # NONE = vanilla cross-entropy training (also trains teachers)
        "TEACHER": "ResNet50",
        "STUDENT": "resnet32",
        # dtkd: teacher weights, any format dtkd.io reads (PyTorch .pth/.pt, .safetensors, .npz);
        # "" = <TEACHER_DIR or $DTKD_TEACHERS or ./download_ckpts/cifar_teachers>/
        #      <TEACHER>_vanilla/ckpt_epoch_240.pth, mdistiller's layout
        "TEACHER_CHECKPOINT": "",
        "TEACHER_DIR": "",      # dtkd: teachers directory searched first (mdistiller's layout)
        # dtkd: teacher-logit cache (dtkd/engine/logit_cache.py), keyed by dataset, teacher,
        # sample and (crop, flip): "auto" = a shared file where the teacher is frozen and the
        # loader names its samples, else off; "disk", "memory" (this process), "off"
        "TEACHER_CACHE": "auto",
        "TEACHER_CACHE_DTYPE": "float32",  # dtkd: "float16" halves the size (logits rounded)
        "TEACHER_CACHE_DIR": "",    # dtkd: "" = $XDG_CACHE_HOME/dtkd/teacher_logits
        "TEACHER_CACHE_MAX_MB": 2048,  # dtkd: file size cap; beyond it first come, first kept
    },
    "SOLVER": {
        "TRAINER": "base",
        "BATCH_SIZE": 64,
        "EPOCHS": 240,
        "LR": 0.05,
        "LR_DECAY_STAGES": [150, 180, 210],
        "LR_DECAY_RATE": 0.1,
        "WEIGHT_DECAY": 0.0001,
        "MOMENTUM": 0.9,
        "NESTEROV": False,      # dtkd
        "TYPE": "SGD",
        "SCHEDULE": "step",     # dtkd: "step" (mdistiller) or "cosine"
    },
    "LOG": {
        "TENSORBOARD_FREQ": 500,   # accepted for mdistiller configs; unused
        "SAVE_CHECKPOINT_FREQ": 40,
        "PREFIX": "./output",      # runs go to PREFIX/<EXPERIMENT.NAME or derived name>
        "WANDB": False,            # accepted for mdistiller configs; dtkd never calls wandb
        "PROBE_SAMPLES": 256,      # dtkd: per-sample max logits / temperatures of this many test
                                   # images logged every epoch to probe.jsonl (0 = off)
    },
    "KD": {
        "TEMPERATURE": 4.0,
        "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9},
        "LOGIT_STAND": False,   # dtkd: z-score the logits of the KD term (Sun et al., CVPR 2024)
    },
    "DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20,
            "LOGIT_STAND": False},  # dtkd: z-scored logits in TCKD and NCKD
    # Official DTKD repository defaults (JinYu1998/DTKD, mdistiller/engine/cfg.py).
    "DTKD": {
        "ALPHA": 3.0,           # weight of L_DTKD
        "BETA": 1.0,            # weight of the vanilla KD term
        "CE_WEIGHT": 1.0,
        "T": 4.0,               # reference temperature
        "WARMUP": 20,           # epochs of linear ramp of the distillation terms
        "VARIANT": "official",  # dtkd: see _CHOICES
        "DETACH_TEMPERATURE": False,  # dtkd: treat T_s, T_t as constants in the gradient
        "RULE": "official",     # dtkd: see _CHOICES (exact: VARIANT official only)
        "LOGIT_STAND": False,   # dtkd: z-scored logits in L_DTKD and L_KD (CE on raw logits)
    },
    # dtkd: CTKD (Li et al., AAAI 2023), keys after its train_student.py options; defaults are its
    # CIFAR script's (scripts/run_cifar_distill.sh: -r 0.1 -a 0.9 --t_start 1 --t_end 20
    # --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10).
    "CTKD": {
        "MLP": "global",        # global: one learnable temperature; instance: one per sample (MLP)
        "T_START": 1.0,         # T = T_START + T_END * sigmoid(module output)
        "T_END": 20.0,
        "INIT": 1.0,            # global: the initial raw parameter (T = 1 + 20 sigmoid(1) = 15.6)
        "HIDDEN": 256,          # instance: hidden units of the temperature MLP
        "COSINE_DECAY": True,   # lambda schedule: cosine (else linear) from DECAY_MAX to DECAY_MIN
        "DECAY_MAX": 0.0,
        "DECAY_MIN": -1.0,
        "DECAY_LOOPS": 10,      # epochs over which lambda moves from DECAY_MAX to DECAY_MIN
        "CE_WEIGHT": 0.1,
        "KD_WEIGHT": 0.9,
    },
    "SEED": 0,                  # dtkd: model init and data order
    "NUM_THREADS": 0,           # dtkd: kernel threads; 0 = library default
}
