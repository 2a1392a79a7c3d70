"""A strict stand-in for CuPy that runs on the CPU, for testing the GPU code path without a GPU.

``minivae.backend.strict`` is an array module that computes with NumPy underneath but, like CuPy, keeps its
arrays apart from NumPy's:

* converting a strict array to NumPy implicitly (``numpy.asarray(a)``, ``numpy.exp(a)`` result
  captured as NumPy, ``a.tolist()`` …) raises ``TypeError`` — use :func:`asnumpy` (the explicit
  device -> host copy, as ``cupy.asnumpy``);
* mixing a strict array with a NumPy array in arithmetic, a ufunc or a function raises ``TypeError``,
  as CuPy does;
* :func:`asarray` accepts NumPy arrays: that is the explicit host -> device copy (as ``cupy.asarray``).

Python scalars and NumPy scalars (``numpy.float32(1.0)``) mix freely, as with CuPy; ``float(a)`` on a
one-element array is allowed (CuPy allows it too, at the cost of a device synchronisation). Every
such read of a device array by the host (``float``, ``int``, ``bool``, ``item``, an array used as an
index, ``get``/:func:`asnumpy`) is counted: :func:`host_reads` says how many so far, so that a test
can bound the synchronisations of a training loop (on a GPU each one waits for the device).

Library code that passes its test suite on this backend does not convert or mix arrays implicitly,
which is exactly what breaks on a real GPU.
"""
from __future__ import annotations

import threading

import numpy as _np
from numpy.lib.mixins import NDArrayOperatorsMixin

__all__ = ["ndarray", "asarray", "asnumpy", "host_reads"]

_reads = [0]
_reads_lock = threading.Lock()


def host_reads():
    """How many times the host has read a strict array's values so far (float(), int(), bool(),
    item(), an array as an index, get(), asnumpy()): each would be a device synchronisation on a GPU."""
    return _reads[0]


def _count_read():
    with _reads_lock:
        _reads[0] += 1


def _mixing_error(what):
    return TypeError(
        f"implicit mixing of a device array with a NumPy array ({what}); the GPU backend forbids it. "
        "Copy explicitly with backend.to_device(...) or minivae.to_numpy(...)")


def _unwrap(value, what):
    """Strict array -> its NumPy data; refuse raw NumPy arrays; recurse into lists/tuples."""
    if isinstance(value, ndarray):
        return value._data
    if isinstance(value, _np.ndarray):
        raise _mixing_error(what)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(item, what) for item in value)
    return value


def _wrap(value):
    if isinstance(value, _np.ndarray):
        return ndarray(value)
    if isinstance(value, _np.generic):  # CuPy returns 0-d device arrays, not host scalars
        return ndarray(_np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(item) for item in value)
    if isinstance(value, list):
        return [_wrap(item) for item in value]
    return value


class ndarray(NDArrayOperatorsMixin):
    """An array that lives on the stand-in "device". Holds a NumPy array it never hands out."""

    __slots__ = ("_data",)

    def __init__(self, data):
        object.__setattr__(self, "_data", data)

    # -- the guards -------------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "implicit conversion of a device array to a NumPy array is not allowed (as in CuPy); "
            "use minivae.to_numpy(...) where a host copy is intended")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        what = f"numpy.{ufunc.__name__}"
        args = _unwrap(inputs, what)
        outs = kwargs.get("out")
        if outs is not None:
            kwargs["out"] = _unwrap(outs, what)
        result = getattr(ufunc, method)(*args, **kwargs)
        if outs is not None:  # hand back the caller's own arrays, as NumPy does with out=
            return outs[0] if len(outs) == 1 else outs
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        if _np.ndarray in types:
            raise _mixing_error(f"numpy.{func.__name__}")
        what = f"numpy.{func.__name__}"
        return _wrap(func(*_unwrap(args, what), **{k: _unwrap(v, what) for k, v in kwargs.items()}))

    # -- ndarray-like surface ---------------------------------------------------------------------
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    nbytes = property(lambda self: self._data.nbytes)
    itemsize = property(lambda self: self._data.itemsize)
    strides = property(lambda self: self._data.strides)
    flags = property(lambda self: self._data.flags)
    T = property(lambda self: ndarray(self._data.T))
    base = property(lambda self: None if self._data.base is None else ndarray(self._data.base))

    @property
    def real(self):
        return ndarray(self._data.real)

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        for row in self._data:
            yield _wrap(row)

    def __getitem__(self, key):
        return _wrap(self._data[_unwrap(key, "indexing")])

    def __setitem__(self, key, value):
        self._data[_unwrap(key, "indexing")] = _unwrap(value, "assignment")

    def __float__(self):
        _count_read()
        return float(self._data)

    def __int__(self):
        _count_read()
        return int(self._data)

    def __bool__(self):
        _count_read()
        return bool(self._data)

    def __index__(self):
        _count_read()
        return self._data.__index__()

    def __repr__(self):
        return "strict." + repr(self._data)

    def __copy__(self):
        return ndarray(self._data.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._data.copy())

    def tolist(self):
        raise TypeError("tolist() copies a device array to the host; use minivae.to_numpy(...) first")

    def item(self, *args):
        _count_read()
        return self._data.item(*args)

    def get(self):
        """The explicit device -> host copy, as ``cupy.ndarray.get``."""
        _count_read()
        return self._data.copy()

    def __getattr__(self, name):
        if name.startswith("__"):  # e.g. __array_interface__: a back door to the host data
            raise AttributeError(name)
        attribute = getattr(self._data, name)
        if not callable(attribute):
            return _wrap(attribute)

        def method(*args, **kwargs):
            what = f"ndarray.{name}"
            return _wrap(attribute(*_unwrap(args, what),
                                   **{k: _unwrap(v, what) for k, v in kwargs.items()}))
        return method


def asarray(a, dtype=None, order=None):
    """Host -> device copy (accepts NumPy arrays, as ``cupy.asarray`` does); strict arrays pass."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == _np.dtype(dtype) else ndarray(a._data.astype(dtype))
    return ndarray(_np.array(a, dtype=dtype, order=order, copy=True))


array = asarray


def asnumpy(a):
    """Device -> host copy, as ``cupy.asnumpy``."""
    if isinstance(a, ndarray):
        _count_read()
        return a._data.copy()
    return _np.asarray(a)


def get_array_module(*arrays):
    import sys
    return sys.modules[__name__]


# Every other NumPy name: dtypes, constants and functions, the functions wrapped so that they take
# and return strict arrays and refuse NumPy arrays.
_PASSTHROUGH = (type, _np.dtype, float, int, bool)


def __getattr__(name):
    attribute = getattr(_np, name)
    if isinstance(attribute, _np.ufunc) or isinstance(attribute, _PASSTHROUGH) or not callable(attribute):
        return attribute
    if name in ("isscalar", "dtype", "result_type", "can_cast", "promote_types", "finfo", "iinfo",
                "ndim", "errstate"):
        return attribute

    def function(*args, **kwargs):
        what = f"numpy.{name}"
        return _wrap(attribute(*_unwrap(args, what), **{k: _unwrap(v, what) for k, v in kwargs.items()}))
    function.__name__ = name
    return function
