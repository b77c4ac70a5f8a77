"""Teacher-logit cache: the teacher's logits of each augmented sample, computed once and reused.

In a distillation run the frozen teacher's forward is most of the work (resnet32x4: 1.08 GMAC
per 32x32 image against ~0.53 for a resnet8x4 forward + backward). The runs of a sweep that
share the teacher and the data seed feed it exactly the same augmented batches, so every run
after the first can read the logits instead of recomputing them; within one run a sample comes
back in the same (crop, flip) variant only now and then (162 variants per CIFAR image).

Key. A :class:`dtkd.data.Batch` names each sample by ``key = index * variants + variant`` (dataset
row, crop offset, flip). The cache file is named by the loader's fingerprint (images,
normalization, crop geometry: what turns a key into pixels), the teacher's fingerprint (class,
every weight and buffer, and what rounds differently when it changes: the dtkd version and
build, the SIMD path, the GEMM's K blocking, the convolution algorithm) and the storage dtype; inside the file a key picks a slot. Labels, sample
order and the seed never enter: they choose which keys a run asks for, not what a key means.

Values. float32 entries are the teacher's logits bit for bit: the teacher runs in eval mode (no
batch statistics), and its forward gives each sample the same bits whatever batch it sits in
and whatever the thread count (tests/test_logit_cache.py checks this), so a served row equals a
recomputation. float16 halves the size; then the distiller also rounds the logits it computes
itself to float16, so a run sees the same values whether they came from the cache or not (rows
with a logit beyond float16's range are served in float32 and not stored).

Table (csrc/kernels/logit_cache.h has the slot layout and the concurrency argument). The file
is a 4 KiB header (magic ``DTKDLGT1``, a JSON description) followed by ``nsets x ways`` slots;
each slot is an 8-byte tag and the logits. It is memory-mapped shared, so the runs and processes
of a sweep fill and read one table. A writer claims an empty slot with a compare-and-swap on its
tag, copies the logits, then publishes them with a release store; readers copy only published
slots. So two processes filling the cache at once can neither tear an entry nor store a key
twice, without any lock on the hot path. The file is created complete (header and size written
to a temporary file, then ``os.link`` to the final name, which fails if another process got
there first: that one's file is used), so no process ever maps a half-made file.

Size policy (``max_bytes``, config ``DISTILLER.TEACHER_CACHE_MAX_MB``). If every key fits
(dataset size x variants x slot size <= max_bytes) the table is direct-mapped: one slot per key,
nothing ever collides. Otherwise it is 8-way set-associative over ``max_bytes`` and an entry goes
to the first free way of its set; when all 8 ways are taken the key is not stored (a miss every
time it comes back). Entries are never evicted or overwritten: "first come, first kept". That
suits a sweep, whose runs ask for the same keys in the same order: what the first run could
store, the later runs hit. The file is created sparse, but keys spread over all of it (a page
holds ~10 float32 CIFAR-100 slots), so most pages are written within an epoch or two: plan for
the full size (CIFAR-100: 50,000 x 162 keys x 408 bytes = 3.3 GB float32, 1.7 GB float16). The first run
that creates a file fixes its geometry; later runs use the file as it is. Delete the file (when
no run uses it) to reclaim the space; a writer killed between claim and publish leaves one slot
claimed for good, which is a miss, never a wrong value.

Memory mode (``DISTILLER.TEACHER_CACHE memory``) keeps the same table in an anonymous mapping,
shared by the runs of one process (e.g. a :class:`dtkd.testing.Sweep`) until it exits.
"""
import hashlib
import inspect
import json
import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

from .. import _C

__all__ = ["LogitCache", "teacher_fingerprint", "default_cache_dir", "open_teacher_cache",
           "teacher_cache_from_config", "DTYPES", "MODES"]

MAGIC = b"DTKDLGT1"
HEADER_BYTES = 4096
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
MODES = ("auto", "disk", "memory", "off")
WAYS = 8  # associativity of a table smaller than its key space
_FLOAT16_LIMIT = 65520.0  # |x| >= this rounds to Inf in float16

_memory_tables = {}  # (name) -> LogitCache: memory-mode tables shared by the runs of a process


def default_cache_dir():
    """``$XDG_CACHE_HOME/dtkd/teacher_logits`` (or ``~/.cache/dtkd/teacher_logits``)."""
    from ..data.dataset import cache_dir
    return cache_dir() / "teacher_logits"


