"""Unpickling limited to an explicit allow-list of globals: the one way dtkd reads pickles.

A pickle names the callables that rebuild its objects (GLOBAL opcodes: ``os system``,
``builtins eval``, ...) and a plain unpickler imports and calls them: that is how a crafted file
runs code. :class:`RestrictedUnpickler` never imports anything. Its ``find_class`` looks the
``(module, name)`` pair up in a table the caller gives (values: the objects to use in its place)
and raises :class:`RefusedGlobal` (an ``UnpicklingError``) naming any other global, before
anything runs.

It derives from the pure-Python ``pickle._Unpickler``, not the C one: the C unpickler sizes
its memo array by the largest index a PUT names (``LONG_BINPUT 1260916081`` zero-fills 20 GB)
and allocates a counted BINBYTES/BINUNICODE before reading it (a 5-byte file claims 4 GB);
the Python one keeps the memo in a dict and reads before it allocates, so memory stays bounded
by the file's size. Loading is as fast on real files (CIFAR-100 train: 1.25 s against 1.14 s;
the time goes into decoding the pixel string).

Used by the CIFAR reader (``dtkd.data.cifar``: NumPy arrays only) and the PyTorch checkpoint
reader (``dtkd.io.pth``: tensors, dicts, lists, tuples, numbers, strings).
"""
import codecs
import pickle

import numpy as np

__all__ = ["RestrictedUnpickler", "RefusedGlobal", "NUMPY_GLOBALS"]

# NumPy 2 renamed numpy.core to numpy._core; pickles name either.
_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


def _numeric_dtype(dtype):
    """``dtype`` as a NumPy dtype, refusing object dtypes: their arrays are filled at creation
    (a crafted shape makes that gigabytes) and hold arbitrary Python objects."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object dtype: only numeric arrays are read")
    return dtype


def _array_dtype(*args):
    return _numeric_dtype(np.dtype(*args))


class _NdarrayType:
    """What a pickle gets for ``numpy.ndarray``: only usable as :func:`_reconstruct`'s subtype
    (calling it, ``ndarray(shape)``, would allocate whatever shape the file names)."""


def _reconstruct(subtype, shape, dtype):
    """NumPy's pickled-array constructor, limited to what NumPy writes: an empty base array of
    a numeric dtype whose data ``ndarray.__setstate__`` then fills from the file's bytes. A
    crafted shape could otherwise allocate memory the file never pays for."""
    if subtype is not _NdarrayType:
        raise pickle.UnpicklingError(f"refusing to rebuild an array of type {subtype!r}")
    if np.prod(np.asarray(shape, dtype=np.int64)) != 0:
        raise pickle.UnpicklingError(f"refusing a pickled array base of shape {shape!r}: NumPy "
                                     "writes (0,) and restores the data from the file")
    return _multiarray._reconstruct(np.ndarray, shape, _numeric_dtype(dtype))


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    """NumPy's protocol-5 array constructor (``numpy._core.numeric._frombuffer``): the array's
    bytes travel in the pickle as a bytearray (in band; out-of-band buffers are refused by the
    unpickler itself, which is given none). A view of those bytes -- no allocation beyond what
    the file holds -- of a numeric dtype, reshaped as NumPy does."""
    if not isinstance(buf, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise pickle.UnpicklingError(f"refusing a protocol-5 array over a "
                                     f"{type(buf).__name__} (expected the array's bytes)")
    if order not in ("C", "F", "K"):
        raise pickle.UnpicklingError(f"refusing a protocol-5 array of order {order!r}")
    try:
        array = np.frombuffer(buf, dtype=_numeric_dtype(dtype))
        if order == "K" and axis_order is not None:
            return array.reshape(shape, order="C").transpose(axis_order)
        return array.reshape(shape, order=order)
    except (ValueError, TypeError) as e:
        raise pickle.UnpicklingError(f"a protocol-5 array whose bytes do not match its shape "
                                     f"{shape!r} and dtype ({e})") from None


def _scalar(dtype, *data):
    return _multiarray.scalar(_numeric_dtype(dtype), *data)


# What pickled NumPy arrays and scalars need: array reconstruction (ndarray.__setstate__ then
# fills in the data, no code; protocol 5: a view of an in-band bytearray), numeric dtypes, and
# _codecs.encode, with which Python 3 writes
# bytes in protocol 2 (NumPy's array data; torch.save uses protocol 2).
NUMPY_GLOBALS = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _array_dtype,
    # protocol 5 (pickle.dumps(..., protocol=5), Python >= 3.8's highest): arrays as bytearrays
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list; nothing was run."""


