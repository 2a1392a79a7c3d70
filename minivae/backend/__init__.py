"""Array backends: where the numbers live and where random numbers come from.

minivae computes with an *array module* ``xp`` that is either NumPy (CPU) or CuPy (GPU), plus a
third, test-only module ``strict`` (see :mod:`minivae.backend.strict`) that behaves like NumPy but refuses,
as CuPy does, to be silently converted to or mixed with NumPy arrays.

Rules that keep the same code correct on every backend:

* compute code asks for ``xp = get_array_module(x)`` (or ``backend.xp``) and never calls NumPy on
  arrays that may live on the GPU;
* host -> device copies go through :meth:`Backend.to_device` and device -> host copies through
  :func:`to_numpy`; nowhere else;
* random numbers come from :meth:`Backend.random`, i.e. they are drawn where the arrays live.

CuPy is imported lazily and never required: ``import minivae`` works without it.
"""
from __future__ import annotations

import numpy as np

BACKEND_NAMES = ("numpy", "cupy", "strict")
_default_backend_name = "numpy"


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for but cannot run on this machine."""


def _import_cupy():
    try:
        import cupy
    except ImportError as error:
        raise BackendUnavailableError(
            "backend 'cupy' was requested but CuPy is not installed; install it with "
            "pip install -e '.[gpu]' (CUDA 13) or pip install cupy-cuda12x (CUDA 12)") from error
    return cupy


def cupy_gpu_available() -> bool:
    """True when CuPy imports *and* sees a usable CUDA device (``import cupy`` alone is not enough)."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:  # a broken driver install raises CUDA runtime errors of its own
        return False


class Random:
    """A random source that draws on the backend's device.

    Wraps ``numpy.random.Generator`` (PCG64) on the CPU and ``cupy.random.Generator`` (XORWOW) on the
    GPU. ``get_state``/``set_state`` give a JSON-friendly snapshot where the backend supports it.
    """

    def __init__(self, backend: "Backend", seed=None):
        self.backend = backend
        self.seed = seed
        if backend.name == "cupy":
            self._generator = backend.xp.random.default_rng(seed)
        else:
            self._generator = np.random.default_rng(seed)

    def normal(self, shape, dtype, out=None):
        """Standard normal draws, ``shape``, in ``dtype``, on the backend's device.

        ``out``, when given, is filled in place (no allocation; NumPy and CuPy backends)."""
        if out is not None and self.backend.name != "strict":
            return self._generator.standard_normal(size=shape, dtype=np.dtype(dtype), out=out)
        sample = self._generator.standard_normal(size=shape, dtype=np.dtype(dtype))
        if out is not None:
            out[...] = self._wrap(sample)
            return out
        return self._wrap(sample)

    def uniform(self, shape, dtype):
        """Uniform draws on [0, 1), ``shape``, in ``dtype``, on the backend's device."""
        sample = self._generator.random(size=shape, dtype=np.dtype(dtype))
        return self._wrap(sample)

    def permutation(self, n: int):
        """A random permutation of ``range(n)`` as an integer array on the backend's device."""
        if self.backend.name == "cupy":  # cupy's Generator has no permutation(): sort random keys
            return self.backend.xp.argsort(self._generator.random(size=n))
        return self._wrap(self._generator.permutation(n))

    def get_state(self):
        """The generator's state as a JSON-serialisable dict (NumPy/strict backends only)."""
        if self.backend.name == "cupy":
            raise NotImplementedError("CuPy generators cannot export their state; reseed instead")
        return self._generator.bit_generator.state

    def set_state(self, state) -> None:
        if self.backend.name == "cupy":
            raise NotImplementedError("CuPy generators cannot import a state; reseed instead")
        self._generator.bit_generator.state = state

    def _wrap(self, host_array):
        if self.backend.name == "strict":
            return self.backend.xp.asarray(host_array)
        return host_array


class Backend:
    """An array module plus the explicit host/device copies that go with it.

    Attributes
    ----------
    name : str
        ``"numpy"``, ``"cupy"`` or ``"strict"``.
    xp : module
        The array module: ``numpy``, ``cupy`` or :mod:`minivae.backend.strict`.
    """

    def __init__(self, name: str):
        if name == "numpy":
            self.xp = np
        elif name == "cupy":
            cupy = _import_cupy()
            if not cupy_gpu_available():
                raise BackendUnavailableError(
                    "backend 'cupy' was requested but CuPy finds no usable CUDA GPU on this machine "
                    "(import cupy succeeded, cupy.cuda.is_available() is False); use backend='numpy'")
            self.xp = cupy
        elif name == "strict":
            from minivae.backend import strict
            self.xp = strict
        else:
            raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES + ('auto',)}")
        self.name = name

    def __repr__(self):
        return f"Backend({self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Backend) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def to_device(self, host_array, dtype=None):
        """Copy a host (NumPy) array onto this backend's device: the one host -> device door."""
        return self.xp.asarray(host_array, dtype=dtype)

    def random(self, seed=None) -> Random:
        """A random source that draws on this backend's device."""
        return Random(self, seed)

    def is_native(self, array) -> bool:
        """True if ``array`` is an array of this backend's module (e.g. not a NumPy array on CuPy)."""
        return isinstance(array, self.xp.ndarray)

    def synchronize(self) -> None:
        """Wait for queued device work to finish (no-op on the CPU). Needed for honest timings."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()


def resolve_backend_name(name=None) -> str:
    """Turn ``None`` (the process default), ``"auto"`` or a backend name into a backend name."""
    if name is None:
        name = _default_backend_name
    if isinstance(name, Backend):
        return name.name
    if name == "auto":
        return "cupy" if cupy_gpu_available() else "numpy"
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES + ('auto',)}")
    return name


_backends = {}


def get_backend(name=None) -> Backend:
    """The :class:`Backend` called ``name`` (``None``: the process default; ``"auto"``: CuPy if a
    GPU is usable, else NumPy). Raises :class:`BackendUnavailableError` if it cannot run here."""
    if isinstance(name, Backend):
        return name
    resolved = resolve_backend_name(name)
    if resolved not in _backends:
        _backends[resolved] = Backend(resolved)
    return _backends[resolved]


def set_backend(name) -> Backend:
    """Set the process-wide default backend used by models created without ``backend=``."""
    global _default_backend_name
    backend = get_backend(name)  # fail now, not at the first model, if it cannot run
    _default_backend_name = backend.name
    return backend


def get_array_module(*arrays):
    """The array module (``numpy``, ``cupy`` or ``minivae.backend.strict``) that ``arrays`` belong to.

    Like ``cupy.get_array_module``, but without importing CuPy when no CuPy array is given.
    """
    for array in arrays:
        module = type(array).__module__.split(".")[0]
        if module == "cupy":
            import cupy
            return cupy
        if module == "minivae":
            from minivae.backend import strict
            if isinstance(array, strict.ndarray):
                return strict
    return np


def to_numpy(array):
    """Copy ``array`` to the host as a NumPy array: the one device -> host door.

    Use it at the edges only (logging, plotting, saving), never inside the computation.
    """
    module = type(array).__module__.split(".")[0]
    if module == "cupy":
        return array.get()
    if module == "minivae":
        from minivae.backend import strict
        return strict.asnumpy(array)
    return np.asarray(array)
