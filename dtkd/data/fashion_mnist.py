"""Fashion-MNIST from its IDX files (gzip-compressed or raw).

Files: ``{train,t10k}-images-idx3-ubyte[.gz]`` and ``{train,t10k}-labels-idx1-ubyte[.gz]``,
looked for in ``root`` alone when given, else in $DTKD_DATA, the user cache directory
(~/.cache/dtkd) and /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), each
directly or in a ``fashion-mnist/`` subfolder.

IDX format: a 4-byte magic (0, 0, type code 0x08 = uint8, number of dimensions), then each
dimension as a big-endian uint32, then the values in C order.
"""
import gzip
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


def read_idx(path, ndim):
    """The uint8 array in an IDX file (``.gz`` is decompressed), checked to have ``ndim``
    dimensions and exactly as many bytes as its header declares. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: cannot decompress ({type(e).__name__}: {e}); truncated "
                             f"or not gzip?") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: only {len(raw)} bytes, too short for an IDX header")
    want_magic = bytes((0, 0, 0x08, ndim))
    if raw[:4] != want_magic:
        raise ValueError(f"{path}: bad magic 0x{raw[:4].hex()}, expected 0x{want_magic.hex()} "
                         f"(IDX uint8, {ndim}-D); not a Fashion-MNIST "
                         f"{'images' if ndim == 3 else 'labels'} file?")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - header
    if have != need:
        raise ValueError(f"{path}: header declares shape {dims} = {need} bytes of data, file has "
                         f"{have} ({'truncated' if have < need else 'trailing bytes'})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


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