# The BUILD opcode hands an object's state to its __setstate__, and NumPy's trust theirs: a
# dtype state with byte order 'N' in a 6-tuple (a fuzzed CIFAR file) changed NumPy's uint8 type
# for the whole process, and the next array operation crashed it. So the states of NumPy
# objects are checked against what NumPy writes before they reach NumPy.
_NUMERIC_KINDS = "biufc"


def _is_plain_int(v):
    return type(v) is int


def _is_plain_numeric(dtype):
    """A NumPy dtype of one number per element: bool, int, uint, float or complex."""
    return (isinstance(dtype, np.dtype) and dtype.kind in _NUMERIC_KINDS and
            dtype.names is None and dtype.subdtype is None)


def _check_dtype_state(dtype, state):
    """A numeric dtype's state as ``dtype.__reduce__`` writes it: (3, byte order, None, None,
    None, -1, -1, 0), the byte order '|' for one-byte types and '<', '>' or '=' otherwise (a
    str, or one byte: Python 2 pickles such as CIFAR's, read with encoding="bytes")."""
    if not _is_plain_numeric(dtype):
        raise pickle.UnpicklingError(f"refusing to restore a dtype {dtype!r}: only numeric "
                                     "arrays are read")
    orders = "|" if dtype.itemsize == 1 else "<>="
    order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
    if isinstance(order, bytes):
        order = order.decode("latin1")
    if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and
            _is_plain_int(state[0]) and isinstance(order, str) and len(order) == 1 and
            order in orders and
            state[2:5] == (None, None, None) and state[5:] == (-1, -1, 0) and
            all(_is_plain_int(v) for v in state[5:])):
        raise pickle.UnpicklingError(f"refusing a dtype state {state!r:.200}: NumPy writes "
                                     f"(3, '{orders[0]}', None, None, None, -1, -1, 0) for "
                                     f"{dtype}")


def _check_array_state(state):
    """An array's state as ``ndarray.__reduce__`` writes it: ([1,] shape, numeric dtype,
    is_fortran, bytes), the bytes exactly shape x itemsize long."""
    if isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and \
            _is_plain_int(state[0]):
        state = state[1:]
    if not (isinstance(state, tuple) and len(state) == 4):
        raise pickle.UnpicklingError(f"refusing an array state {state!r:.200}: expected "
                                     "(1, shape, dtype, is_fortran, bytes)")
    shape, dtype, fortran, raw = state
    if not (isinstance(shape, tuple) and len(shape) <= 32 and
            all(_is_plain_int(n) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"refusing an array of shape {shape!r:.200}")
    if not _is_plain_numeric(dtype):
        raise pickle.UnpicklingError(f"refusing an array of dtype {dtype!r:.200}: only numeric "
                                     "arrays are read")
    if not (isinstance(fortran, bool) or (_is_plain_int(fortran) and fortran in (0, 1))):
        raise pickle.UnpicklingError(f"refusing an array state with is_fortran {fortran!r:.50}")
    if not isinstance(raw, (bytes, bytearray, str)):
        raise pickle.UnpicklingError(f"refusing an array whose data is a {type(raw).__name__}")
    count = 1
    for n in shape:
        count *= n
    if len(raw) != count * dtype.itemsize:
        raise pickle.UnpicklingError(f"an array of shape {shape} and dtype {dtype} needs "
                                     f"{count * dtype.itemsize} bytes, the file holds "
                                     f"{len(raw)}")


def _checked_build(unpickler):
    """BUILD, with the state of NumPy objects checked first (see _check_dtype_state)."""
    stack = unpickler.stack
    if len(stack) >= 2:
        inst, state = stack[-2], stack[-1]
        if isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        elif isinstance(inst, np.ndarray):
            _check_array_state(state)
        elif isinstance(inst, np.generic):
            raise pickle.UnpicklingError("refusing to set the state of a NumPy scalar (NumPy "
                                         "never writes one)")
    pickle._Unpickler.load_build(unpickler)


class RestrictedUnpickler(pickle._Unpickler):
    """``pickle.Unpickler`` whose globals come only from ``allowed``.

    allowed : mapping ``(module, name) -> object`` used in place of the global.
    what : the end of the refusal message, saying what such a file may hold
        (``"a CIFAR file holds only NumPy arrays ..."``).
    Other keyword arguments go to ``pickle.Unpickler`` (``encoding=``).
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _checked_build

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
