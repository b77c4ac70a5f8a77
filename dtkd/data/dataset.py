"""The in-memory `Dataset`, where dataset files are looked for, and verified downloads.

A `Dataset` is plain arrays: ``images`` uint8 (N, H, W, C) and ``labels`` int64 (N,), with the
class names and the per-channel normalization constants the loader uses.
"""
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .._validate import check_normalization


class Dataset:
    """Images, labels and their metadata, all in memory.

    Parameters
    ----------
    images : uint8 array (N, H, W, C)
    labels : integer array (N,), each in [0, len(classes))
    classes : sequence of class names
    mean, std : per-channel normalization constants, in [0, 1] pixel units (pixel / 255).
        None computes them from ``images``.
    name, split : descriptive (e.g. 'cifar100', 'train').
    """

    def __init__(self, images, labels, classes, mean=None, std=None, name="arrays", split=""):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images: expected a uint8 array (N, H, W, C), got {images.dtype} "
                             f"with shape {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels: expected shape ({images.shape[0]},) to match images, "
                             f"got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels: expected integers, got dtype {labels.dtype}")
        classes = tuple(classes)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"labels: must be in [0, {len(classes)}) (one per class name), "
                             f"found {labels.min()}..{labels.max()}")
        channels = images.shape[3]
        if mean is None:
            mean = images.mean(axis=(0, 1, 2)) / 255.0 if len(images) else np.zeros(channels)
        if std is None:
            std = images.std(axis=(0, 1, 2)) / 255.0 if len(images) else np.ones(channels)
            std = np.where(std > 0, std, 1.0)
        mean = tuple(float(m) for m in np.ravel(mean))
        std = tuple(float(s) for s in np.ravel(std))
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean, std: expected {channels} values (one per channel), got "
                             f"{len(mean)} and {len(std)}")
        check_normalization(mean, std)
        self.images = np.ascontiguousarray(images)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.classes = classes
        self.mean = mean
        self.std = std
        self.name = name
        self.split = split

    def __len__(self):
        return self.images.shape[0]

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def image_shape(self):
        """(H, W, C) of one image."""
        return self.images.shape[1:]

    def __repr__(self):
        return (f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image_shape={self.image_shape}, num_classes={self.num_classes})")

    def _with(self, images, labels):
        return Dataset(images, labels, self.classes, self.mean, self.std, self.name, self.split)

    def subset(self, n, seed=0):
        """A random subset of ``n`` samples (without replacement), drawn with a seeded
        generator and kept in the original order, for quick runs."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n: expected an int, got {type(n).__name__}")
        if not 0 < n <= len(self):
            raise ValueError(f"n: must be in [1, {len(self)}] (the dataset size), got {n}")
        keep = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self._with(self.images[keep], self.labels[keep])

    def padded(self, size):
        """A copy whose images are zero-padded, centered, to ``size`` x ``size`` (e.g. 28 -> 32
        for Fashion-MNIST, as the CIFAR ResNets need 32 x 32). Normalization constants stay."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"pad_to: expected an int, got {type(size).__name__}")
        h, w = self.images.shape[1:3]
        if size < h or size < w:
            raise ValueError(f"pad_to: {size} is smaller than the images ({h} x {w})")
        top, left = (size - h) // 2, (size - w) // 2
        images = np.pad(self.images, ((0, 0), (top, size - h - top), (left, size - w - left),
                                      (0, 0)))
        return self._with(images, self.labels)


def cache_dir():
    """The user cache directory for dtkd data: $XDG_CACHE_HOME/dtkd or ~/.cache/dtkd."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dtkd"


def data_roots(root=None):
    """Directories searched for dataset files: ``root`` alone when given, else $DTKD_DATA (if
    set) and the user cache directory."""
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    if os.environ.get("DTKD_DATA"):
        roots.append(Path(os.environ["DTKD_DATA"]).expanduser())
    roots.append(cache_dir())
    return roots


# The ways to provide missing data files, in the words of both ways of asking for data (the
# Python API's arguments and the config keys the CLI takes): one text for every loader.
WHERE_TO_PUT_DATA = ("pass the folder (Python: root=...; config or command line: DATASET.ROOT "
                     "<folder>), set DTKD_DATA to it, or let dtkd download the files (Python: "
                     "download=True; config or command line: DATASET.DOWNLOAD True)")


def download_root(root=None):
    """Where downloads go: ``root``, else $DTKD_DATA, else the user cache directory."""
    return data_roots(root)[0]


def file_md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, dest, md5, timeout=60):
    """Download ``url`` to ``dest`` and verify its MD5. The file appears at ``dest`` only once
    complete and verified (dtkd.io.atomic_write: a temporary file renamed at the end); returns
    ``dest``."""
    from ..io.atomic import atomic_write
    dest = Path(dest)
    with atomic_write(dest) as out:
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(
                f"could not download {url} ({e}); no network? Place the file at {dest} "
                f"yourself (or set DTKD_DATA to its folder) and load without download=True"
            ) from None
        if digest.hexdigest() != md5:
            raise ValueError(f"{url}: downloaded file has MD5 {digest.hexdigest()}, expected {md5} "
                             f"(corrupt or changed upstream); nothing was saved to {dest}")
    return dest
