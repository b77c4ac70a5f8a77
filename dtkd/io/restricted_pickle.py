"""Unpickling limited to an explicit allow-list of globals: the one way dtkd reads pickles.

A pickle names the callables that rebuild its objects (GLOBAL opcodes: ``os system``,
``builtins eval``, ...) and a plain unpickler imports and calls them: that is how a crafted file
runs code. :class:`RestrictedUnpickler` never imports anything. Its ``find_class`` looks the
``(module, name)`` pair up in a table the caller gives (values: the objects to use in its place)
and raises :class:`RefusedGlobal` (an ``UnpicklingError``) naming any other global, before
anything runs.

Used by the CIFAR reader (``dtkd.data.cifar``: NumPy arrays only) and the PyTorch checkpoint
reader (``dtkd.io.pth``: tensors, dicts, lists, tuples, numbers, strings).
"""
import codecs
import pickle

import numpy as np

__all__ = ["RestrictedUnpickler", "RefusedGlobal", "NUMPY_GLOBALS"]

# NumPy 2 renamed numpy.core to numpy._core; pickles name either.
_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray

# What pickled NumPy arrays and scalars need: array reconstruction (ndarray.__setstate__ then
# fills in the data, no code), dtypes, and _codecs.encode, with which Python 3 writes bytes in
# protocol 2 (NumPy's array data; torch.save uses protocol 2).
NUMPY_GLOBALS = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list; nothing was run."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from ``allowed``.

    allowed : mapping ``(module, name) -> object`` used in place of the global.
    what : the end of the refusal message, saying what such a file may hold
        (``"a CIFAR file holds only NumPy arrays ..."``).
    Other keyword arguments go to ``pickle.Unpickler`` (``encoding=``).
    """

    def __init__(self, file, allowed, what, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = allowed
        self._what = what

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobal(
                f"refusing to load the global {module}.{name}, which could run code: "
                f"{self._what}; nothing in the file was executed") from None