def teacher_fingerprint(model):
    """Hex digest of what fixes a teacher's eval-mode logits to the last bit: its class, every
    state_dict entry (name, dtype, shape, bytes), and the arithmetic that computes them: the
    dtkd version and build (a hash of the C sources and compile flags), the SIMD path, the
    GEMM's K blocking on it (autotune may change it) and the convolution algorithm."""
    from .. import __version__
    from ..nn.conv import get_conv_algorithm
    isa = _C.cpu_features()["isa"]
    kc = _C.sgemm_configs(isa)["kernels"][0]["kc"]  # one kc per path (gemm_blocking.c)
    h = hashlib.blake2b(digest_size=20)
    h.update(repr(("dtkd-teacher-v2", type(model).__module__, type(model).__qualname__,
                   __version__, _C.BUILD_ID, isa, kc, get_conv_algorithm())).encode())
    for name, value in sorted(model.state_dict().items()):
        value = np.ascontiguousarray(value)
        h.update(repr((name, str(value.dtype), value.shape)).encode())
        h.update(memoryview(value).cast("B"))
    return h.hexdigest()


def _geometry(num_keys, num_classes, dtype, max_bytes):
    """(nsets, ways, slot_bytes, direct) of a table for the size policy (module docstring)."""
    slot_bytes = _C.logit_cache_slot_bytes(num_classes, dtype == "float16")
    if num_keys * slot_bytes <= max_bytes:
        return num_keys, 1, slot_bytes, True
    nsets = max_bytes // (slot_bytes * WAYS)
    if nsets < 1:
        raise ValueError(f"max_bytes: {max_bytes} bytes is less than one set of the table "
                         f"({WAYS} slots of {slot_bytes} bytes); raise it or turn the cache off")
    return nsets, WAYS, slot_bytes, False


class LogitCache:
    """A table of teacher logits keyed by :class:`dtkd.data.Batch` keys.

    Make one with :func:`open_teacher_cache` (or :meth:`memory` / :meth:`open`). ``lookup(keys)``
    returns the stored rows and which keys hit; ``insert(keys, logits)`` stores rows (first come,
    first kept); ``round(logits)`` is what storing does to values (identity for float32).
    ``stats`` counts lookups, hits, stored rows and rows refused (set full / not storable).
    """

    def __init__(self, buffer, header, path=None):
        self._buffer = buffer       # the mmap (file-backed or anonymous)
        self.header = header
        self.path = path
        self.num_keys = header["keys"]
        self.num_classes = header["classes"]
        self.dtype = header["dtype"]
        self.geometry = (header["nsets"], header["ways"], header["slot_bytes"], header["classes"],
                         int(header["direct"]), int(header["dtype"] == "float16"))
        size = header["nsets"] * header["ways"] * header["slot_bytes"]
        self._table = np.frombuffer(buffer, np.uint8, count=size, offset=HEADER_BYTES)
        self.stats = {"lookups": 0, "hits": 0, "stored": 0, "present": 0, "set_full": 0,
                      "not_storable": 0}

    # -- construction ---------------------------------------------------------------------
    @staticmethod
    def _header(num_keys, num_classes, dtype, max_bytes, dataset, teacher):
        _check_args(num_keys, num_classes, dtype, max_bytes)
        nsets, ways, slot_bytes, direct = _geometry(num_keys, num_classes, dtype, max_bytes)
        return {"format": FORMAT_VERSION, "dataset": dataset, "teacher": teacher,
                "keys": int(num_keys), "classes": int(num_classes), "dtype": dtype,
                "nsets": int(nsets), "ways": int(ways), "slot_bytes": int(slot_bytes),
                "direct": bool(direct)}

    @classmethod
    def memory(cls, num_keys, num_classes, dtype="float32", max_bytes=2 << 30, dataset="",
               teacher=""):
        """A table in an anonymous mapping (zero pages are only committed when written)."""
        header = cls._header(num_keys, num_classes, dtype, max_bytes, dataset, teacher)
        size = HEADER_BYTES + header["nsets"] * header["ways"] * header["slot_bytes"]
        return cls(mmap.mmap(-1, size), header)

    @classmethod
    def open(cls, path, num_keys, num_classes, dtype="float32", max_bytes=2 << 30, dataset="",
             teacher=""):
        """The table in the file ``path``, created (sparse, complete before it gets its name) if
        it does not exist; an existing file must describe the same keys, classes, dtype,
        dataset and teacher (its geometry is kept as it is)."""
        path = Path(path)
        want = cls._header(num_keys, num_classes, dtype, max_bytes, dataset, teacher)
        if not path.exists():
            _create(path, want)
        fd = os.open(path, os.O_RDWR)
        try:
            header = _read_header(fd, path)
            for field in ("keys", "classes", "dtype", "dataset", "teacher"):
                if header[field] != want[field]:
                    raise ValueError(f"{path}: a teacher-logit cache for {field} "
                                     f"{header[field]!r}, not {want[field]!r}; delete the file "
                                     "or point DISTILLER.TEACHER_CACHE_DIR elsewhere")
            size = HEADER_BYTES + header["nsets"] * header["ways"] * header["slot_bytes"]
            if os.fstat(fd).st_size < size:
                raise ValueError(f"{path}: truncated teacher-logit cache ({os.fstat(fd).st_size}"
                                 f" bytes, its header says {size}); delete the file")
            buffer = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)  # shared, read-write
        finally:
            os.close(fd)  # the mapping keeps the file
        return cls(buffer, header, path)

    # -- use --------------------------------------------------------------------------------
    def lookup(self, keys):
        """(logits float32 (B, C), hit bool (B,)): the stored rows of ``keys`` (misses: 0)."""
        keys = self._keys(keys)
        logits, hit = _C.logit_cache_lookup(self._table, self.geometry, keys)
        hit = hit.view(bool)
        self.stats["lookups"] += len(keys)
        self.stats["hits"] += int(hit.sum())
        return logits, hit

    def insert(self, keys, logits):
        """Store ``logits`` (B, C) under ``keys``; returns the per-row status (1 stored, 2
        already there, 3 set full, 4 not storable: non-finite, or beyond float16's range)."""
        keys = self._keys(keys)
        logits = np.ascontiguousarray(logits, np.float32)
        if logits.shape != (len(keys), self.num_classes):
            raise ValueError(f"logits: expected shape ({len(keys)}, {self.num_classes}), got "
                             f"{logits.shape}")
        status = _C.logit_cache_insert(self._table, self.geometry, logits, keys, None)
        counts = np.bincount(status, minlength=5)
        for name, code in (("stored", 1), ("present", 2), ("set_full", 3), ("not_storable", 4)):
            self.stats[name] += int(counts[code])
        return status

    def round(self, logits):
        """``logits`` as the cache would serve them: unchanged for float32; for float16 rounded
        to nearest even, except rows with a value the cache would not store (non-finite or
        beyond float16's range), which stay as they are."""
        if self.dtype == "float32":
            return logits
        logits = np.asarray(logits, np.float32)
        storable = np.all(np.abs(logits) < _FLOAT16_LIMIT, axis=1)  # NaN compares False
        with np.errstate(over="ignore"):
            rounded = logits.astype(np.float16).astype(np.float32)
        return np.where(storable[:, None], rounded, logits)

    def occupancy(self):
        """Slots published (ready) in the table, counted by reading every tag."""
        nslots = self.geometry[0] * self.geometry[1]
        tags = np.ndarray((nslots,), np.uint64, self._table, 0, (self.geometry[2],))
        return int(np.count_nonzero((tags & np.uint64(3)) == 2))

    def close(self):
        self._table = None
        self._buffer.close()

    def _keys(self, keys):
        keys = np.ascontiguousarray(keys, np.int64)
        if keys.ndim != 1:
            raise ValueError(f"keys: expected a 1-D array, got shape {keys.shape}")
        if len(keys) and (keys.min() < 0 or keys.max() >= self.num_keys):
            raise ValueError(f"keys: must be in [0, {self.num_keys}), found "
                             f"{keys.min()}..{keys.max()}")
        return keys

    def __repr__(self):
        where = self.path or "memory"
        return (f"LogitCache({where}, keys={self.num_keys}, classes={self.num_classes}, "
                f"dtype={self.dtype}, {'direct' if self.header['direct'] else 'set-associative'})")


