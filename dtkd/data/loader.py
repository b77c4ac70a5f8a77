"""`DataLoader`: float32 NCHW batches from a `Dataset`, shuffled and augmented reproducibly.

All randomness of an epoch (the order, the crop offsets, the flips) is drawn from one seeded
NumPy Generator when the epoch starts; the C kernel `dtkd._C.augment_batch` then gathers,
crops, flips and normalizes each whole batch (csrc/kernels/augment.c). `state_dict()` holds the
generator state at the start of the current epoch and how many batches were already yielded,
so a resumed run replays the same batches exactly.
"""
import numpy as np

from .. import _C
from .dataset import Dataset


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
            x = _C.augment_batch(images, index, offsets[rows], flips[rows], self._mean,
                                 self._std, height, width, "NHWC")
            self._batches_done = k + 1
            yield x, labels[index]
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
