"""PyTorch checkpoints (``.pth``, ``.pt``, ``.pth.tar``) read and written without torch.

The two formats ``torch.save`` writes (torch/serialization.py):

**zip** (torch >= 1.6, the default): a ZIP archive of uncompressed records, all in one folder
``<archive>/``::

    data.pkl      the pickled object (protocol 2). A tensor is the call
                  torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
                  backward_hooks) whose ``storage`` is the persistent id
                  ("storage", <storage type, e.g. torch.FloatStorage>, key, location, numel)
    data/<key>    the raw bytes of that storage
    byteorder     "little" or "big" (files without it are little-endian)
    version       the format version

**legacy** (torch < 1.6, or ``_use_new_zipfile_serialization=False``): one stream of pickles: the
magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, ``sys_info`` (with
``little_endian``), the object (persistent ids ``("storage", type, key, location, numel,
view_metadata)``), the sorted list of storage keys, then for each key an int64 element count
followed by the storage's raw bytes.

Reading rebuilds only tensors, dicts (and OrderedDicts), lists, tuples, numbers, strings, bytes,
None and NumPy arrays/scalars, through :class:`~dtkd.io.restricted_pickle.RestrictedUnpickler`:
any other global (``os.system``, ``builtins.eval``, a model class, ...) is refused before it
runs. A tensor becomes a NumPy array of its dtype, shape and values (strides and storage offset
applied; bfloat16 widened to float32, which is exact). Quantized and float8 tensors raise
:class:`CheckpointError`; so do truncated and corrupt files, always naming the file.

Writing (:func:`save_pth`) produces the zip format with the globals ``torch.load`` accepts
under ``weights_only=True`` (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch.<Type>Storage``), storages aligned to 64 bytes as torch aligns them (so
``torch.load(mmap=True)`` works too), written atomically.
"""
import collections
import io
import lzma
import math
import os
import pickle
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .atomic import atomic_write
from .state_dict import state_to_save
from .restricted_pickle import NUMPY_GLOBALS, RefusedGlobal, RestrictedUnpickler

__all__ = ["load_pth", "save_pth", "is_torch_zip", "LEGACY_MAGIC"]

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001

# Storage classes of the typed-storage era, by the dtype of their elements. bfloat16 has no
# NumPy dtype: its storages are read as uint16 and widened.
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1", "ComplexFloatStorage": "c8",
    "ComplexDoubleStorage": "c16",
}
_UNSUPPORTED_STORAGES = ("QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage",
                         "QUInt2x4Storage", "ComplexHalfStorage")
# dtypes as _rebuild_tensor_v3 names them (torch >= 2.1 writes it for dtypes without a
# storage class, e.g. uint16 and the float8 family).
_TORCH_DTYPES = {
    "float32": "f4", "float": "f4", "float64": "f8", "double": "f8", "float16": "f2",
    "half": "f2", "bfloat16": "bf16", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4",
    "int16": "i2", "short": "i2", "int8": "i1", "uint8": "u1", "bool": "b1", "uint16": "u2",
    "uint32": "u4", "uint64": "u8", "complex64": "c8", "cfloat": "c8", "complex128": "c16",
    "cdouble": "c16",
}
_UNSUPPORTED_DTYPES = (
    "complex32", "chalf", "quint8", "qint8", "qint32", "quint4x2", "quint2x4", "float8_e4m3fn",
    "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
    "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16",
    *(f"uint{i}" for i in range(1, 8)), *(f"int{i}" for i in range(1, 8)),
)

_HOLDS = ("a PyTorch checkpoint read by dtkd may hold only tensors, dicts, lists, tuples, "
          "numbers and strings (save the state_dict, not the model object)")


