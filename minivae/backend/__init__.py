"""Array backends: where the numbers live, where random numbers come from, and what each can do.

minivae computes with an *array module* ``xp`` that is either NumPy (CPU) or CuPy (GPU), plus a
third, test-only module ``strict`` (see :mod:`minivae.backend.strict`) that behaves like NumPy but refuses,
as CuPy does, to be silently converted to or mixed with NumPy arrays.

Rules that keep the same code correct on every backend:

* compute code asks for ``xp = get_array_module(x)`` (or ``backend.xp``) and never calls NumPy on
  arrays that may live on the GPU;
* host -> device copies go through :meth:`Backend.to_device` and device -> host copies through
  :func:`to_numpy`; nowhere else;
* random numbers come from :meth:`Backend.random`, i.e. they are drawn where the arrays live;
* what differs between backends is asked of the backend's capabilities (:class:`Backend`), never
  of its name.

Each backend is one module here, a :class:`Backend` subclass that declares its capabilities
(:mod:`~minivae.backend.numpy_backend`, :mod:`~minivae.backend.cupy_backend`,
:mod:`~minivae.backend.strict_backend`), and one entry in :data:`BACKENDS`; another one is added
with :func:`register_backend`. CuPy is imported lazily and never required: ``import minivae``
works without it.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from minivae.backend.base import SPLIT_STEP, Array, Backend, BackendUnavailableError, Random
from minivae.backend.cupy_backend import CupyBackend, cupy_gpu_available
from minivae.backend.numpy_backend import NumpyBackend
from minivae.backend.strict_backend import StrictBackend

__all__ = ["Backend", "BackendUnavailableError", "Random", "BACKENDS", "BACKEND_NAMES", "get_backend",
           "set_backend", "resolve_backend_name", "register_backend", "backend_of", "get_array_module",
           "to_numpy", "cupy_gpu_available"]

# The registry: name -> Backend subclass.
BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (NumpyBackend, CupyBackend, StrictBackend)}
BACKEND_NAMES = tuple(BACKENDS)      # the built-in backends
AUTO = ("cupy", "numpy")             # what "auto" picks: the first of these that can run here
HOST = "numpy"                       # the backend of the arrays that no backend owns
CAPABILITIES = ("can_export_rng_state", "draws_into_out", "default_batch_rows", "kernel_family",
                "split_step")
_default_backend_name = "numpy"
_backends = {}                       # name -> the Backend instance


def register_backend(backend_class: type[Backend]) -> type[Backend]:
    """Add ``backend_class`` to :data:`BACKENDS` under its ``name`` (usable as a class decorator).
    Raises ``ValueError`` if the name is taken or a capability is not declared."""
    name = getattr(backend_class, "name", None)
    if not isinstance(name, str) or name in BACKENDS or name == "auto":
        raise ValueError(f"a backend needs a new name, not {name!r}")
    missing = [capability for capability in CAPABILITIES if not hasattr(backend_class, capability)]
    if missing:
        raise ValueError(f"backend {name!r} does not declare {', '.join(missing)}")
    if backend_class.split_step not in SPLIT_STEP:
        raise ValueError(f"backend {name!r}: split_step must be one of {SPLIT_STEP}, "
                         f"not {backend_class.split_step!r}")
    BACKENDS[name] = backend_class
    return backend_class


def unregister_backend(name: str) -> None:
    """Remove a backend added with :func:`register_backend` (and its instance)."""
    if name in BACKEND_NAMES:
        raise ValueError(f"{name!r} is a built-in backend")
    del BACKENDS[name]
    _backends.pop(name, None)


def resolve_backend_name(name: str | Backend | None = None) -> str:
    """Turn ``None`` (the process default), ``"auto"`` or a backend name into a backend name."""
    if name is None:
        name = _default_backend_name
    if isinstance(name, Backend):
        return name.name
    if name == "auto":
        return next(candidate for candidate in AUTO if BACKENDS[candidate].available())
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {tuple(BACKENDS) + ('auto',)}")
    return name


def get_backend(name: str | Backend | None = None) -> Backend:
    """The :class:`Backend` called ``name`` (``None``: the process default; ``"auto"``: CuPy if a
    GPU is usable, else NumPy). Raises :class:`BackendUnavailableError` if it cannot run here."""
    if isinstance(name, Backend):
        return name
    resolved = resolve_backend_name(name)
    if resolved not in _backends:
        _backends[resolved] = BACKENDS[resolved]()
    return _backends[resolved]


def set_backend(name: str | Backend) -> Backend:
    """Set the process-wide default backend used by models created without ``backend=``."""
    global _default_backend_name
    backend = get_backend(name)  # fail now, not at the first model, if it cannot run
    _default_backend_name = backend.name
    return backend


def _owner(array: Any) -> type[Backend] | None:
    """The backend class that owns ``array`` (None for a host array, or anything else)."""
    for backend_class in BACKENDS.values():
        if backend_class.owns(array):
            return backend_class
    return None


def backend_of(array: Any) -> Backend:
    """The backend whose arrays ``array`` is one of (NumPy for host arrays)."""
    owner = _owner(array)
    return get_backend(HOST if owner is None else owner.name)


def get_array_module(*arrays: Any) -> ModuleType:
    """The array module (``numpy``, ``cupy`` or ``minivae.backend.strict``) that ``arrays`` belong to.

    Like ``cupy.get_array_module``, but without importing CuPy when no CuPy array is given.
    """
    for array in arrays:
        owner = _owner(array)
        if owner is not None:
            return owner.array_module()
    return np


def to_numpy(array: Array) -> np.ndarray:
    """Copy ``array`` to the host as a NumPy array: the one device -> host door.

    Use it at the edges only (logging, plotting, saving), never inside the computation.
    """
    owner = _owner(array)
    return np.asarray(array) if owner is None else owner.to_host(array)
