"""Checkpoints: host arrays plus a JSON description in one ``.npz``, written atomically.

Layout of the file: every array under its own name (``params``, ``optimizer.exp_sum``, ...) and
the JSON text under ``__meta__`` as a 0-d unicode array, so that it loads with
``numpy.load(path, allow_pickle=False)``: no pickled object ever runs on load.

Writing goes to a temporary file in the destination folder, is flushed to disk, then renamed over
the destination with ``os.replace`` (atomic on POSIX and Windows; :func:`atomic_open`): an
interrupted write leaves the previous checkpoint intact, never a half-written one.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from minivae.backend import Backend
    from minivae.model import VAE

META_KEY = "__meta__"
FORMAT = "minivae.training.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a minivae checkpoint."""


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit flush it to disk and
    rename it to ``path`` (``os.replace``, atomic); on an exception delete it. Readers of ``path``
    see the old file or the complete new one, never a partial one. The temporary name,
    ``.<name>.<pid>.<random>.tmp``, is one no loader looks for."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, mode.replace("w", "x")) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` (name -> host NumPy array) and ``meta`` (JSON-serialisable) to ``path``
    atomically. Returns the path."""
    path = Path(path)
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved for the metadata")
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(f"checkpoint array {name!r} is a {type(array).__name__}, not a host "
                            "NumPy array; copy it with minivae.to_numpy(...) first")
        if array.dtype.hasobject:
            raise TypeError(f"checkpoint array {name!r} holds Python objects, which only pickle "
                            "could store; put such values into the JSON metadata")
    text = json.dumps({"format": FORMAT, "version": VERSION, **meta})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as stream:
        np.savez(stream, **arrays, **{META_KEY: np.array(text)})
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint: ``(arrays, meta)``, arrays as host NumPy arrays, with
    ``allow_pickle=False``. Raises :class:`CheckpointError` with the reason if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise CheckpointError(f"{path} is not a readable .npz checkpoint: {error}") from error
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} has no {META_KEY!r} entry: not a minivae checkpoint")
    meta = json.loads(str(arrays.pop(META_KEY)))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                              f"expected {FORMAT!r} version {VERSION}")
    return arrays, meta


def load_model(path: str | os.PathLike, backend: str | Backend | None = None) -> VAE:
    """Rebuild the :class:`minivae.VAE` stored in a checkpoint (architecture and parameters)."""
    from minivae.model import VAE
    arrays, meta = load_checkpoint(path)
    model = VAE(**meta["model"], backend=backend)
    if arrays["params"].shape != tuple(model.flat_params.shape):
        raise CheckpointError(f"{path}: {arrays['params'].size} parameters for a model of "
                              f"{model.num_params}")
    model.flat_params[...] = model.backend.to_device(arrays["params"], dtype=model.dtype)
    return model
