"""`DataLoader`: float32 NCHW batches from a `Dataset`, shuffled and augmented reproducibly.

All randomness of an epoch (the order, the crop offsets, the flips) is drawn from one seeded
NumPy Generator when the epoch starts; the C kernel `dtkd._C.augment_batch` then gathers,
crops, flips and normalizes each whole batch (csrc/kernels/augment.c). `state_dict()` holds the
generator state at the start of the current epoch and how many batches were already yielded,
so a resumed run replays the same batches exactly.

Each batch is a :class:`Batch`: it unpacks as ``x, y`` and also says what produced each sample
(dataset row, crop offset, flip) and a per-sample ``key`` in ``[0, loader.key_space)``. Together
with :meth:`DataLoader.fingerprint` (the images, normalization and crop geometry) a key
determines the sample's pixels exactly, which is what the teacher-logit cache
(``dtkd.engine.logit_cache``) indexes by.
"""
import hashlib

import numpy as np

from .. import _C
from .dataset import Dataset


class Batch(tuple):
    """One batch, ``(x, y)`` as a tuple (``x, y = batch`` works), plus per-sample provenance:

    index : int64 (B,) rows of the dataset
    offset : int64 (B, 2) crop offsets (row, column) in ``[-padding, padding]`` (0 unaugmented)
    flip : uint8 (B,) 1 where the crop was mirrored
    key : int64 (B,) ``index * variants + variant``, the variant numbering the (offset, flip)
        pairs: ``((row + p) * (2p + 1) + (column + p)) * 2 + flip`` with augmentation (``p`` the
        padding, ``2 (2p + 1)^2`` variants: 162 for CIFAR's p = 4), 0 without (1 variant).
    """

    def __new__(cls, x, y, index, offset, flip, key):
        batch = super().__new__(cls, (x, y))
        batch.index, batch.offset, batch.flip, batch.key = index, offset, flip, key
        return batch

    def __reduce__(self):
        return (Batch, (self[0], self[1], self.index, self.offset, self.flip, self.key))


