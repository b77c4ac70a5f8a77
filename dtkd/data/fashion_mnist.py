"""Fashion-MNIST from its IDX files (gzip-compressed or raw).

Files: ``{train,t10k}-images-idx3-ubyte[.gz]`` and ``{train,t10k}-labels-idx1-ubyte[.gz]``,
looked for in ``root`` alone when given, else in $DTKD_DATA, the user cache directory
(~/.cache/dtkd) and /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), each
directly or in a ``fashion-mnist/`` subfolder.

IDX format: a 4-byte magic (0, 0, type code 0x08 = uint8, number of dimensions), then each
dimension as a big-endian uint32, then the values in C order.
"""
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .dataset import WHERE_TO_PUT_DATA, Dataset, data_roots, download_root
from .dataset import download as _download_file

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBFOLDER = "fashion-mnist"

# split -> (images file, labels file), without the .gz suffix.
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# Official files (gzip) and their MD5s, for download=True.
URL_BASE = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
       "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
       "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
       "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}


#: deflate's largest expansion is 1032:1; a .gz IDX file whose header declares more data than
#: that is refused before decompressing anything (the probe's 204 KB bomb peaked at 434 MB)
GZIP_MAX_RATIO = 1032
_CHUNK = 1 << 20


def read_idx(path, ndim):
    """The uint8 array in an IDX file (``.gz`` is decompressed), checked to have ``ndim``
    dimensions and exactly as many bytes as its header declares. Errors name the file.

    The header's size (a product of uint32 dims, in Python ints) is checked against what the
    file can hold before any data is read: the file's size, or for ``.gz`` files
    :data:`GZIP_MAX_RATIO` times it. Decompression streams into the declared size and stops
    at the first byte beyond it, so memory never exceeds the declared (plausible) size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    gz = path.suffix == ".gz"
    size = path.stat().st_size
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            return _read_idx_stream(f, path, ndim, size, gz)
    except (OSError, EOFError, zlib.error) as e:
        if not gz:
            raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
        raise ValueError(f"{path}: cannot decompress ({type(e).__name__}: {e}); truncated "
                         f"or not gzip?") from None


def _read_into(f, view):
    """Fill ``view`` from ``f`` in chunks; the number of bytes read (short at end of file)."""
    done = 0
    while done < len(view):
        n = f.readinto(view[done:done + _CHUNK])
        if not n:
            break
        done += n
    return done


def _read_idx_stream(f, path, ndim, size, gz):
    header = 4 + 4 * ndim
    head = f.read(header)
    if len(head) < 4:
        raise ValueError(f"{path}: only {len(head)} bytes, too short for an IDX header")
    want_magic = bytes((0, 0, 0x08, ndim))
    if head[:4] != want_magic:
        raise ValueError(f"{path}: bad magic 0x{head[:4].hex()}, expected 0x{want_magic.hex()} "
                         f"(IDX uint8, {ndim}-D); not a Fashion-MNIST "
                         f"{'images' if ndim == 3 else 'labels'} file?")
    if len(head) < header:
        raise ValueError(f"{path}: truncated header ({len(head)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", head[4:])
    need = math.prod(dims)  # Python ints: no overflow
    can_hold = GZIP_MAX_RATIO * size if gz else size - header
    if need > can_hold and gz:
        raise ValueError(
            f"{path}: corrupt or implausible IDX header: shape {dims} declares {need} bytes of "
            f"data, more than a gzip file of {size} bytes can decompress to (deflate expands "
            f"at most {GZIP_MAX_RATIO}x)")
    if need > can_hold:
        raise ValueError(f"{path}: header declares shape {dims} = {need} bytes of data, file "
                         f"has {can_hold} (truncated, or a corrupt or implausible header)")
    data = np.empty(need, np.uint8)
    have = _read_into(f, memoryview(data))
    if have == need:
        extra = len(f.read(_CHUNK))  # trailing bytes: look at one chunk at most
        if extra:
            raise ValueError(f"{path}: header declares shape {dims} = {need} bytes of data, "
                             f"file has {'at least ' if extra == _CHUNK else ''}{need + extra} "
                             f"(trailing bytes)")
        return data.reshape(dims)
    raise ValueError(f"{path}: header declares shape {dims} = {need} bytes of data, file has "
                     f"{have} (truncated)")


def search_dirs(root=None):
    """Directories searched, in order (see the module docstring)."""
    bases = data_roots(root) + ([] if root is not None else [SYSTEM_DIR])
    return [d for base in bases for d in (base, base / SUBFOLDER)]


def _locate(directory, stem):
    """The file ``stem`` or ``stem.gz`` in ``directory``, or None."""
    for candidate in (directory / stem, directory / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _find_split(split, root):
    """(images path, labels path) from the first directory holding either file."""
    images_stem, labels_stem = FILES[split]
    for directory in search_dirs(root):
        images, labels = _locate(directory, images_stem), _locate(directory, labels_stem)
        if images and labels:
            return images, labels
        if images or labels:
            missing = labels_stem if images else images_stem
            raise FileNotFoundError(f"{directory}: has {(images or labels).name} but not "
                                    f"{missing}[.gz] beside it")
    return None


def load_fashion_mnist(split="train", root=None, download=False):
    """Fashion-MNIST as a `Dataset` of (N, 28, 28, 1) uint8 images and 10 classes.

    With ``download=True``, missing files are downloaded (gzip, MD5-verified) into
    ``root``/$DTKD_DATA/the cache directory, under ``fashion-mnist/``.
    """
    if split not in FILES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    found = _find_split(split, root)
    if found is None and download:
        target = download_root(root) / SUBFOLDER
        for stem in FILES[split]:
            name = stem + ".gz"
            _download_file(URL_BASE + name, target / name, MD5[name])
        found = _find_split(split, root)
    if found is None:
        searched = ", ".join(str(d) for d in search_dirs(root))
        raise FileNotFoundError(
            f"fashion_mnist: {FILES[split][0]}[.gz] and {FILES[split][1]}[.gz] not found in "
            f"{searched}. Install Debian's dataset-fashion-mnist (apt-get install "
            f"dataset-fashion-mnist), or {WHERE_TO_PUT_DATA}")
    images_path, labels_path = found
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                         f"{len(labels)} labels")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path}: labels must be in [0, 10), found {labels.max()}")
    return Dataset(images[..., None], labels.astype(np.int64), FASHION_MNIST_CLASSES,
                   FASHION_MNIST_MEAN, FASHION_MNIST_STD, "fashion_mnist", split)
