"""Datasets and the batch loader.

- `load_dataset(name, split, root=None, download=False, pad_to=None)`: 'cifar100', 'cifar10'
  (official python-format archive or its extracted folder) or 'fashion_mnist' (IDX files).
- `Dataset`: uint8 images (N, H, W, C), int64 labels, class names, per-channel mean/std;
  `subset(n, seed)` for small runs, `padded(size)` for a centered zero pad (28 -> 32).
- `DataLoader`: shuffled, optionally augmented (random crop with padding 4, horizontal flip)
  and normalized float32 NCHW batches, made in C on whole batches; deterministic for a seed,
  with `state_dict()` / `load_state_dict()` for exact resume.

Nothing is downloaded unless ``download=True`` is passed; files are looked for in ``root``,
else $DTKD_DATA, else the user cache directory (~/.cache/dtkd), and, for Fashion-MNIST, in
/usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist).
"""
from .cifar import load_cifar10, load_cifar100
from .dataset import Dataset, cache_dir
from .fashion_mnist import load_fashion_mnist, read_idx
from .loader import Batch, DataLoader

__all__ = ["Dataset", "DataLoader", "Batch", "load_dataset", "load_cifar10", "load_cifar100",
           "load_fashion_mnist", "read_idx", "cache_dir", "DATASETS"]

DATASETS = ("cifar100", "cifar10", "fashion_mnist")


def load_dataset(name, split="train", root=None, download=False, pad_to=None):
    """Load a dataset by name as a `Dataset`.

    name : 'cifar100', 'cifar10' or 'fashion_mnist'
    split : 'train' or 'test'
    root : directory holding the files (default: $DTKD_DATA, then ~/.cache/dtkd, then, for
        Fashion-MNIST, /usr/share/datasets/fashion-mnist)
    download : fetch missing files from the official URLs (MD5-verified)
    pad_to : zero-pad images, centered, to pad_to x pad_to (Fashion-MNIST 28 -> 32 for the
        CIFAR ResNets); None keeps them as they are
    """
    loaders = {"cifar100": load_cifar100, "cifar10": load_cifar10,
               "fashion_mnist": load_fashion_mnist}
    if name not in loaders:
        raise ValueError(f"name: expected one of {', '.join(DATASETS)}, got {name!r}")
    dataset = loaders[name](split, root=root, download=download)
    return dataset if pad_to is None else dataset.padded(pad_to)
