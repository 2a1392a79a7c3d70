"""The IDX file format (MNIST's): a strict reader and a writer.

:func:`read_idx` reads an IDX file (raw or gzip) strictly: magic number, dimensions and exact
length are checked, and a truncated or corrupt file raises :class:`IDXError` naming the problem.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt


class DataError(Exception):
    """Base class of the data module's errors."""


class IDXError(DataError, ValueError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


class ChecksumError(DataError, ValueError):
    """A file's md5 differs from the known one."""



# --- the IDX format ------------------------------------------------------------------------------

# type code (third byte of the magic number) -> dtype; IDX stores multi-byte values big-endian
IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The content of ``path``, decompressed if it is gzip (recognised by its magic bytes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:   # missing, a folder, unreadable
        raise IDXError(f"{path}: cannot be read ({error.strerror or error})") from error
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise IDXError(f"{path}: truncated or corrupt gzip file ({error}); delete it and get a "
                       "fresh copy") from error


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array of the stored dtype and shape.

    Layout: magic ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the values,
    row-major. The length must be exactly ``4 + 4 ndim + prod(sizes) * itemsize``.
    """
    if len(data) == 0:
        raise IDXError(f"{source}: empty (0 bytes); delete it and get a fresh copy")
    if len(data) < 4:
        raise IDXError(f"{source}: {len(data)} bytes, too short for the 4-byte IDX magic number")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES or data[3] == 0:
        raise IDXError(f"{source}: bad magic number 0x{data[:4].hex()}; an IDX file starts with "
                       "00 00 <type 08-0E> <ndim >= 1> (MNIST images: 0x00000803, labels: "
                       "0x00000801): not an IDX file, or corrupt")
    ndim, dtype = data[3], IDX_DTYPES[data[2]]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{source}: truncated in the header ({len(data)} bytes, the {ndim} "
                       f"dimensions need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) < expected:
        raise IDXError(f"{source}: truncated: shape {shape} of {dtype.name} needs {expected:,} "
                       f"bytes, the file has {len(data):,}")
    if len(data) > expected:
        raise IDXError(f"{source}: wrong length: shape {shape} of {dtype.name} needs {expected:,} "
                       f"bytes, the file has {len(data) - expected:,} more; corrupt or not IDX")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(path: str | os.PathLike, md5: str | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip). With ``md5``, the decompressed content must match it.

    The structure is checked first, so that an empty, truncated or foreign file says so rather
    than only that its md5 differs."""
    data = read_bytes(path)
    array = parse_idx(data, source=str(path))
    if md5 is not None:
        actual = hashlib.md5(data).hexdigest()
        if actual != md5:
            raise ChecksumError(f"{path}: md5 of the decompressed content is {actual}, expected "
                                f"{md5}; the file is corrupt or not the expected one")
    return array


def write_idx(path: str | os.PathLike, array: npt.ArrayLike, compress: bool | None = None) -> Path:
    """Write ``array`` as IDX (gzip when ``compress`` or the name ends in .gz). For tests and tools."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("=").str: code for code, dtype in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    data = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(IDX_DTYPES[code]).tobytes())
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
