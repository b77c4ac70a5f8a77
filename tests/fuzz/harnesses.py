"""Fuzz harnesses: one per public binding family of dtkd. Each takes a byte string, builds a call
from it (dtypes, shapes including 0 and huge, non-contiguous / negative / misaligned strides,
NaN/Inf and extreme values, random file bytes) and checks the contract every public function
has: the call returns a sane result or raises a documented exception whose message names what
is wrong. Anything else -- a crash, a hang (the drivers' timeouts), an undocumented exception, a
silently non-finite or impossible result -- is a finding.

Two drivers feed the same functions:
- tests/fuzz/test_fuzz_seeded.py: a few hundred inputs per harness from a seeded generator, in
  the default test run (seconds, no atheris needed);
- benchmarks/fuzz.py: atheris (libFuzzer, coverage-guided on dtkd's Python layer) for a fixed
  time per harness, with crash, timeout and RSS limits.

Findings already filed (issue 13, "What a probe ... already found"; fixed on the `hardening`
branch) are listed in KNOWN: a finding matching one is counted as known instead of failing.
Drop an entry once its fix has landed. Adding a file parser is one line in PARSERS.
"""
import collections
import contextlib
import io
import json
import math
import os
import pickle
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

import dtkd
import dtkd.nn as nn
from dtkd import _C, losses


class Finding(AssertionError):
    """A violation of the contract (see the module docstring)."""


class KnownFinding(Exception):
    """A finding that matches an entry of KNOWN (its .key says which)."""

    def __init__(self, key, detail):
        super().__init__(f"{key}: {detail}")
        self.key = key


# ---- the byte-driven input provider --------------------------------------------------------