class DataLoader:
    """Iterate over ``dataset`` in batches of ``(x, y)``: x float32 (B, C, H, W) C-contiguous,
    y int64 (B,).

    Parameters
    ----------
    dataset : `Dataset`
    batch_size : int >= 1
    shuffle : new random order every epoch
    drop_last : drop the final batch if it is smaller than ``batch_size``
    augment : the standard CIFAR augmentation: random crop of the image size from the image
        zero-padded by ``padding`` pixels on each side, then a horizontal flip with
        probability 1/2
    seed : seed of the NumPy Generator behind shuffling and augmentation
    normalize : map pixels to (v / 255 - mean) / std with the dataset's per-channel constants;
        False gives v / 255
    padding : crop padding for ``augment`` (4 for CIFAR)
    """

    def __init__(self, dataset, batch_size, shuffle=True, drop_last=False, augment=False, seed=0,
                 normalize=True, padding=4):
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset: expected a dtkd.data.Dataset, got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError("dataset: is empty")
        for name, value, low in (("batch_size", batch_size, 1), ("padding", padding, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name}: must be >= {low}, got {value}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        self.padding = int(padding)
        channels = dataset.images.shape[3]
        self._mean = np.asarray(dataset.mean if normalize else [0.0] * channels, np.float32)
        self._std = np.asarray(dataset.std if normalize else [1.0] * channels, np.float32)
        self._rng = np.random.default_rng(seed)
        self._epoch_start_state = None  # generator state when the running epoch began
        self._batches_done = 0          # batches of the running epoch already yielded
        self._skip_batches = 0          # set by load_state_dict for a mid-epoch resume

    @property
    def variants(self):
        """How many distinct (crop offset, flip) pairs a sample can come in: 2 (2 padding + 1)^2
        with augmentation, 1 without."""
        return 2 * (2 * self.padding + 1) ** 2 if self.augment else 1

    @property
    def key_space(self):
        """Batch keys lie in ``[0, key_space)``: dataset size x :attr:`variants`."""
        return len(self.dataset) * self.variants

    def fingerprint(self):
        """Hex digest of everything that, with a batch key, determines a sample's pixels: the
        dataset's images, the normalization constants, the output size, padding and whether
        augmentation is on (labels, order and seed do not enter: they choose keys, not pixels).
        Computed once per loader (the images are hashed: ~0.2 s for CIFAR's 150 MB); the
        dataset's arrays are assumed not to change afterwards."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.blake2b(digest_size=20)
            images = self.dataset.images
            h.update(repr(("dtkd-loader-v1", images.shape, str(images.dtype), self.augment,
                           self.padding, self._mean.tolist(), self._std.tolist())).encode())
            h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def batch_keys(self, index, offset, flip):
        """Batch keys (see :class:`Batch`) of samples given by rows, crop offsets and flips."""
        index = np.asarray(index, np.int64)
        if not self.augment:
            return index.copy()
        p, side = self.padding, 2 * self.padding + 1
        offset = np.asarray(offset, np.int64)
        variant = ((offset[:, 0] + p) * side + (offset[:, 1] + p)) * 2 + np.asarray(flip, np.int64)
        return index * self.variants + variant

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _draw_epoch(self):
        """This epoch's sample order, crop offsets (n, 2) and flips (n,), from the generator."""
        n = len(self.dataset)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n, dtype=np.int64)
        if self.augment:
            offsets = self._rng.integers(-self.padding, self.padding + 1, size=(n, 2),
                                         dtype=np.int64)
            flips = self._rng.integers(0, 2, size=n, dtype=np.uint8)
        else:
            offsets = np.zeros((n, 2), np.int64)
            flips = np.zeros(n, np.uint8)
        return order.astype(np.int64, copy=False), offsets, flips

    def __iter__(self):
        self._epoch_start_state = self._rng.bit_generator.state
        order, offsets, flips = self._draw_epoch()
        first, self._skip_batches = self._skip_batches, 0
        self._batches_done = first
        images, labels = self.dataset.images, self.dataset.labels
        _, height, width, _ = images.shape
        bs = self.batch_size
        for k in range(first, len(self)):
            rows = slice(k * bs, (k + 1) * bs)
            index = order[rows]
            offset, flip = offsets[rows], flips[rows]
            x = _C.augment_batch(images, index, offset, flip, self._mean, self._std, height,
                                 width, "NHWC")
            self._batches_done = k + 1
            yield Batch(x, labels[index], index, offset, flip, self.batch_keys(index, offset, flip))
        self._epoch_start_state = None
        self._batches_done = 0

    def state_dict(self):
        """{'rng': generator state, 'batches_done': int}: between epochs, the state for the next
        epoch and 0; during one, the state when it began and the batches already yielded."""
        if self._epoch_start_state is not None:
            return {"rng": self._epoch_start_state, "batches_done": self._batches_done}
        return {"rng": self._rng.bit_generator.state, "batches_done": self._skip_batches}

    def load_state_dict(self, state):
        """Restore a `state_dict()`: the next iteration yields exactly the batches the saved
        loader would have yielded next (the rest of its epoch, if saved mid-epoch)."""
        if not isinstance(state, dict) or set(state) != {"rng", "batches_done"}:
            raise ValueError(f"state: expected a dict with keys 'rng' and 'batches_done' (from "
                             f"DataLoader.state_dict()), got {state!r:.200}")
        done = state["batches_done"]
        if isinstance(done, bool) or not isinstance(done, (int, np.integer)) or not (
                0 <= done <= len(self)):
            raise ValueError(f"state['batches_done']: expected an int in [0, {len(self)}], "
                             f"got {done!r}")
        try:
            self._rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"state['rng']: not a {type(self._rng.bit_generator).__name__} "
                             f"state ({e})") from None
        self._epoch_start_state = None
        self._batches_done = 0
        self._skip_batches = int(done)
