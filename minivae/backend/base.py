"""What every backend is: an array module, the explicit host/device copies, a random source, and
the capabilities that library code asks about instead of the backend's name.

:class:`Backend` is subclassed once per backend (:mod:`~minivae.backend.numpy_backend`,
:mod:`~minivae.backend.cupy_backend`, :mod:`~minivae.backend.strict_backend`); the registry is
:data:`minivae.backend.BACKENDS`.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from minivae._types import Array

SPLIT_STEP = ("auto", "on request", "never")   # the values of Backend.split_step


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for but cannot run on this machine."""


class Random:
    """A random source that draws on the backend's device.

    Here: NumPy's ``Generator`` (PCG64) on the host, its draws copied onto the device with
    :meth:`Backend.to_device` (nothing is copied on NumPy). A backend with a generator of its own
    subclasses this (CuPy: :class:`~minivae.backend.cupy_backend.CupyRandom`, XORWOW on the GPU).
    ``get_state``/``set_state`` give a JSON-friendly snapshot where the backend
    ``can_export_rng_state``.
    """

    def __init__(self, backend: Backend, seed: int | None = None):
        self.backend = backend
        self.seed = seed
        self._generator = self._new_generator(seed)

    def _new_generator(self, seed):
        return np.random.default_rng(seed)

    def _on_device(self, draws):
        """Host draws -> the backend's device."""
        return self.backend.to_device(draws)

    def normal(self, shape: tuple[int, ...], dtype: DTypeLike, out: Array | None = None) -> Array:
        """Standard normal draws, ``shape``, in ``dtype``, on the backend's device.

        ``out``, when given, is filled (in place, without a temporary where the backend
        ``draws_into_out``) and returned."""
        return self._draw(self._generator.standard_normal, shape, dtype, out)

    def uniform(self, shape: tuple[int, ...], dtype: DTypeLike, out: Array | None = None) -> Array:
        """Uniform draws on [0, 1), ``shape``, in ``dtype``, on the backend's device; ``out`` as in
        :meth:`normal` (the same draws either way)."""
        return self._draw(self._generator.random, shape, dtype, out)

    def _draw(self, method, shape, dtype, out):
        if out is not None and self.backend.draws_into_out:
            return method(size=shape, dtype=np.dtype(dtype), out=out)
        sample = self._on_device(method(size=shape, dtype=np.dtype(dtype)))
        if out is not None:
            out[...] = sample
            return out
        return sample

    def permutation(self, n: int) -> Array:
        """A random permutation of ``range(n)`` as an integer array on the backend's device."""
        return self._on_device(self._generator.permutation(n))

    def get_state(self) -> dict:
        """The generator's state as a JSON-serialisable dict (where ``can_export_rng_state``)."""
        self._check_state_export()
        return self._generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state that :meth:`get_state` returned (where ``can_export_rng_state``)."""
        self._check_state_export()
        self._generator.bit_generator.state = state

    def _check_state_export(self):
        if not self.backend.can_export_rng_state:
            raise NotImplementedError(f"the {self.backend.name!r} backend's generators cannot export "
                                      "or import their state; reseed instead")


class Backend:
    """An array module plus the explicit host/device copies and the capabilities that go with it.

    Each backend is a subclass that sets the class attributes below (see
    :data:`minivae.backend.BACKENDS`). Library code asks a backend what it can do through them,
    never by its name.

    Attributes
    ----------
    name : str
        The registry name, e.g. ``"numpy"``, ``"cupy"``, ``"strict"``: for display and
        serialisation only.
    xp : module
        The array module: ``numpy``, ``cupy`` or :mod:`minivae.backend.strict`.
    can_export_rng_state : bool
        :meth:`Random.get_state` / ``set_state`` work (NumPy, strict). Where not (CuPy: its
        generators cannot export their state), a checkpoint taken mid-epoch restores the noise by
        replaying the epoch's draws (:class:`minivae.training.loop.Trainer`).
    draws_into_out : bool
        ``random.normal(..., out=)`` draws straight into ``out`` (NumPy, CuPy); where not (strict:
        the draws come from NumPy's generator on the host), they are drawn and copied into it.
    default_batch_rows : int
        Rows (examples x importance samples) decoded per call in evaluation
        (:func:`minivae.training.evaluate.iwae_bound`): large enough to keep the BLAS or the GPU
        busy, small enough that the (rows, D) temporaries stay in cache / memory. 2**13 on the CPU,
        2**16 on a GPU.
    kernel_family : str
        Which kernels the fast step and the optimizers' flat updates run
        (:func:`minivae.fast.dispatch.get_kernels`): ``"cuda"``, fused CUDA kernels (CuPy);
        ``"compiled-cpu"``, array operations with the hot passes compiled for the CPU where a
        compiler is at hand (NumPy); ``"array"``, in-place operations of ``xp`` (strict).
    split_step : str
        Whether :class:`minivae.TrainStep` may split a step between two threads: ``"auto"``
        (``threads="auto"`` splits large steps, ``threads=2`` every step: NumPy), ``"on request"``
        (only ``threads=2``: strict, for the tests), ``"never"`` (one device: CuPy).
    """

    name: str
    can_export_rng_state: bool
    draws_into_out: bool
    default_batch_rows: int
    kernel_family: str
    split_step: str

    def __init__(self):
        self.xp = self.array_module()

    # -- what a backend declares besides its capabilities --------------------------------------------
    @staticmethod
    def array_module() -> ModuleType:
        """The array module (imported on first use)."""
        raise NotImplementedError

    @classmethod
    def available(cls) -> bool:
        """True if this backend can run here (cheap; no device is initialised)."""
        return True

    @staticmethod
    def owns(array: Any) -> bool:
        """True for an array of this backend's own array type. A backend whose arrays are NumPy
        arrays owns none: :func:`minivae.backend.get_array_module` and
        :func:`~minivae.backend.to_numpy` take what no backend owns for a host array."""
        return False

    @staticmethod
    def to_host(array: Array) -> np.ndarray:
        """An array this backend :meth:`owns`, copied to the host."""
        return np.asarray(array)

    # -- the same on every backend -------------------------------------------------------------------
    def __repr__(self):
        return f"Backend({self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Backend) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def to_device(self, host_array: Any, dtype: DTypeLike = None) -> Array:
        """Copy a host (NumPy) array onto this backend's device: the one host -> device door."""
        return self.xp.asarray(host_array, dtype=dtype)

    def random(self, seed: int | None = None) -> Random:
        """A random source that draws on this backend's device."""
        return Random(self, seed)

    def is_native(self, array: Any) -> bool:
        """True if ``array`` is an array of this backend's module (e.g. not a NumPy array on CuPy)."""
        return isinstance(array, self.xp.ndarray)

    def synchronize(self) -> None:
        """Wait for queued device work to finish (no-op on the CPU). Needed for honest timings."""