class _ElementType:
    """A torch storage class or dtype named by the pickle: inert, it only carries the dtype."""
    __slots__ = ("name", "code")

    def __init__(self, name, code):
        self.name, self.code = name, code

    def numpy_dtype(self, byteorder):
        if self.code is None:
            raise ValueError(f"unsupported tensor dtype torch.{self.name} (dtkd reads float, "
                             "int, uint, bool and complex tensors; dequantize or convert it in "
                             "PyTorch first)")
        if self.code == "bf16":
            return np.dtype(f"{byteorder}u2")
        if self.code == "b1":
            return np.dtype("?")
        return np.dtype(f"{byteorder}{self.code}")


_UNTYPED = _ElementType("UntypedStorage", "u1")


class _Storage:
    """A storage the pickle refers to: ``key`` of the file's storage records, its element type
    and element count, and (legacy views) the element offset into the record."""
    __slots__ = ("key", "etype", "numel", "start")

    def __init__(self, key, etype, numel, start=0):
        self.key, self.etype, self.numel, self.start = key, etype, numel, start


class _Tensor:
    """A tensor waiting for its storage's bytes (legacy files store them after the pickle)."""
    __slots__ = ("storage", "offset", "size", "stride", "etype")

    def __init__(self, storage, offset, size, stride, etype=None):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"tensor storage: expected a storage record, got "
                                         f"{type(storage).__name__}")
        self.storage, self.offset = storage, _index(offset, "storage offset")
        self.size, self.stride = _shape(size, "size"), _shape(stride, "stride")
        if len(self.size) != len(self.stride):
            raise pickle.UnpicklingError(f"tensor with size {self.size} and stride {self.stride}")
        self.etype = etype if etype is not None else storage.etype


def _index(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise pickle.UnpicklingError(f"tensor {what}: expected an int >= 0, got {value!r}")
    return value


def _shape(value, what):
    if not isinstance(value, (tuple, list)):
        raise pickle.UnpicklingError(f"tensor {what}: expected a tuple of ints, got {value!r}")
    return tuple(_index(v, what) for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # _rebuild_tensor(storage, offset, size, stride) and
    # _rebuild_tensor_v2(..., requires_grad, backward_hooks[, metadata]): dtkd keeps the values.
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, *_ignored):
    if not isinstance(dtype, _ElementType):
        raise pickle.UnpicklingError(f"tensor dtype: expected a torch dtype, got {dtype!r}")
    return _Tensor(storage, storage_offset, size, stride, etype=dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, *_state):
    return data  # an nn.Parameter is its tensor here


def _rebuild_from_type_v2(func, new_type, args, state):
    # how torch pickles a tensor with Python attributes: keep the tensor, drop the attributes
    if new_type not in (_TORCH_TENSOR, _TORCH_PARAMETER) or not callable(func):
        raise pickle.UnpicklingError(f"tensor subclass {new_type!r} is not supported")
    return func(*args)


_TORCH_TENSOR = _ElementType("Tensor", None)
_TORCH_PARAMETER = _ElementType("nn.Parameter", None)


def _torch_globals():
    table = dict(NUMPY_GLOBALS)
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table[("torch", "Size")] = tuple
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
        table[("torch._utils", name)] = _rebuild_tensor
    table[("torch._utils", "_rebuild_tensor_v3")] = _rebuild_tensor_v3
    for name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        table[("torch._utils", name)] = _rebuild_parameter
    table[("torch._tensor", "_rebuild_from_type_v2")] = _rebuild_from_type_v2
    table[("torch", "Tensor")] = _TORCH_TENSOR
    table[("torch.nn.parameter", "Parameter")] = _TORCH_PARAMETER
    for name, code in _STORAGE_DTYPES.items():
        table[("torch", name)] = _ElementType(name, code)
    for name in _UNSUPPORTED_STORAGES:
        table[("torch", name)] = _ElementType(name, None)
    for name, code in _TORCH_DTYPES.items():
        table[("torch", name)] = _ElementType(name, code)
    for name in _UNSUPPORTED_DTYPES:
        table[("torch", name)] = _ElementType(name, None)
    table[("torch.storage", "UntypedStorage")] = _UNTYPED
    table[("torch", "UntypedStorage")] = _UNTYPED
    return table


_GLOBALS = _torch_globals()


class _Unpickler(RestrictedUnpickler):
    """Restricted unpickler that turns storage persistent ids into :class:`_Storage` records."""

    def __init__(self, file, storages):
        super().__init__(file, _GLOBALS, _HOLDS, encoding="utf-8")
        self.storages = storages  # key -> _Storage of the whole record

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            raise pickle.UnpicklingError(
                "the file holds a pickled model object (torch.save(model)), not a state_dict; "
                "in PyTorch re-save it with torch.save({'model': model.state_dict()}, path)")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        etype, key, numel = pid[1], pid[2], pid[4]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(etype, _ElementType) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"malformed storage reference {str(pid)[:80]}")
        _index(numel, "storage size")
        root = self.storages.setdefault(key, _Storage(key, etype, numel))
        if root.etype is not etype or root.numel != numel:
            raise pickle.UnpicklingError(f"storage {key!r} is referenced with two types or sizes")
        if view is None:
            return root
        # legacy files of old torch versions: a view (view_key, offset, size) into the root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise pickle.UnpicklingError(f"malformed storage view {view!r}")
        start, count = _index(view[1], "storage view offset"), _index(view[2], "storage view size")
        if start + count > numel:
            raise pickle.UnpicklingError(f"storage view {view!r} exceeds storage {key!r}")
        return _Storage(key, etype, count, start)


