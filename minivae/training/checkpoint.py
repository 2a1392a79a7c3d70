"""Checkpoints: host arrays plus a JSON description in one ``.npz``, written atomically.

Layout of the file: every array under its own name (``params``, ``optimizer.exp_sum``, ...) and
the JSON text under ``__meta__`` as a 0-d unicode array, so that it loads with
``numpy.load(path, allow_pickle=False)``: no pickled object ever runs on load.

Writing goes to a temporary file in the destination folder, is flushed to disk, then renamed over
the destination with ``os.replace`` (atomic on POSIX and Windows; :func:`atomic_open`): an
interrupted write leaves the previous checkpoint intact, never a half-written one. A process killed
while writing (SIGKILL, power loss) leaves its temporary file, under a name no loader reads; the
next write beside it removes the temporaries of processes that no longer run.

Reading never trusts the file: anything that cannot be read back (a truncated or corrupt archive,
metadata that is not a JSON object, another format) is a :class:`CheckpointError` naming the file
and the reason; :func:`load_model` and :meth:`minivae.training.loop.Trainer.restore` also refuse
missing entries, arrays of the wrong shape or dtype, and NaN or Inf.

:func:`folder_lock` keeps two runs out of one output folder: the second is refused at once
(:class:`FolderLockedError`) instead of mixing its files with the first's.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import socket
import time
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


class FolderLockedError(RuntimeError):
    """Another process holds the lock of an output folder (:func:`folder_lock`)."""


LOCK_NAME = ".lock"

try:                                   # POSIX
    import fcntl

    def _try_lock(stream):
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
except ImportError:                    # Windows
    import msvcrt

    def _try_lock(stream):
        stream.seek(0)
        msvcrt.locking(stream.fileno(), msvcrt.LK_NBLCK, 1)


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``folder`` (its file ``.lock``) for the ``with`` block, or raise
    :class:`FolderLockedError` at once, naming the holder, if another process holds it.

    The lock is an operating-system lock on the open file (``flock``; ``msvcrt.locking`` on
    Windows), not the file's existence: it is released when the block ends (normally, by an
    exception, by Ctrl-C) and, by the kernel, when the process dies in any way, SIGKILL included.
    So a ``.lock`` left behind by a dead process never blocks: the next run takes it over. The
    file holds the holder's pid, host and start time, for the message only; it is deleted when
    the block ends."""
    path = Path(folder) / LOCK_NAME
    for _ in range(100):
        stream = open(path, "a+")
        try:
            _try_lock(stream)
        except OSError:
            stream.seek(0)
            holder = stream.read().strip() or "a process that has not written its pid yet"
            stream.close()
            raise FolderLockedError(f"{Path(folder)} is in use by another run ({holder}; lock {path}): "
                                    "wait for it to end, or choose another output folder") from None
        try:   # the previous holder may have deleted the file between our open and our lock
            current = os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        stream.close()
    else:
        raise FolderLockedError(f"{path}: could not be locked (it keeps being replaced)")
    try:
        stream.seek(0)
        stream.truncate()
        stream.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        stream.flush()
        yield path
    finally:
        try:
            path.unlink()                # while still holding the lock: no one can take a deleted file
        except OSError:
            pass
        stream.close()


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (POSIX; elsewhere always True: unknown)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)           # signal 0: the existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:       # it runs, as another user
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_open` left beside ``path`` in processes that
    no longer run (killed while writing). Returns what was removed."""
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        pid = candidate.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass
    return removed


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit flush it to disk and
    rename it to ``path`` (``os.replace``, atomic); on an exception delete it. Readers of ``path``
    see the old file or the complete new one, never a partial one. The temporary name,
    ``.<name>.<pid>.<random>.tmp``, is one no loader looks for; those of killed processes are
    removed first (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    remove_stale_temporaries(path)
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
        raise CheckpointError(f"no checkpoint at {path}" + (" (a folder)" if path.is_dir() else ""))
    try:   # our own file object: closed even when NumPy fails half-way (it leaked its own then)
        with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:   # truncated, corrupt (zip CRC), an object array, not a zip at all ...
        raise CheckpointError(f"{path} is not a readable .npz checkpoint: {type(error).__name__}: "
                              f"{error}") from error
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} has no {META_KEY!r} entry: not a minivae checkpoint")
    text = arrays.pop(META_KEY)
    try:
        if text.dtype.kind != "U" or text.ndim != 0:
            raise ValueError(f"a {text.dtype} array of shape {text.shape}, not text")
        meta = json.loads(str(text))
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except ValueError as error:
        raise CheckpointError(f"{path}: its {META_KEY!r} entry is not JSON metadata ({error})") from error
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                              f"expected {FORMAT!r} version {VERSION}")
    return arrays, meta


def require(path: str | os.PathLike, mapping: dict, *names: str, what: str = "entry") -> None:
    """Refuse a checkpoint that lacks one of ``names`` in ``mapping`` (its arrays or metadata)."""
    missing = [name for name in names if name not in mapping]
    if missing:
        raise CheckpointError(f"{path}: no {what} {', '.join(map(repr, missing))}: incomplete, or not "
                              "written by minivae")


def check_array(path: str | os.PathLike, name: str, array: np.ndarray, shape: tuple[int, ...],
                dtype: np.dtype | None = None, allow_inf: bool = False) -> np.ndarray:
    """Refuse a checkpoint array of another shape, of a non-float dtype (or not ``dtype``), or with
    NaN or (unless ``allow_inf``) Inf: parameters that training could not have saved
    (:meth:`minivae.training.loop.Trainer.save` refuses them). An optimizer's sum of squared
    gradients may overflow to Inf and still give finite updates (``allow_inf``); NaN never."""
    if tuple(array.shape) != tuple(shape):
        raise CheckpointError(f"{path}: {name!r} has shape {tuple(array.shape)}, the model needs {tuple(shape)}")
    if array.dtype.kind != "f" or (dtype is not None and array.dtype != dtype):
        raise CheckpointError(f"{path}: {name!r} is stored as {array.dtype}, the model computes in "
                              f"{np.dtype(dtype).name if dtype is not None else 'floating point'}")
    if array.size and not (math.isfinite(float(array.min())) and math.isfinite(float(array.max()))):
        bad = np.isnan(array) if allow_inf else ~np.isfinite(array)
        if bad.any():
            raise CheckpointError(f"{path}: {name!r} holds {int(bad.sum())} " + ("NaN" if allow_inf else "NaN or Inf")
                                  + " values: not a state to continue from")
    return array


def load_model(path: str | os.PathLike, backend: str | Backend | None = None) -> VAE:
    """Rebuild the :class:`minivae.VAE` stored in a checkpoint (architecture and parameters)."""
    from minivae.model import VAE
    arrays, meta = load_checkpoint(path)
    require(path, meta, "model", what="metadata")
    require(path, arrays, "params", what="array")
    if not isinstance(meta["model"], dict):
        raise CheckpointError(f"{path}: its model description is not a JSON object")
    try:
        model = VAE(**meta["model"], backend=backend)
    except (TypeError, ValueError) as error:   # an unknown or invalid architecture field
        raise CheckpointError(f"{path}: its model description {meta['model']} does not build a VAE: "
                              f"{error}") from error
    params = check_array(path, "params", arrays["params"], model.flat_params.shape, model.dtype)
    model.flat_params[...] = model.backend.to_device(params, dtype=model.dtype)
    return model