def _check_args(num_keys, num_classes, dtype, max_bytes):
    for name, value in (("num_keys", num_keys), ("num_classes", num_classes),
                        ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if num_keys >= 1 << 61:
        raise ValueError(f"num_keys: at most 2^61 - 1, got {num_keys}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")


def _create(path, header):
    """Make ``path``: header + zero (sparse) table written to a temp file, which is then linked
    to the final name. If another process linked its file first, keep that one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(header, sort_keys=True).encode()
    blob = MAGIC + len(text).to_bytes(4, "little") + text
    if len(blob) > HEADER_BYTES:
        raise ValueError("teacher-logit cache header too long")  # fingerprints are short hex
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.write(fd, blob.ljust(HEADER_BYTES, b"\0"))
        os.ftruncate(fd, HEADER_BYTES + header["nsets"] * header["ways"] * header["slot_bytes"])
        os.fsync(fd)
        os.close(fd)
        fd = None
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        if fd is not None:
            os.close(fd)
        os.unlink(tmp)


def _read_header(fd, path):
    os.lseek(fd, 0, os.SEEK_SET)
    blob = os.read(fd, HEADER_BYTES)
    if len(blob) < 12 or blob[:8] != MAGIC:
        raise ValueError(f"{path}: not a dtkd teacher-logit cache (bad magic); delete the file")
    n = int.from_bytes(blob[8:12], "little")
    try:
        header = json.loads(blob[12:12 + n])
    except ValueError:
        raise ValueError(f"{path}: corrupt teacher-logit cache header; delete the file") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        found = header.get("format") if isinstance(header, dict) else header
        raise ValueError(f"{path}: teacher-logit cache format {found!r:.40}, this dtkd reads "
                         f"{FORMAT_VERSION}; delete the file")
    _check_header(header, path)
    return header


_HEADER_TYPES = {"format": int, "dataset": str, "teacher": str, "keys": int, "classes": int,
                 "dtype": str, "nsets": int, "ways": int, "slot_bytes": int, "direct": bool}


def _check_header(header, path):
    """A header read from a file describes a table the kernels can use (else ValueError)."""
    def bad(what):
        return ValueError(f"{path}: corrupt teacher-logit cache header ({what}); delete the file")
    if set(header) != set(_HEADER_TYPES):
        raise bad(f"fields {sorted(header)!r:.200}")
    for field, kind in _HEADER_TYPES.items():
        value = header[field]
        if type(value) is not kind:  # bool is not int here, nor int bool
            raise bad(f"{field} {value!r:.40}")
    if header["dtype"] not in DTYPES or min(header[f] for f in ("keys", "classes", "nsets",
                                                                 "ways")) < 1:
        raise bad("dtype or sizes")
    if header["keys"] >= 1 << 61 or header["classes"] > 1 << 24 or header["ways"] > 1 << 10:
        raise bad("sizes")
    need = _C.logit_cache_slot_bytes(header["classes"], header["dtype"] == "float16")
    if header["slot_bytes"] < need or header["slot_bytes"] % 8 or header["slot_bytes"] > 1 << 30:
        raise bad(f"slot_bytes {header['slot_bytes']}")
    if header["direct"] and (header["ways"] != 1 or header["nsets"] < header["keys"]):
        raise bad("direct table smaller than its keys")


def open_teacher_cache(loader, teacher, num_classes, mode="disk", dtype="float32",
                       max_bytes=2 << 30, directory=None):
    """The cache of ``teacher``'s logits on ``loader``'s samples (a :class:`dtkd.data.DataLoader`).

    mode : 'disk' (a shared file in ``directory``, default :func:`default_cache_dir`) or
        'memory' (shared by the runs of this process).
    """
    if mode not in ("disk", "memory"):
        raise ValueError(f"mode: expected 'disk' or 'memory', got {mode!r}")
    dataset, fingerprint = loader.fingerprint(), teacher_fingerprint(teacher)
    name = f"{dataset[:16]}-{fingerprint[:16]}-{dtype}.logits"
    args = (loader.key_space, num_classes, dtype, max_bytes, dataset, fingerprint)
    if mode == "memory":
        cache = _memory_tables.get(name)
        if cache is None:
            cache = _memory_tables[name] = LogitCache.memory(*args)
        return cache
    directory = default_cache_dir() if directory is None else Path(directory).expanduser()
    return LogitCache.open(directory / name, *args)


def teacher_cache_from_config(cfg, distiller, loader):
    """The cache ``cfg.DISTILLER.TEACHER_CACHE`` asks for, or None, with the reason (a string).

    'auto' (default) is 'disk' where it is safe: the distiller has a frozen teacher (its
    ``teacher_is_frozen``; it runs in eval mode under no_grad) and a ``train_step`` that takes
    the batch keys, and the loader names its samples (a DataLoader: keys and a fingerprint);
    otherwise off. 'disk' / 'memory' insist: an unsafe
    setting is an error. 'off' never caches.
    """
    c = cfg.DISTILLER
    mode = c.TEACHER_CACHE
    if mode == "off":
        return None, "DISTILLER.TEACHER_CACHE is off"
    if distiller.teacher is None:
        return None, "no teacher"
    problems = []
    if not getattr(distiller, "teacher_is_frozen", False):
        problems.append(f"{type(distiller).__name__} does not keep its teacher frozen")
    if "keys" not in inspect.signature(distiller.train_step).parameters:
        problems.append(f"{type(distiller).__name__}.train_step takes no keys")
    if not (hasattr(loader, "fingerprint") and hasattr(loader, "key_space")):
        problems.append(f"the training loader ({type(loader).__name__}) does not name its "
                        "samples (use dtkd.data.DataLoader)")
    if problems:
        if mode == "auto":
            return None, "; ".join(problems)
        raise ValueError(f"DISTILLER.TEACHER_CACHE {mode}: unsafe here: {'; '.join(problems)}; "
                         "set it to 'off' (or 'auto')")
    cache = open_teacher_cache(loader, distiller.teacher, loader.dataset.num_classes,
                               mode="disk" if mode == "auto" else mode,
                               dtype=c.TEACHER_CACHE_DTYPE,
                               max_bytes=int(c.TEACHER_CACHE_MAX_MB) << 20,
                               directory=c.TEACHER_CACHE_DIR or None)
    return cache, f"{mode}: {cache!r}"
