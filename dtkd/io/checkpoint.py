"""dtkd's own checkpoint format: a NumPy ``.npz`` archive that needs no pickle.

A checkpoint holds a *tree*: nested dicts and lists whose leaves are NumPy arrays or plain
JSON values (numbers, strings, bools, None). Arrays are stored as ``.npy`` members named
``a0``, ``a1``, ...; the tree's structure, with each array replaced by a reference to its member,
is stored as UTF-8 JSON in the member ``__dtkd__``, next to a format name and version::

    {"format": "dtkd-checkpoint", "version": 2, "checksum": "sha256:9f2c...",
     "tree": {"model": {"fc.weight": {"__array__": "a0"}}}}

``checksum`` (version 2) is the SHA-256 of the tree's canonical JSON and of every array's name,
dtype, shape and bytes, computed from the arrays in memory before writing and checked after
reading: it catches what zip's per-member CRC32 cannot (a member swapped, dropped or replaced by
a self-consistent one, a writer bug). Version 1 files (no checksum) still load; a file from a
newer dtkd is refused with the version it has.

Loading never unpickles (``allow_pickle=False``), so a checkpoint from an untrusted source cannot
run code. Saving is atomic: the archive is written to a temporary file in the same directory,
flushed and fsynced, then renamed over the target (``os.replace``), so an interrupted save leaves
the previous checkpoint intact. Zip's per-member CRC32 detects corrupt data on load.
"""
import hashlib
import json
import lzma
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .._validate import nesting_depth
from .atomic import atomic_write

__all__ = ["save", "load", "CheckpointError", "FORMAT", "VERSION"]

FORMAT = "dtkd-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_META = "__dtkd__"
_ARRAY = "__array__"
#: the deepest tree (nested dicts / lists) save writes and load reads: a bound on the recursion
#: of encoding, decoding and checksumming (a crafted header could otherwise nest 100,000 deep)
MAX_DEPTH = 200


class CheckpointError(ValueError):
    """A file that is missing, truncated, corrupt, or not a dtkd checkpoint."""


def save(path, tree):
    """Write ``tree`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    if nesting_depth(tree, MAX_DEPTH) > MAX_DEPTH:
        raise ValueError(f"save: tree nests deeper than {MAX_DEPTH} levels of dicts / lists "
                         "(a dtkd checkpoint holds at most that)")
    arrays = {}
    encoded = _encode(tree, arrays, "tree")
    meta = {"format": FORMAT, "version": VERSION, "checksum": _checksum(encoded, arrays),
            "tree": encoded}
    meta_bytes = np.frombuffer(json.dumps(meta, allow_nan=True).encode("utf-8"), dtype=np.uint8)
    with atomic_write(path) as f:
        np.savez(f, **{_META: meta_bytes}, **arrays)


def load(path):
    """Read a tree written by :func:`save`; :class:`CheckpointError` if the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"\x93NUM":
            raise CheckpointError(f"{path}: not a dtkd checkpoint: a plain .npy array file "
                                  "(written by np.save; dtkd.io.load reads the .npz files "
                                  "written by dtkd.io.save)")
        if magic[:2] != b"PK":
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint (not a zip archive"
                                  f"{'; the file is empty' if not magic else ''})")
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path}: not a dtkd checkpoint (not an .npz archive)")
            if _META not in archive.files:
                raise CheckpointError(f"{path}: not a dtkd checkpoint (no {_META!r} member; "
                                      f"members: {', '.join(archive.files[:8])})")
            meta = json.loads(archive[_META].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a dtkd checkpoint (format {meta.get('format')!r})"
                                      if isinstance(meta, dict) else f"{path}: malformed header")
            version = meta.get("version")
            if version not in READABLE_VERSIONS:
                newer = isinstance(version, int) and version > VERSION
                raise CheckpointError(
                    f"{path}: checkpoint format version {version!r}; this dtkd reads versions "
                    f"{', '.join(map(str, READABLE_VERSIONS))}"
                    + (" (the file was written by a newer dtkd: upgrade dtkd)" if newer else ""))
            if "tree" not in meta:
                raise CheckpointError(f"{path}: malformed header (no 'tree' entry)")
            if nesting_depth(meta["tree"], MAX_DEPTH) > MAX_DEPTH:
                raise CheckpointError(f"{path}: malformed header (its tree nests deeper than "
                                      f"{MAX_DEPTH} levels)")
            arrays = {name: _member(archive, name, path) for name in archive.files
                      if name != _META}
            if version >= 2 and meta.get("checksum") != _checksum(meta.get("tree"), arrays):
                raise CheckpointError(f"{path}: corrupt or truncated checkpoint (its contents do "
                                      f"not match the checksum in its header)")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError,
            NotImplementedError, RuntimeError, MemoryError, zlib.error, lzma.LZMAError,
            tokenize.TokenError, SyntaxError) as e:
        # zipfile: NotImplementedError for an unknown compression method, RuntimeError for a
        # member flagged as encrypted (both found by the checkpoint fuzz harness), zlib / lzma
        # errors for a member flagged compressed whose bytes are not (the .pth harness's find);
        # tokenize.TokenError / SyntaxError from NumPy's parse of a member's damaged .npy header
        # dict (atheris, the checkpoint harness)
        # RuntimeError covers RecursionError (json's own on a deep header), MemoryError a
        # member whose size the zip directory and its .npy header both inflate
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
    return _decode(meta["tree"], arrays, path)


