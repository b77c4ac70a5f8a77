"""safetensors files read and written with NumPy alone.

The format (huggingface/safetensors, docs "Format"): an 8-byte little-endian unsigned header
length N, N bytes of UTF-8 JSON, then one byte buffer. The JSON maps each tensor name to
``{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}`` (byte offsets into the buffer,
little-endian, C order) and may hold ``"__metadata__"``: a str -> str map. The tensors tile the
buffer without gaps or overlaps. There is no code in the format, so nothing to restrict.

dtkd implements it itself rather than depending on the ``safetensors`` package: the format is
this small, and the package would add a compiled dependency for a few dozen lines. The tests
check both directions against the package when it is installed. BF16 tensors are widened to
float32 on reading (exact); F8 types raise :class:`CheckpointError`.
"""
import collections
import json
import math
import struct
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError
from .atomic import atomic_write
from .state_dict import state_to_save

__all__ = ["load_safetensors", "save_safetensors", "safetensors_metadata", "is_safetensors"]

_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
    "C64": "<c8",
}
_NAMES = {np.dtype(code): name for name, code in _DTYPES.items() if name != "BF16"}
_MAX_HEADER = 100_000_000  # the reference implementation's limit


def is_safetensors(head):
    """True if the first bytes of a file (16 or more) look like a safetensors header."""
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 2 <= n <= _MAX_HEADER and head[8:9] == b"{"


def _read_header(path, f):
    size = f.seek(0, 2)
    f.seek(0)
    raw = f.read(8)
    if len(raw) != 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
    n = struct.unpack("<Q", raw)[0]
    if n > _MAX_HEADER or 8 + n > size:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header of {n} "
                              f"bytes in a file of {size})")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n, size - 8 - n


def safetensors_metadata(path):
    """The ``__metadata__`` map of a safetensors file (``{}`` if it has none)."""
    path = Path(path)
    with _open(path) as f:
        header, _, _ = _read_header(path, f)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: __metadata__ must be a str -> str map")
    return meta


def load_safetensors(path):
    """The tensors of a safetensors file as an OrderedDict name -> array, in file order."""
    path = Path(path)
    with _open(path) as f:
        header, start, buffer_size = _read_header(path, f)
        entries = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            entries.append((name, *_check_entry(path, name, info)))
        entries.sort(key=lambda e: e[3])  # by (begin, end): empty tensors first
        expected = 0
        for name, _, _, (begin, end) in entries:
            if begin != expected:
                raise CheckpointError(f"{path}: corrupt safetensors file (tensor {name!r} "
                                      f"starts at byte {begin}, expected {expected})")
            expected = end
        if expected != buffer_size:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file (tensors "
                                  f"cover {expected} bytes, the buffer has {buffer_size})")
        f.seek(start)
        state = collections.OrderedDict()
        for name, dtype_name, shape, (begin, end) in entries:
            buf = bytearray(end - begin)
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"{path}: truncated safetensors file")
            array = np.frombuffer(buf, dtype=_DTYPES[dtype_name]).reshape(shape)
            if dtype_name == "BF16":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            elif not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))
            state[name] = array
    return state


def _check_entry(path, name, info):
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header entry {name!r}")
    dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype_name!r}, which dtkd "
                              f"does not read (supported: {', '.join(_DTYPES)})")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)):
        raise CheckpointError(f"{path}: corrupt safetensors header entry {name!r}: {info}")
    begin, end = offsets
    if end - begin != math.prod(shape) * np.dtype(_DTYPES[dtype_name]).itemsize:
        raise CheckpointError(f"{path}: tensor {name!r} of dtype {dtype_name} and shape "
                              f"{shape} does not fit its {end - begin} bytes (corrupt file)")
    return dtype_name, tuple(shape), (begin, end)


def _open(path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None


def save_safetensors(path, model, metadata=None):
    """Write ``model`` (a dtkd Module or a mapping name -> array) as a safetensors file,
    atomically. ``metadata``: an optional str -> str map stored as ``__metadata__``."""
    state = state_to_save(model)
    header = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata: expected a mapping of str to str")
        header["__metadata__"] = dict(metadata)
    arrays, offset = [], 0
    for name, value in state.items():
        dtype = value.dtype.newbyteorder("=") if value.dtype.byteorder in "<>" else value.dtype
        dtype_name = _NAMES.get(np.dtype(dtype))
        if dtype_name is None:
            raise TypeError(f"model[{name!r}]: cannot save dtype {value.dtype} in safetensors "
                            f"(supported: {', '.join(sorted(_NAMES.values()))})")
        value = np.asarray(value, dtype=_DTYPES[dtype_name], order="C")
        header[name] = {"dtype": dtype_name, "shape": list(value.shape),
                        "data_offsets": [offset, offset + value.nbytes]}
        arrays.append(value)
        offset += value.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad so the buffer starts 8-byte aligned, as the spec allows
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for value in arrays:
            f.write(value.tobytes())
