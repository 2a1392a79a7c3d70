"""The C entry point of the matrix product in the BLAS that NumPy itself uses, for compiled code.

The recorded step (:mod:`minivae.fast.program`) runs its matrix products from C++, so it needs the
address of ``cblas_sgemm`` in the library behind ``numpy.matmul``. NumPy's wheels bundle OpenBLAS
with renamed symbols (``scipy_cblas_sgemm64_``: 64-bit integers, "ILP64"); other builds link a
system OpenBLAS or MKL (``cblas_sgemm``: 32-bit integers). threadpoolctl lists the BLAS libraries
loaded in the process, with their paths; :func:`find_sgemm` looks for those symbols there.
Nothing here is required: without such a symbol the Python engine runs the step.
"""
from __future__ import annotations

import ctypes
import threading
from typing import NamedTuple

# symbol -> bits of its integer arguments, most specific first
SGEMM_SYMBOLS = (("scipy_cblas_sgemm64_", 64), ("cblas_sgemm64_", 64), ("scipy_cblas_sgemm", 32),
                 ("cblas_sgemm", 32))


class Gemm(NamedTuple):
    """A CBLAS ``sgemm``: its address, the width of its integer arguments, where it was found."""
    address: int
    int_bits: int
    symbol: str
    library: str


_lock = threading.Lock()
_found: list = []     # [Gemm or None] once looked up


def find_sgemm() -> Gemm | None:
    """The CBLAS sgemm of the BLAS that NumPy loaded (looked up once), or None."""
    with _lock:
        if not _found:
            _found.append(_lookup())
        return _found[0]


def _lookup():
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that threadpoolctl finds it)
    from threadpoolctl import threadpool_info
    for info in threadpool_info():
        if info.get("user_api") != "blas" or not info.get("filepath"):
            continue
        try:
            library = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for symbol, bits in SGEMM_SYMBOLS:
            function = getattr(library, symbol, None)
            if function is not None:
                address = ctypes.cast(function, ctypes.c_void_p).value
                return Gemm(address, bits, symbol, info["filepath"])
    return None