def _member(archive, name, path):
    """The array member ``name``, after checking that its .npy header's size (in Python ints)
    fits the bytes the zip directory gives it: a header claiming 1 TiB is refused before
    NumPy allocates for it."""
    try:
        info = archive.zip.getinfo(name + ".npy")
    except (AttributeError, KeyError):
        return archive[name]
    with archive.zip.open(info) as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
        header = f.tell() if f.seekable() else 0
    declared = dtype.itemsize
    for n in shape:
        declared *= int(n)
    if not dtype.hasobject and declared > info.file_size - header:
        raise CheckpointError(f"{path}: corrupt checkpoint (member {name!r} claims {declared} "
                              f"bytes of {dtype} {tuple(shape)} in a member of "
                              f"{info.file_size} bytes)")
    return archive[name]


def _checksum(encoded_tree, arrays):
    """``sha256:<hex>`` of the encoded tree's canonical JSON and of each array (name order)."""
    digest = hashlib.sha256(json.dumps(encoded_tree, sort_keys=True, allow_nan=True).encode("utf-8"))
    for name in sorted(arrays):
        a = np.asarray(arrays[name], order="C")
        digest.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode("utf-8"))
        digest.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return "sha256:" + digest.hexdigest()


def _encode(node, arrays, where):
    if isinstance(node, np.ndarray):
        if node.dtype.hasobject:
            raise TypeError(f"{where}: object arrays cannot be saved in a dtkd checkpoint")
        name = f"a{len(arrays)}"
        arrays[name] = node
        return {_ARRAY: name}
    if isinstance(node, dict):
        for key in node:
            if not isinstance(key, str):
                raise TypeError(f"{where}: dict keys must be strings, got {type(key).__name__} {key!r}")
        if _ARRAY in node:
            raise TypeError(f"{where}: the key {_ARRAY!r} is reserved")
        return {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, np.generic):  # numpy scalars keep their dtype as 0-d arrays
        return _encode(np.asarray(node), arrays, where)
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"{where}: cannot save a {type(node).__name__} in a dtkd checkpoint "
                    "(allowed: ndarray, dict with str keys, list, number, str, bool, None)")


def _decode(node, arrays, path):
    if isinstance(node, dict):
        if set(node) == {_ARRAY}:
            try:
                return arrays[node[_ARRAY]]
            except (KeyError, TypeError):  # a missing member or a non-string reference
                raise CheckpointError(f"{path}: corrupt checkpoint (member {node[_ARRAY]!r} missing)") from None
        return {k: _decode(v, arrays, path) for k, v in node.items()}
    if isinstance(node, list):
        return [_decode(v, arrays, path) for v in node]
    return node