class Input:
    """Draws ints, floats, choices and arrays from fuzz bytes (zeros once they run out), so
    that the same bytes always build the same call and small byte changes make small changes."""

    def __init__(self, data):
        self.data, self.pos = bytes(data), 0

    def byte(self):
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int(self, lo, hi):
        """An int in [lo, hi]."""
        span = hi - lo + 1
        value = 0
        for _ in range(max(1, (span.bit_length() + 7) // 8)):
            value = value << 8 | self.byte()
        return lo + value % span

    def choice(self, options):
        return options[self.int(0, len(options) - 1)]

    def bool(self):
        return self.byte() & 1 == 1

    def float(self):
        """Mostly ordinary numbers; sometimes 0, +-inf, NaN, denormals and float32's edges."""
        kind = self.int(0, 15)
        if kind < 8:
            return (self.int(0, 2 ** 16) - 2 ** 15) / 2 ** 10
        return self.choice([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 1e-45, 1e-38,
                            3.4e38, -3.4e38, 1e39, 1e-50, 1e20, -1e20, 1e300, 4.0, 1e4, 1e6,
                            0.5, 2.0, 100.0, -87.5, 88.8])

    def scale(self):
        return self.choice([1.0, 1.0, 1.0, 3.0, 10.0, 1e-3, 1e-30, 1e-38, 100.0, 1e6, 1e20,
                            1e30, 1e37, 3e38])

    def shape(self, ndim, sizes=(2, 3, 1, 4, 5, 7, 8, 16, 0)):
        return tuple(self.choice(sizes) for _ in range(ndim))

    def array(self, shape, dtypes=("float32",) * 6 + ("float64", "float16", "int64", "int32",
                                                       "uint8", "bool", ">f4", "complex64")):
        """An array of ``shape`` with a random dtype, values, specials and memory layout."""
        rng = np.random.default_rng(self.int(0, 2 ** 32 - 1))
        dtype = np.dtype(self.choice(dtypes))
        size = math.prod(shape)
        if size > 2 ** 24:  # a shape derived from a huge one: a zero-stride view, no memory
            return np.broadcast_to(np.ones((), dtype), shape)
        values = rng.standard_normal(size) * self.scale() + self.float() * self.bool()
        for _ in range(self.int(0, 7) // 4 * self.int(1, 3) if size else 0):  # some specials
            values[self.int(0, size - 1)] = self.float()
        a = np.asarray(values.reshape(shape))
        with np.errstate(all="ignore"):
            if dtype.kind in "iub":
                a = np.nan_to_num(a, posinf=0, neginf=0)
                a = np.clip(a, -1e6, 1e6).astype(dtype) if dtype.kind != "b" else a > 0
            else:
                a = a.astype(dtype)
        return self.layout(a)

    def layout(self, a):
        """``a``'s values in a random memory layout: C, Fortran, strided, reversed, unaligned."""
        kind = self.int(0, 11)  # 0-5: as is (C-contiguous, aligned)
        if kind == 11 and a.ndim:
            big = np.repeat(a, 2, axis=-1)  # same values at a stride of 2
            return big[..., ::2]
        if kind == 6 and a.ndim:
            return np.ascontiguousarray(a[..., ::-1])[..., ::-1]  # negative stride
        if kind == 7:
            return np.asfortranarray(a)
        if kind == 8 and a.itemsize > 1:
            raw = np.zeros(a.nbytes + 1, np.uint8)
            unaligned = raw[1:].view(a.dtype).reshape(a.shape)  # misaligned by one byte
            unaligned[...] = a
            return unaligned
        if kind == 9:
            a = a.copy()
            a.flags.writeable = False
            return a
        return a

    def huge_shape(self, ndim):
        """A shape whose element count cannot be allocated (>= 2**40 elements), or overflows."""
        dims = [self.choice([1, 2, 3]) for _ in range(ndim)]
        dims[self.int(0, ndim - 1)] = self.choice([2 ** 40, 2 ** 45, 2 ** 62])
        return tuple(dims)

    def broadcast_huge(self, ndim):
        """A read-only zero-stride view of a huge shape: no memory, but a huge size."""
        try:
            return np.broadcast_to(np.float32(1.0), self.huge_shape(ndim))
        except ValueError:  # NumPy refuses sizes that overflow
            return np.broadcast_to(np.float32(1.0), (2 ** 40, 1)[:ndim] if ndim <= 2 else
                                   (2 ** 40,) + (1,) * (ndim - 1))


# ---- what counts as a finding ------------------------------------------------------------------

DOCUMENTED = (ValueError, TypeError, MemoryError)  # ValueError covers CheckpointError, ConfigError


def finite_result(value, what):
    """Every float in a returned result is finite (the inputs were checked to be)."""
    for name, x in _floats(value):
        if not np.all(np.isfinite(x)):
            raise Finding(f"{what}: returned a non-finite {name} for finite inputs")


def _floats(value, name="result"):
    if isinstance(value, (float, np.floating)):
        yield name, np.float64(value)
    elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
        yield name, value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _floats(v, f"{name}[{i}]")
    elif isinstance(value, losses.LossResult):
        for field in ("loss", "grad", "t_student", "t_teacher"):
            v = getattr(value, field, None)
            if v is not None:
                yield from _floats(v, field)


#: (what, outcome) -> count: which calls returned ("ok") and which raised what, so a driver can
#: show that the harnesses reach the kernels rather than stopping at argument checks.
OUTCOMES = collections.Counter()


def call(what, fn, *args, **kwargs):
    """fn(*args, **kwargs): its result, or None after a documented exception with a message."""
    try:
        result = fn(*args, **kwargs)
        OUTCOMES[what, "ok"] += 1
        return result
    except DOCUMENTED as e:
        OUTCOMES[what, type(e).__name__] += 1
        if not str(e):
            raise Finding(f"{what}: {type(e).__name__} without a message") from e
        return None
    except Exception as e:
        raise Finding(f"{what}: undocumented {type(e).__name__}: {e}"[:500]) from e


def classify(case, finding):
    """Raise KnownFinding if ``finding`` in ``case`` matches a KNOWN entry, else re-raise it."""
    for key, matches in KNOWN.items():
        if matches(case, finding):
            raise KnownFinding(key, str(finding)[:300]) from finding
    raise finding


def _max_abs(case, keys):
    m = 0.0
    for k in keys:
        v = case.get(k)
        if isinstance(v, np.ndarray) and v.size and v.dtype.kind in "fiu":
            with np.errstate(all="ignore"):
                m = max(m, float(np.nanmax(np.abs(v.astype(np.float64)))))
        elif isinstance(v, float) and math.isfinite(v):
            m = max(m, abs(v))
    return m


# Findings of the issue-13 probe not fixed yet, each keyed by its bullet and matched by input
# class (key -> function(case, finding) -> bool). Empty: every probe finding is fixed and tested
# (tests/test_probe_findings.py); add an entry only for a filed, not-yet-fixed finding.
KNOWN = {}


def run_case(case, body):
    """Run ``body()``; a Finding is classified against KNOWN with ``case``."""
    try:
        body()
    except Finding as f:
        classify(case, f)


# ---- losses --------------------------------------------------------------------------------

LOSS_FUNCTIONS = ("softmax", "log_softmax", "logsumexp", "sharpness", "dynamic_temperatures",
                  "cross_entropy", "kd", "dtkd", "dkd", "dtkd_objective", "dkd_objective")


def fuzz_losses(data):
    inp = Input(data)
    name = inp.choice(LOSS_FUNCTIONS)
    if inp.int(0, 15) == 15:
        shape = inp.huge_shape(2)
        student = teacher = inp.broadcast_huge(2)
    else:
        shape = inp.shape(2, sizes=(3, 8, 2, 1, 5, 10, 100, 0))
        if inp.int(0, 7) == 7:
            shape = (shape[0],)  # a wrong number of dimensions
        student = inp.array(shape)
        teacher = inp.array(shape if inp.int(0, 7) < 7 else inp.shape(2))
    n = shape[0] if shape else 0
    c = shape[1] if len(shape) > 1 else 1
    labels = inp.array((n if inp.int(0, 7) < 7 and n < 10 ** 6 else inp.int(0, 9),),
                       dtypes=("int64", "int64", "int32", "float32", "uint8"))
    if labels.dtype.kind == "i" and c and inp.int(0, 3) < 3:
        labels = np.abs(labels.astype(np.int64)) % c  # mostly valid: the loss itself is reached
    kwargs = {}
    if name not in ("cross_entropy",):
        kwargs["temperature"] = inp.choice([4.0, 4.0, 1.0, 2.0, inp.float(), 0.5, 0.0, -1.0, 1e-8])
    if name in ("kd", "dtkd", "dkd", "cross_entropy"):
        kwargs["reduction"] = inp.choice(["mean", "sum", "none", "mean", "bad"])
    if name in ("dkd", "dtkd_objective", "dkd_objective"):
        kwargs["alpha"] = inp.choice([1.0, 3.0, inp.float()])
        kwargs["beta"] = inp.choice([1.0, 8.0, inp.float()])
    if name in ("dtkd_objective", "dkd_objective"):
        kwargs["gamma"] = inp.choice([1.0, inp.float()])
        kwargs["epoch"] = inp.choice([1, 5, 20, 0, -1, 10 ** 30])
        kwargs["warmup"] = inp.choice([20, 1, 0, -5])
    if name in ("dtkd", "dtkd_objective"):
        kwargs["detach_temperature"] = inp.bool()
    if name in ("dkd", "dkd_objective") and inp.bool():
        kwargs["dynamic_temperature"] = inp.choice([None, "tckd", "nckd", "both", "x"])
    fn = getattr(losses, name)
    args = {"softmax": (student,), "log_softmax": (student,), "logsumexp": (student,),
            "sharpness": (student,), "cross_entropy": (student, labels)}.get(name)
    if args is None:
        args = (student, teacher, labels) if name in ("dkd", "dtkd_objective", "dkd_objective") \
            else (student, teacher)
    if name == "temperature" or name in ("softmax", "log_softmax", "logsumexp", "sharpness"):
        kwargs = {"temperature": kwargs["temperature"]}
    case = {"family": "losses", "fn": name, "student": student, "teacher": teacher,
            "labels": labels, **kwargs}

    def body():
        result = call(f"losses.{name}", fn, *args, **kwargs)
        if result is None:
            return
        finite_result(result, f"losses.{name}")
        if name in ("kd", "dtkd") and kwargs.get("reduction") != "none":
            if float(result.loss) < -1e-3 * max(1.0, abs(float(result.loss))):
                raise Finding(f"losses.{name}: negative KL divergence {result.loss}")

    run_case(case, body)


# ---- nn kernels: dtkd._C directly and the dtkd.nn layers ------------------------------------

f32 = ("float32",) * 16 + ("float64", "int64", ">f4", "float16")  # mostly the dtype _C takes

def fuzz_nn(data):
    inp = Input(data)
    which = inp.int(0, 13)
    geom = [inp.choice([1, 1, 2, 0, -1, 3, 2 ** 40]) for _ in range(2)] + \
           [inp.choice([1, 0, 1, 2, -1, 5]) for _ in range(2)] + [inp.choice([1, 1, 1, 2, 0, 3])]
    N, C, H, W, O = (inp.choice([2, 3, 1, 4, 8, 5, 2, 3, 4, 1, 6, 0]) for _ in range(5))
    K = inp.choice([3, 1, 3, 5, 0, 2])
    x = inp.array((N, C, H, W), f32) if inp.int(0, 15) < 15 else inp.broadcast_huge(4)
    w = inp.array((O, C, K, K) if inp.int(0, 7) < 7 else inp.shape(4), f32)
    dy = inp.array(inp.shape(4) if inp.int(0, 3) == 3 else (N, O, H, W), f32)
    vec = lambda n: inp.array((n,) if inp.int(0, 7) < 7 else (inp.int(0, 9),), f32)
    case = {"family": "nn", "which": which, "x": x, "w": w, "dy": dy}
    threads = inp.choice([None, None, 1, 2, 3, 16, 10 ** 6, 0, dtkd.MAX_THREADS + 1])

    def body():
        saved = dtkd.get_num_threads()
        if threads is not None:  # out of [1, MAX_THREADS]: a ValueError, the count unchanged
            call("dtkd.set_num_threads", dtkd.set_num_threads, threads)
        try:
            nn_call(inp, which, x, w, dy, vec, geom, C, O)
        finally:
            dtkd.set_num_threads(saved)

    run_case(case, body)


def nn_call(inp, which, x, w, dy, vec, geom, C, O):
    sh, sw, ph, pw, groups = geom
    finite_in = all(np.all(np.isfinite(a)) for a in (x, w, dy) if a.dtype.kind == "f"
                    and a.size < 10 ** 7)
    def checker(*arrays):
        """Require a finite result when every input is finite and below 1e10 (above, the true
        result may exceed float32: the direct paths then return Inf, a documented limit)."""
        ok = all(a.dtype.kind != "f" or (a.size < 10 ** 7 and np.all(np.isfinite(a)))
                 for a in arrays) and max(
            float(np.max(np.abs(a.astype(np.float64)))) if a.size and a.size < 10 ** 7 else 0.0
            for a in arrays) < 1e10
        return (lambda r, what: finite_result(r, what)) if ok else (lambda r, what: None)

    check = checker(x, w, dy)
    # Winograd and batch norm at any magnitude (issue 13: they overflowed near 1e37): a finite
    # result or a documented error about float32's range, never a silent Inf/NaN
    strict = (lambda r, what: finite_result(r, what)) if finite_in else (lambda r, what: None)
    if which == 0:
        check(call("_C.conv2d_forward", _C.conv2d_forward, x, w, vec(O) if inp.bool() else None,
                   sh, sw, ph, pw, groups), "conv2d_forward")
    elif which == 1:
        dw = inp.array(w.shape, ("float32",)) if inp.int(0, 3) < 3 else None
        if w.ndim == 4 and x.ndim == 4 and inp.int(0, 3) < 3:  # dy of the output's shape
            oh, ow = ((x.shape[i] + 2 * p - w.shape[i]) // s + 1 if s > 0 else 1
                      for i, p, s in ((2, ph, sh), (3, pw, sw)))
            dy = inp.array((x.shape[0], w.shape[0], max(oh, 0), max(ow, 0)), f32)
            check = checker(x, w, dy)  # the gradient actually passed decides (found by atheris)
        check(call("_C.conv2d_backward", _C.conv2d_backward, dy, x, w, sh, sw, ph, pw, groups,
                   dw, vec(O) if inp.bool() else None, inp.bool()), "conv2d_backward")
    elif which == 2:
        check(call("_C.conv3x3_backward_weight", _C.conv3x3_backward_weight, dy, x,
                   inp.array((dy.shape[1] if dy.ndim > 1 else 1, C, 3, 3), ("float32",))),
              "conv3x3_backward_weight")
    elif which == 3:
        strict(call("_C.winograd_conv3x3_forward", _C.winograd_conv3x3_forward, x, w),
               "winograd_conv3x3_forward")
    elif which == 4:
        strict(call("_C.winograd_conv3x3_backward_input", _C.winograd_conv3x3_backward_input,
                    dy, w, inp.choice([2, 4, 4, 3])), "winograd_conv3x3_backward_input")
    elif which == 13:
        dw = inp.array((dy.shape[1] if dy.ndim > 1 else 1, C, 3, 3), ("float32",))
        dw_finite = dw.dtype == np.float32 and bool(np.all(np.isfinite(dw)))
        call("_C.winograd_conv3x3_backward_weight", _C.winograd_conv3x3_backward_weight, dy, x,
             dw, inp.choice([2, 4, 4, 3]))
        if dw_finite:  # accumulated in place: finite, or a range error that left it as it was
            strict(dw, "winograd_conv3x3_backward_weight")
    elif which == 5:
        out = call("_C.batchnorm2d_forward_train", _C.batchnorm2d_forward_train, x, vec(C),
                   vec(C), vec(C) if inp.bool() else None, vec(C) if inp.bool() else None,
                   inp.choice([0.1, 0.0, 1.0, 2.0, inp.float()]),
                   inp.choice([1e-5, 0.0, inp.float()]))
        strict(out, "batchnorm2d_forward_train")
    elif which == 6:
        call("_C.batchnorm2d_forward_eval", _C.batchnorm2d_forward_eval, x, vec(C), vec(C),
             vec(C), np.abs(vec(C)) if inp.bool() else vec(C), inp.choice([1e-5, inp.float()]))
    elif which == 7:
        kind = inp.choice([nn.MaxPool2d, nn.AvgPool2d])
        layer = call(kind.__name__, kind, inp.choice([1, 2, 3]), stride=inp.choice([None, 1, 2]),
                     padding=inp.choice([0, 1]))
        y = layer and call(f"nn.{kind.__name__}", layer, x)
        if y is not None:
            call(f"nn.{type(layer).__name__}.backward", layer.backward,
                 inp.array(y.shape, ("float32",)) if inp.int(0, 3) < 3 else dy)
    elif which == 8:
        layer = nn.Linear(inp.choice([3, 1, 8]), inp.choice([4, 1]), bias=inp.bool())
        z = inp.array((inp.choice([2, 1, 0, 3]), layer.weight.data.shape[1]) if inp.int(0, 3) < 3
                      else inp.shape(2), f32)
        y = call("nn.Linear", layer, z)
        if y is not None:
            call("nn.Linear.backward", layer.backward, inp.array(y.shape, f32))
    elif which == 9:
        layer = nn.BatchNorm2d(max(C, 1))
        layer.train(not inp.bool())
        y = call("nn.BatchNorm2d", layer, x)
        if y is not None:
            call("nn.BatchNorm2d.backward", layer.backward, inp.array(y.shape, f32))
    elif which == 10:
        layer = call("nn.Conv2d", nn.Conv2d, max(C, 1), max(O, 1), inp.choice([1, 3]),
                     stride=inp.choice([1, 2]), padding=inp.choice([0, 1]), bias=inp.bool())
        y = layer and call("nn.Conv2d", layer, x)
        if y is not None:
            g = inp.array(y.shape, f32) if inp.int(0, 3) < 3 else dy
            # the gradient actually passed decides (the case's dy may not be it): below 1e10 a
            # finite result is required; above, the true gradient may exceed float32
            small = all(a.dtype.kind == "f" and a.size < 10 ** 7 and np.all(np.isfinite(a)) and (
                not a.size or float(np.max(np.abs(a.astype(np.float64)))) < 1e10) for a in (x, g))
            r = call("nn.Conv2d.backward", layer.backward, g)
            if small:
                finite_result(r, "nn.Conv2d.backward")
    elif which == 11:
        p = inp.array(inp.shape(1, sizes=(0, 1, 5)), ("float32",))
        call("_C.sgd_step", _C.sgd_step, [p], [inp.array(p.shape, f32)],
             [inp.array(p.shape, ("float32",))] if inp.bool() else None,
             inp.choice([0.1, inp.float()]), inp.choice([0.0, 0.9, inp.float()]), 0.0,
             inp.choice([0.0, 5e-4]),
             inp.bool())
    else:
        a = inp.array(inp.shape(2), f32)
        b = inp.array(inp.shape(2) if inp.bool() else (a.shape[1] if a.ndim == 2 else 1, 3), f32)
        call("_C.sgemm", _C.sgemm, a, b, inp.bool(), inp.bool())


# ---- file parsers ------------------------------------------------------------------------------

def _cifar_seed():
    rng = np.random.default_rng(0)
    return pickle.dumps({b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                         b"fine_labels": [1, 5, 99], b"coarse_labels": [0, 1, 19],
                         b"filenames": [b"a.png", b"b.png", b"c.png"]}, protocol=2)


def _idx_seed():
    return struct.pack(">4s3I", bytes((0, 0, 8, 3)), 2, 4, 3) + bytes(range(24))


def _config_seed():
    return (b"DISTILLER:\n  TYPE: DTKD\n  TEACHER: resnet32x4\n  STUDENT: resnet8x4\n"
            b"SOLVER:\n  EPOCHS: 240\n  LR: 0.05\n  LR_DECAY_STAGES: [150, 180, 210]\n"
            b"DTKD:\n  ALPHA: 3.0\n  T: 4.0\n")


def _checkpoint_seed():
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.npz"
        dtkd.io.save(path, {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                                      "n": np.array(3)}, "epoch": 2, "history": [{"a": 1.5}]})
        return path.read_bytes()


def _saved(suffix, writer):
    """The bytes of a small state_dict written by ``writer(path, state)``."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"seed{suffix}"
        writer(path, {"conv1.weight": np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3),
                      "bn1.num_batches_tracked": np.array(3, np.int64)})
        return path.read_bytes()


def _read_cifar(path):
    from dtkd.data.cifar import _parse_split_file
    return _parse_split_file(path.read_bytes(), str(path), "fine_labels", 100)


def _logit_cache_seed():
    from dtkd.engine.logit_cache import LogitCache
    with tempfile.TemporaryDirectory() as d:
        cache = LogitCache.open(Path(d) / "seed.logits", 6, 3, dataset="d", teacher="t")
        cache.insert([1, 4], np.arange(6, dtype=np.float32).reshape(2, 3))
        cache.close()
        return (Path(d) / "seed.logits").read_bytes()


def _read_logit_cache(path):
    """Open a teacher-logit cache file and read every key (a table that opens must work)."""
    from dtkd.engine.logit_cache import LogitCache
    cache = LogitCache.open(path, 6, 3, dataset="d", teacher="t")
    try:
        cache.lookup(np.arange(6))
        cache.insert(np.arange(6), np.ones((6, 3), np.float32))
    finally:
        cache.close()


def _read_config(path):
    from dtkd.config import load_config
    return load_config(str(path))


# name -> (suffix, reader(path), seed-file maker). One line per parser; .pth and safetensors
# readers (branch `interop`) go here too.
PARSERS = {
    "cifar_pickle": ("", _read_cifar, _cifar_seed),
    "idx": ("", lambda p: __import__("dtkd.data", fromlist=["read_idx"]).read_idx(p, 3), _idx_seed),
    "idx_gz": (".gz", lambda p: __import__("dtkd.data", fromlist=["read_idx"]).read_idx(p, 3),
               lambda: __import__("gzip").compress(_idx_seed())),
    "config": (".yaml", _read_config, _config_seed),
    "checkpoint": (".npz", lambda p: dtkd.io.load(p), _checkpoint_seed),
    "pth": (".pth", lambda p: dtkd.io.load_pth(p), lambda: _saved(".pth", dtkd.io.save_pth)),
    "safetensors": (".safetensors", lambda p: dtkd.io.load_safetensors(p),
                    lambda: _saved(".safetensors", dtkd.io.save_safetensors)),
    "logit_cache": (".logits", _read_logit_cache, _logit_cache_seed),
}
_SEEDS = {}


def mutate(inp, seed):
    """``seed`` with a few byte-level edits (flip, set, insert, delete, truncate, splice)."""
    b = bytearray(seed)
    for _ in range(inp.int(1, 8)):
        op = inp.int(0, 6)
        at = inp.int(0, max(len(b) - 1, 0))
        if op == 0 and b:
            b[at] ^= 1 << inp.int(0, 7)
        elif op == 1 and b:
            b[at] = inp.choice([0, 0xFF, 0x7F, 0x80, ord("["), ord("{"), ord("&"), ord("*")])
        elif op == 2:
            b[at:at] = bytes(inp.byte() for _ in range(inp.int(1, 16)))
        elif op == 3 and b:
            del b[at:at + inp.int(1, 16)]
        elif op == 4:
            del b[at:]
        elif op == 5 and len(b) >= 4:  # a 32-bit field set to an extreme (sizes, counts)
            b[at:at + 4] = struct.pack(">I", inp.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x40000000]))
        else:
            b[at:at] = bytes(b[inp.int(0, max(len(b) - 1, 0)):][:inp.int(1, 64)])
    return bytes(b)


def fuzz_parser(name, data, workdir):
    suffix, reader, seed = PARSERS[name]
    inp = Input(data)
    if name not in _SEEDS:
        _SEEDS[name] = seed()
    raw = bytes(data[1:]) if inp.int(0, 3) == 3 else mutate(inp, _SEEDS[name])
    path = Path(workdir) / f"fuzz_{name}{suffix}"
    path.write_bytes(raw)
    case = {"family": "parser", "parser": name}

    def body():
        try:
            reader(path)
        except DOCUMENTED as e:
            if str(path) not in str(e) and path.name not in str(e):
                raise Finding(f"{name}: {type(e).__name__} does not name the file: {e}"[:500])
        except FileNotFoundError as e:
            raise Finding(f"{name}: FileNotFoundError for an existing file: {e}")
        except Exception as e:
            raise Finding(f"{name}: undocumented {type(e).__name__}: {e}"[:500]) from e

    run_case(case, body)


# ---- the registry the drivers use --------------------------------------------------------------

def harnesses(workdir):
    """name -> function(bytes) for every harness; parsers write into ``workdir``."""
    found = {"losses": fuzz_losses, "nn": fuzz_nn}
    for name in PARSERS:
        found[f"parser_{name}"] = lambda data, name=name: fuzz_parser(name, data, workdir)
    return found


@contextlib.contextmanager
def quiet_numpy():
    with np.errstate(all="ignore"):
        yield
