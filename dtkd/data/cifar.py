"""CIFAR-10 and CIFAR-100 from the official python-format archives.

The archive (``cifar-100-python.tar.gz`` / ``cifar-10-python.tar.gz``) is read in place, or its
extracted folder (``cifar-100-python/`` / ``cifar-10-batches-py/``). Each split file is a
pickled dict with b'data' (N x 3072 uint8, channel-major: 1024 red, 1024 green, 1024 blue
values of a 32 x 32 image) and b'fine_labels' (CIFAR-100) or b'labels' (CIFAR-10).
Unpickling admits only the NumPy array constructors, so a foreign pickle cannot run code.
"""
import io
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ..io.restricted_pickle import NUMPY_GLOBALS, RestrictedUnpickler
from .dataset import WHERE_TO_PUT_DATA, Dataset, data_roots, download_root
from .dataset import download as _download_file

CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

# Per-dataset facts: archive and folder names, split files, label key, the official URL and
# MD5, and the standard normalization constants (as in mdistiller / the CIFAR literature).
CIFAR = {
    "cifar100": dict(
        archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        files={"train": ["train"], "test": ["test"]}, label_key="fine_labels",
        classes=CIFAR100_CLASSES,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761)),
    "cifar10": dict(
        archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        files={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        label_key="labels", classes=CIFAR10_CLASSES,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
}

# The end of the refusal message for any other global a split file names.
_HOLDS = "a CIFAR file holds only NumPy arrays, lists, bytes and ints"


def _unpickle(raw, where):
    """The dict in one CIFAR split file (``where`` names it in errors), with str keys."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(raw), NUMPY_GLOBALS, _HOLDS, encoding="bytes").load()
    except Exception as e:  # truncated or foreign data raises many different types
        raise ValueError(f"{where}: not a readable CIFAR pickle "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _parse_split_file(raw, where, label_key, num_classes):
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) from one split file's bytes."""
    entry = _unpickle(raw, where)
    for key in ("data", label_key):
        if key not in entry:
            found = sorted(entry, key=repr)  # keys of any type: a crafted file's too
            raise ValueError(f"{where}: missing key b'{key}' (found {found}); is this "
                             f"a file of the other CIFAR dataset?")
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{where}: b'data' must be uint8 (N, 3072), got {data.dtype} "
                         f"{data.shape}")
    labels = np.asarray(entry[label_key])
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: b'{label_key}' must be a list of ints, got {labels.dtype} "
                         f"{labels.shape}")
    if len(labels) != len(data):
        raise ValueError(f"{where}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: labels must be in [0, {num_classes}), found "
                         f"{labels.min()}..{labels.max()}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-major -> NHWC
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _find(spec, split, root):
    """The folder holding the split files or the archive, searched in ``data_roots(root)``;
    ``root`` may also be the extracted folder or the archive itself. None if absent."""
    for base in data_roots(root):
        if base.is_file():
            return base
        for candidate in (base, base / spec["folder"]):
            if (candidate / spec["files"][split][0]).is_file():
                return candidate
        if (base / spec["archive"]).is_file():
            return base / spec["archive"]
    return None


def _read_members(archive, names):
    """Bytes of the named split files inside the .tar.gz, in order."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise ValueError(f"{archive}: archive has no {', '.join(missing)} (holds "
                                 f"{sorted(members)})")
            return [tar.extractfile(members[n]).read() for n in names]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{archive}: cannot read the archive ({type(e).__name__}: {e}); "
                         f"truncated or not a .tar.gz?") from None


def load_cifar(name, split="train", root=None, download=False):
    """CIFAR-10 ('cifar10') or CIFAR-100 ('cifar100', fine labels) as a `Dataset`.

    Looks in ``root`` (the folder holding the archive or the extracted folder, the extracted
    folder itself, or the archive path), else in $DTKD_DATA and the user cache directory
    (~/.cache/dtkd). With ``download=True`` a missing archive is downloaded from the
    official URL into the first of those and its MD5 verified.
    """
    if name not in CIFAR:
        raise ValueError(f"name: expected one of {sorted(CIFAR)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    spec = CIFAR[name]
    location = _find(spec, split, root)
    if location is None and download:
        location = _download_file(spec["url"], download_root(root) / spec["archive"],
                                  spec["md5"])
    if location is None:
        searched = ", ".join(str(r) for r in data_roots(root))
        raise FileNotFoundError(
            f"{name}: found neither {spec['archive']} nor {spec['folder']}/ in {searched}. "
            f"Put the official archive ({spec['url']}) in one of them, {WHERE_TO_PUT_DATA}")
    names = spec["files"][split]
    if location.is_file():
        blobs = [(f"{location}:{n}", raw) for n, raw in zip(names, _read_members(location, names))]
    else:
        blobs = []
        for n in names:
            path = location / n
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing ({name} {split} needs "
                                        f"{', '.join(names)})")
            blobs.append((str(path), path.read_bytes()))
    parts = [_parse_split_file(raw, where, spec["label_key"], len(spec["classes"]))
             for where, raw in blobs]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return Dataset(images, labels, spec["classes"], spec["mean"], spec["std"], name, split)


def load_cifar100(split="train", root=None, download=False):
    """CIFAR-100 with its 100 fine labels; see `load_cifar`."""
    return load_cifar("cifar100", split, root, download)


def load_cifar10(split="train", root=None, download=False):
    """CIFAR-10; see `load_cifar`."""
    return load_cifar("cifar10", split, root, download)