# ----------------------------------------------------------------------------------------------
# Reading


def is_torch_zip(names):
    """The archive folder (``"archive/"``) if the zip member ``names`` are a torch checkpoint's."""
    for name in names:
        m = re.fullmatch(r"([^/]+/)data\.pkl", name)
        if m:
            return m.group(1)
    return None


def load_pth(path):
    """The object a ``.pth`` file holds (torch zip or legacy format), tensors as NumPy arrays.

    ``{"model": state_dict, "epoch": 240, ...}`` comes back as a dict of an OrderedDict of
    arrays and an int. Refuses any pickled global outside the allow-list (see the module
    docstring) with :class:`CheckpointError`, without running it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0)
            if head.startswith(b"PK"):
                return _load_zip(path, f)
            return _load_legacy(path, f)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, struct.error) as e:
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint "
                              f"({type(e).__name__}: {e})") from None
    except (NotImplementedError, RuntimeError, zlib.error, lzma.LZMAError) as e:
        # zipfile: NotImplementedError for a compression method it lacks, RuntimeError for an
        # encrypted member, zlib / lzma errors for a member flagged compressed whose data is not;
        # torch writes none of these (its archives are stored, unencrypted)
        raise CheckpointError(f"{path}: a zip archive PyTorch does not write (compressed or "
                              f"encrypted members: {type(e).__name__}: {e})") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            UnicodeDecodeError, MemoryError, RecursionError, OSError) as e:
        # what a damaged or hand-made pickle makes the unpickler raise
        raise CheckpointError(f"{path}: corrupt or unsupported PyTorch checkpoint "
                              f"({type(e).__name__}: {e})") from None


def _load_zip(path, f):
    with zipfile.ZipFile(f) as archive:
        names = archive.namelist()
        prefix = is_torch_zip(names)
        if prefix is None:
            raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint (no "
                                  f"<archive>/data.pkl; members: {', '.join(names[:6])})")
        byteorder = "<"
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byteorder record {order!r}")
            byteorder = "<" if order == "little" else ">"
        storages = {}
        obj = _Unpickler(io.BytesIO(archive.read(prefix + "data.pkl")), storages).load()

        def read(storage, nbytes):
            name = f"{prefix}data/{storage.key}"
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise CheckpointError(f"{path}: storage record {name} is missing "
                                      "(truncated or corrupt file)") from None
            if info.file_size != nbytes:
                raise CheckpointError(f"{path}: storage record {name} holds {info.file_size} "
                                      f"bytes, the tensor needs {nbytes} (corrupt file)")
            return bytearray(archive.read(info))  # checks the CRC

        return _materialize(obj, storages, read, byteorder, path)


def _load_legacy(path, f):
    def header_pickle():
        return _Unpickler(f, {}).load()

    try:
        magic = header_pickle()
    except RefusedGlobal:
        raise  # a plain pickle that would run code: say so, not just "not a checkpoint"
    except Exception:
        magic = None
    if magic != LEGACY_MAGIC:
        raise CheckpointError(_not_a_checkpoint_message(path))
    protocol = header_pickle()
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: legacy PyTorch checkpoint of protocol version "
                              f"{protocol!r}; dtkd reads version {LEGACY_PROTOCOL}")
    sys_info = header_pickle()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    byteorder = "<" if little else ">"
    storages = {}
    obj = _Unpickler(f, storages).load()
    keys = header_pickle()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(f"{path}: corrupt legacy checkpoint (storage key list)")
    data = {}
    for key in keys:
        count_bytes = f.read(8)
        if len(count_bytes) != 8:
            raise EOFError(f"storage {key!r} is cut off")
        count = int.from_bytes(count_bytes, "little" if little else "big", signed=True)
        storage = storages.get(key)
        if storage is None:
            raise CheckpointError(f"{path}: storage {key!r} is not referenced by the pickle "
                                  "(corrupt file)")
        if count != storage.numel:
            raise CheckpointError(f"{path}: storage {key!r} holds {count} elements, the "
                                  f"pickle says {storage.numel} (corrupt file)")
        nbytes = count * storage.etype.numpy_dtype(byteorder).itemsize
        if nbytes > os.fstat(f.fileno()).st_size - f.tell():  # before allocating it
            raise EOFError(f"storage {key!r} is cut off")
        buf = bytearray(nbytes)
        if f.readinto(buf) != nbytes:
            raise EOFError(f"storage {key!r} is cut off")
        data[key] = buf

    def read(storage, nbytes):
        try:
            return data[storage.key]
        except KeyError:
            raise CheckpointError(f"{path}: storage {storage.key!r} is missing (truncated or "
                                  "corrupt file)") from None

    return _materialize(obj, storages, read, byteorder, path)


def _not_a_checkpoint_message(path):
    return (f"{path}: not a PyTorch checkpoint (neither the zip format nor the legacy format's "
            "magic number)")


def _materialize(obj, storages, read, byteorder, path):
    """``obj`` with every :class:`_Tensor` replaced by a NumPy array (one read per storage)."""
    users = collections.Counter()
    _count_storage_users(obj, users)
    buffers = {}

    def array(t):
        try:
            dtype = t.etype.numpy_dtype(byteorder)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        root = storages[t.storage.key]
        root_dtype = root.etype.numpy_dtype(byteorder)
        if t.storage.key not in buffers:
            buffers[t.storage.key] = read(root, root.numel * root_dtype.itemsize)
        # element offset and count of the tensor's storage, in units of the tensor's dtype
        # (v3 tensors view untyped byte storages)
        scale = root_dtype.itemsize
        start_bytes = t.storage.start * scale
        storage_bytes = t.storage.numel * scale
        if start_bytes % dtype.itemsize or storage_bytes % dtype.itemsize:
            raise CheckpointError(f"{path}: storage {root.key!r} does not hold whole "
                                  f"{t.etype.name} elements (corrupt file)")
        numel = storage_bytes // dtype.itemsize
        count = math.prod(t.size)
        if count:
            last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
            if last >= numel:
                raise CheckpointError(f"{path}: a tensor of size {t.size} and stride {t.stride} "
                                      f"at offset {t.offset} overruns its storage of {numel} "
                                      "elements (corrupt file)")
        buf = buffers[t.storage.key]
        flat = np.frombuffer(buf, dtype=dtype, count=numel, offset=start_bytes)
        whole = (count == numel and t.offset == 0
                 and t.stride == _contiguous_strides(t.size) and users[root.key] == 1)
        if whole:  # the usual case: one tensor, its whole storage: no copy
            out = flat.reshape(t.size)
        else:
            out = np.lib.stride_tricks.as_strided(
                flat[t.offset:] if count else flat[:0], shape=t.size,
                strides=tuple(s * dtype.itemsize for s in t.stride)).copy()
        if t.etype.code == "bf16":  # bfloat16 is the top half of a float32: widen exactly
            return (out.astype(np.uint32) << 16).view(np.float32)
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return out

    def walk(node):
        if isinstance(node, _Tensor):
            return array(node)
        if isinstance(node, dict):
            out = type(node)() if type(node) in (dict, collections.OrderedDict) else {}
            for k, v in node.items():
                out[k] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, tuple):
            return tuple(walk(v) for v in node)
        if isinstance(node, (_Storage, _ElementType)):
            raise CheckpointError(f"{path}: holds a bare torch storage or dtype object, which "
                                  "dtkd does not rebuild")
        return node

    return walk(obj)


def _count_storage_users(node, users):
    if isinstance(node, _Tensor):
        users[node.storage.key] += 1
    elif isinstance(node, dict):
        for v in node.values():
            _count_storage_users(v, users)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _count_storage_users(v, users)


def _contiguous_strides(size):
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


# ----------------------------------------------------------------------------------------------
# Writing

# NumPy dtype -> the torch storage class torch.load rebuilds it with
_WRITE_STORAGES = {
    np.dtype("f4"): "FloatStorage", np.dtype("f8"): "DoubleStorage", np.dtype("f2"): "HalfStorage",
    np.dtype("i8"): "LongStorage", np.dtype("i4"): "IntStorage", np.dtype("i2"): "ShortStorage",
    np.dtype("i1"): "CharStorage", np.dtype("u1"): "ByteStorage", np.dtype("?"): "BoolStorage",
}
_ALIGNMENT = 64  # torch aligns each storage record's data to 64 bytes (for mmap loading)


def save_pth(path, model, key="model", extra=None):
    """Write a checkpoint that ``torch.load(path)`` (also ``weights_only=True``) reads back.

    model : a dtkd Module (its ``state_dict()``) or a mapping name -> array.
    key : the entry holding the state_dict, ``"model"`` as mdistiller's and the official DTKD
        repository's loaders expect (``torch.load(path)["model"]``); ``None`` writes the bare
        state_dict.
    extra : other top-level entries (e.g. ``{"epoch": 240, "best_acc": 71.2}``): numbers,
        strings, bools, None, arrays, and lists / tuples / str-keyed dicts of them.

    Arrays must be float16/32/64, int8/16/32/64, uint8 or bool. The file is written atomically
    (temp file + fsync + rename).
    """
    state = state_to_save(model)
    if key is None:
        if extra:
            raise ValueError("extra: needs key= (a bare state_dict has no room for other entries)")
        obj = state
    else:
        if not isinstance(key, str):
            raise TypeError(f"key: expected a str or None, got {type(key).__name__}")
        obj = {key: state}
        for name, value in (extra or {}).items():
            if not isinstance(name, str) or name == key:
                raise ValueError(f"extra: keys must be strings other than {key!r}, got {name!r}")
            obj[name] = value
    writer = _PickleWriter()
    pickled = writer.dump(obj)
    prefix = "archive/"
    with atomic_write(path) as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            _write_record(archive, f, prefix + "data.pkl", pickled)
            _write_record(archive, f, prefix + "byteorder", b"little")
            for storage_key, data in writer.storages:
                _write_record(archive, f, f"{prefix}data/{storage_key}", data)
            _write_record(archive, f, prefix + "version", b"3\n")


def _write_record(archive, f, name, data):
    # Pad the local header's extra field (id "FB", as torch does) so the data starts on a
    # 64-byte boundary: local header 30 bytes + name + extra.
    encoded = name.encode("utf-8")
    start = f.tell() + 30 + len(encoded) + 4
    pad = -start % _ALIGNMENT
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    archive.writestr(info, bytes(data) if not isinstance(data, bytes) else data)


class _PickleWriter:
    """Pickle protocol 2 written opcode by opcode: the only globals it names are the three
    that ``torch.load`` rebuilds tensors with, without importing them here."""

    def __init__(self):
        self.out = bytearray()
        self.storages = []  # (key, bytes) in order

    def dump(self, obj):
        self.out += b"\x80\x02"  # PROTO 2
        self._save(obj, "obj")
        self.out += b"."  # STOP
        return bytes(self.out)

    def _global(self, module, name):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def _str(self, s):
        data = s.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(data)) + data

    def _int(self, v):
        if 0 <= v < 256:
            self.out += b"K" + struct.pack("<B", v)
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -2**31 <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            data = pickle.encode_long(v)
            self.out += b"\x8a" + struct.pack("<B", len(data)) + data  # LONG1

    def _save(self, obj, where):
        out = self.out
        if obj is None:
            out += b"N"
        elif obj is True or obj is False:
            out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, np.ndarray):
            self._tensor(obj, where)
        elif isinstance(obj, np.generic):
            self._save(obj.item(), where)
        elif isinstance(obj, int):
            self._int(int(obj))
        elif isinstance(obj, float):
            out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            self._str(obj)
        elif isinstance(obj, dict):
            if type(obj) is collections.OrderedDict:
                self._global("collections", "OrderedDict")
                out += b")R"  # OrderedDict()
            else:
                out += b"}"  # EMPTY_DICT
            if obj:
                out += b"("  # MARK
                for k, v in obj.items():
                    if not isinstance(k, (str, int)) or isinstance(k, bool):
                        raise TypeError(f"{where}: dict keys must be str or int, got {k!r}")
                    self._save(k, where)
                    self._save(v, f"{where}[{k!r}]")
                out += b"u"  # SETITEMS
        elif isinstance(obj, list):
            out += b"]"  # EMPTY_LIST
            if obj:
                out += b"("
                for i, v in enumerate(obj):
                    self._save(v, f"{where}[{i}]")
                out += b"e"  # APPENDS
        elif isinstance(obj, tuple):
            out += b"("
            for i, v in enumerate(obj):
                self._save(v, f"{where}[{i}]")
            out += b"t"  # TUPLE
        else:
            raise TypeError(f"{where}: cannot save a {type(obj).__name__} in a .pth file "
                            "(allowed: arrays, dicts, lists, tuples, numbers, str, bool, None)")

    def _tensor(self, a, where):
        dtype = a.dtype.newbyteorder("=") if a.dtype.byteorder in "<>" else a.dtype
        storage_type = _WRITE_STORAGES.get(np.dtype(dtype))
        if storage_type is None:
            raise TypeError(f"{where}: cannot save dtype {a.dtype} in a .pth file (float16/32/"
                            "64, int8/16/32/64, uint8 and bool are supported)")
        # (np.asarray, not ascontiguousarray, which turns a 0-d array into a 1-d one)
        a = np.asarray(a, dtype=np.dtype(dtype).newbyteorder("<"), order="C")
        key = str(len(self.storages))
        self.storages.append((key, a.tobytes()))
        out = self.out
        self._global("torch._utils", "_rebuild_tensor_v2")
        out += b"(("  # MARK for the args, MARK for the persistent id
        self._str("storage")
        self._global("torch", storage_type)
        self._str(key)
        self._str("cpu")
        self._int(a.size)
        out += b"tQ"  # TUPLE, BINPERSID
        self._int(0)  # storage offset
        for dims in (a.shape, _contiguous_strides(a.shape)):
            out += b"("
            for d in dims:
                self._int(d)
            out += b"t"
        out += b"\x89"  # requires_grad False
        self._global("collections", "OrderedDict")
        out += b")R"  # backward_hooks: OrderedDict()
        out += b"tR"  # TUPLE, REDUCE
