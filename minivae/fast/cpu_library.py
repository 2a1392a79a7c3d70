"""The kernels of :mod:`minivae.fast.sources`, compiled for the CPU when a C++ compiler is at hand.

Each kernel in :data:`minivae.fast.sources.CUDA_KERNELS` is the formula for one element; for the CPU,
:func:`minivae.fast.sources.host_function` wraps it in a plain C++ loop over rows and columns, built for
several instruction sets (the loader picks the widest the processor has). Compiled once per
machine (the library is cached) and called through :mod:`ctypes`, which releases the interpreter
lock for the call, a pass of the training step is one call instead of several NumPy calls:

* the optimizer updates (Adam, SGD): one pass over the parameters instead of NumPy's ten;
* bias + ReLU / leaky ReLU, and the derivatives of ReLU, leaky ReLU, tanh and sigmoid (from the
  layer's output): one pass each instead of two to four;
* the reparameterization with the KL term, forward and backward: one pass each instead of ten;
* the Bernoulli loss with its gradient (:data:`BERNOULLI_SOURCE`): one pass; the sum in double;
* bias + tanh with a vectorized tanh, and the importance weights of the evaluation
  (:mod:`minivae.fast.iwae`: z and the latent terms; bias + Bernoulli log-likelihood summed per
  row), one pass each (:data:`FAST_MATH_SOURCE`).

Besides the passes saved, the calls matter for the two-thread step (:mod:`minivae.training.step`): NumPy
releases the interpreter lock only inside a call, so two threads making many short NumPy calls wait
for each other; a compiled pass runs without the lock. The other kernels with a transcendental function
in every element of a large array (bias + sigmoid or softplus, softplus's derivative) stay NumPy
passes: NumPy's vectorized ``exp`` beats a loop of scalar library calls; bias + tanh and the
evaluation's log-likelihood use inline polynomials that the compiler vectorizes.
:class:`~minivae.fast.cpu_kernels.CompiledKernels` is :class:`~minivae.fast.array_kernels.ArrayKernels`
with these passes compiled, each falling back to the array operations for a layout or dtype the
library does not take.

Nothing is required: where no compiler is found (``$CXX``, ``c++``, ``g++``, ``clang++``), the
build fails, or ``MINIVAE_HOST_KERNELS=0`` is set, the NumPy passes run (the same math; the last
bits of a float32 run differ between the two). :func:`status` says which is used.
The cache is ``$MINIVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/minivae``, else ``~/.cache/minivae``;
a library is named after the hash of its source, compiler and flags, and written atomically.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from minivae.fast.sources import CUDA_KERNELS, SCALAR_PARAMS, host_library_source, kernel_params

OPTIMIZER_KERNELS = ("adam", "sgd", "sgd_momentum")
STEP_KERNELS = ("bias_relu", "bias_leaky_relu", "relu_backward", "leaky_relu_backward",
                "tanh_backward", "sigmoid_backward", "reparameterize_kl", "reparameterize_kl_backward")
NAMES = OPTIMIZER_KERNELS + STEP_KERNELS
# no -march (the cache may be shared; the functions carry their own instruction sets); no
# trapping maths, so that a comparison inside a loop can be vectorized; no fused multiply-add
# contraction, so that a result does not depend on which instruction set ran
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp-simd",
         "-shared", "-fPIC")
C_TYPES = {"float32": ("float", ctypes.c_float), "float64": ("double", ctypes.c_double)}

# The Bernoulli NLL for the CPU. The CUDA kernel "bernoulli" writes every entry's NLL, then a
# device-wide sum adds them up; a CPU loop adds them as it goes. With e = exp(-|l|):
#     nll = max(l, 0) - x l + log(1 + e),   l <- scale (sigma(l) - x),   sigma(l) = [l >= 0 ? 1 : e] / (1 + e).
# Everything is computed in double and the sum kept in double. The logs: sum log(1 + e) = log of the
# product of the factors (1 + e) of a group of entries (each factor in (1, 2]: a product of GROUP
# of them stays below 2^GROUP, no overflow), one log per group instead of a log1p per entry. For
# float data exp is a polynomial that the compiler vectorizes (relative error < 2e-10, far below
# float's 6e-8); for double data it is the library's exp.
BERNOULLI_SOURCE = r"""
#include <cstring>

static const long long GROUP = 256;

// exp(x) for x <= 0, to float accuracy: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor
// series to r^8 (remainder < 2e-10 relative), 2^n put into the exponent bits. n comes out of the
// rounding of x / ln2 + 1.5 * 2^52, whose low bits hold n; below -104 the result (< 7e-46)
// rounds to 0 in float anyway.
static inline double exp_nonpositive(double x, float) {
  const double ROUND = 6755399441055744.0;  // 1.5 * 2^52
  x = x < -104.0 ? -104.0 : x;
  const double shifted = x * 1.4426950408889634 + ROUND;
  const double n = shifted - ROUND;
  const double r = x - n * 0.6931471805599453;
  double p = 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  long long bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits + 1023) << 52;   // the low bits hold n: 2^n as a double
  double two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

static inline double exp_nonpositive(double x, double) { return std::exp(x); }

// Sum of the NLL of a (rows, cols) block; the logits l become scale (sigma(l) - x).
extern "C" HOST_KERNEL double bernoulli(T* _l, const T* _x, const T scale, long long rows,
                                        long long cols, long long ld_l, long long ld_x) {
  double linear = 0.0, logs = 0.0;
  for (long long r = 0; r < rows; ++r) {
    T* l = _l + r * ld_l;
    const T* x = _x + r * ld_x;
    for (long long j0 = 0; j0 < cols; j0 += GROUP) {
      const long long j1 = j0 + GROUP < cols ? j0 + GROUP : cols;
      double product = 1.0;
#pragma omp simd reduction(+:linear) reduction(*:product)
      for (long long j = j0; j < j1; ++j) {
        const double v = l[j], xj = x[j];
        const double e = exp_nonpositive(-std::fabs(v), T());
        linear += (v > 0.0 ? v : 0.0) - xj * v;
        product *= 1.0 + e;
        l[j] = (T)(scale * ((v >= 0.0 ? 1.0 : e) / (1.0 + e) - xj));
      }
      logs += std::log(product);
    }
  }
  return linear + logs;
}
"""

# Vectorized float maths for the passes that have a transcendental function in every element: bias +
# tanh (the layers of the classic model), and the evaluation's Bernoulli log-likelihood. A loop of
# scalar library calls (tanhf, expf, log1pf) does not vectorize; these inline polynomials do
# (no calls, no branches: the compiler turns the loop into SIMD code of the processor's width).
#   exp(x), x <= 0, float: x = n ln2 + r, |r| <= ln2/2 (ln2 in two parts: r exact); exp(r) - 1 =
#     r + r^2 P(r) with Cephes' degree-5 P (relative error ~1e-7); 2^n put into the exponent bits.
#   tanh|x| = (1 - e) / (1 + e), e = exp(-2|x|) = 2^n (1 + q), q = exp(r) - 1: 1 - e is formed as
#     (1 - 2^n) - 2^n q, exact where e is close to 1 (small x), so the relative error stays ~1e-7
#     for every x (no cancellation); tanh(-x) = -tanh(x).
# For double data the library's exp, log1p and tanh (scalar; exact to double): compiled, but the
# Python side uses them for float32 only (NumPy's vectorized double passes are faster).
# The Bernoulli log-likelihood of a row: sum_j x_j a_j - softplus(a_j), a = l + b, softplus(a) =
# max(a, 0) + log(1 + exp(-|a|)); the logs as one log of the product of a group of the factors
# (1 + e) in (1, 2] (64 of them < 2^64: no overflow in float), accumulated in double per row.
FAST_MATH_SOURCE = r"""
static const float EXP_CLAMP = -87.0f;  // exp(-87) ~ 1.6e-38: still a normal float

// exp(x) = 2^n (1 + q) for x <= 0: returns 2^n and q
struct ExpParts { float two_n, q; };

static inline float float_from_bits(int bits) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_bit_cast(float, bits);
#else
  float t;
  std::memcpy(&t, &bits, sizeof t);
  return t;
#endif
}

static inline ExpParts exp_parts(float x) {
  const float ROUND = 12582912.0f;       // 1.5 * 2^23: adding it rounds to an integer
  x = x < EXP_CLAMP ? EXP_CLAMP : x;
  const float n = (x * 1.44269504088896341f + ROUND) - ROUND;
  float r = x - n * 0.693359375f;        // ln2 = 0.693359375 - 2.12194440e-4 (the first part exact)
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return {float_from_bits(((int)n + 127) << 23), r + r * r * p};
}

static inline float exp_nonpositive_f(float x) {
  const ExpParts e = exp_parts(x);
  return e.two_n + e.two_n * e.q;
}

static inline float tanh_fast(float x) {
  const ExpParts e = exp_parts(-2.0f * std::fabs(x));
  const float t = ((1.0f - e.two_n) - e.two_n * e.q) / ((1.0f + e.two_n) + e.two_n * e.q);
  return x < 0.0f ? -t : t;
}
static inline double tanh_fast(double x) { return std::tanh(x); }

// h = tanh(h + b) over (rows, cols), h's rows ld_h apart
extern "C" HOST_KERNEL void bias_tanh_fast(T* _h, const T* b, long long rows, long long cols, long long ld_h) {
  for (long long r = 0; r < rows; ++r) {
    T* h = _h + r * ld_h;
#pragma omp simd
    for (long long j = 0; j < cols; ++j) h[j] = tanh_fast(h[j] + b[j]);
  }
}

static inline int bits_of(float v) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_bit_cast(int, v);
#else
  int i;
  std::memcpy(&i, &v, sizeof i);
  return i;
#endif
}

// The logs as one log per row: each SIMD lane keeps a product of factors (1 + e) in (1, 2] as a
// mantissa in [1, 2) and an exponent (the product's exponent bits are moved into an integer sum
// after every factor: no overflow for any row length). One horizontal reduction per row. (The
// lanes' share of a row depends on the instruction set and on where the vector loop starts, i.e.
// on the data's alignment: the last bits of a float32 bound may differ between machines or buffers,
// within float32 rounding.)
static inline double bernoulli_row(const float* l, const float* b, const float* x, long long cols) {
  float linear = 0.0f, mantissa = 1.0f;
  int exponent = 0;
#pragma omp simd reduction(+:linear, exponent) reduction(*:mantissa)
  for (long long j = 0; j < cols; ++j) {
    const float a = l[j] + b[j];
    linear += x[j] * a - (a > 0.0f ? a : 0.0f);
    const int m = bits_of(mantissa * (1.0f + exp_nonpositive_f(-std::fabs(a))));
    exponent += (m >> 23) - 127;
    mantissa = float_from_bits((m & 0x007fffff) | 0x3f800000);
  }
  return (double)linear - (std::log((double)mantissa) + 0.6931471805599453 * exponent);
}

static inline double bernoulli_row(const double* l, const double* b, const double* x, long long cols) {
  double total = 0.0;
  for (long long j = 0; j < cols; ++j) {
    const double a = l[j] + b[j];
    total += x[j] * a - ((a > 0.0 ? a : 0.0) + std::log1p(std::exp(-std::fabs(a))));
  }
  return total;
}

// out[r] += sum_j x_j a_j - softplus(a_j), a = l[r] + b, x = row r % n_x of x (the sample blocks of
// one call share their examples' rows). l is read only.
extern "C" HOST_KERNEL void bernoulli_log_likelihood(const T* l, const T* b, const T* x, long long n_x,
                                                     long long rows, long long cols, long long ld_l,
                                                     long long ld_x, double* out) {
  for (long long r = 0; r < rows; ++r)
    out[r] += bernoulli_row(l + r * ld_l, b, x + (r % n_x) * ld_x, cols);
}

// z = mu + sigma eps and out[r] = log p(z) - log q(z | x) = 1/2 sum_j (eps_j^2 - z_j^2) + half[e]
// (half[e] = 1/2 sum_j logvar_j of example e = r % n_x; the log 2 pi terms cancel); (rows, K)
// contiguous eps and z, (n_x, K) contiguous mu and sigma.
extern "C" HOST_KERNEL void iwae_latent(const T* mu, const T* sigma, const double* half, const T* eps,
                                        T* z, long long n_x, long long rows, long long K, double* out) {
  for (long long r = 0; r < rows; ++r) {
    const long long e = r % n_x;
    const T* m = mu + e * K;
    const T* s = sigma + e * K;
    const T* ep = eps + r * K;
    T* zr = z + r * K;
    T acc = 0;
#pragma omp simd reduction(+:acc)
    for (long long j = 0; j < K; ++j) {
      const T v = m[j] + s[j] * ep[j];
      zr[j] = v;
      acc += ep[j] * ep[j] - v * v;
    }
    out[r] = 0.5 * (double)acc + half[e];
  }
}
"""

_lock = threading.Lock()
_loaded = {}     # dtype name (and dtype object) -> HostKernels or None
_status = {}     # dtype name -> what happened


class HostKernels:
    """The compiled kernels for one dtype. :meth:`launch` runs any of :data:`NAMES` over a
    (rows, cols) grid; ``adam``, ``sgd``, ``sgd_momentum`` have the signatures of
    :class:`minivae.fast.cuda_kernels.CupyKernels`' (flat, contiguous arrays; scalars as Python numbers);
    :meth:`bernoulli` returns the loss sum."""

    def __init__(self, library, dtype, c_scalar):
        self.dtype = np.dtype(dtype)
        self.functions = {}
        for name in NAMES:
            in_params, out_params, _ = CUDA_KERNELS[name]
            params = kernel_params(in_params) + kernel_params(out_params)
            scalars = SCALAR_PARAMS.get(name, ())
            # per parameter: "scalar", "raw" (a pointer) or "array" (a pointer and a row stride)
            kinds = ["scalar" if pname in scalars else "raw" if raw else "array" for _, pname, raw in params]
            function = getattr(library, name)
            function.argtypes = (
                [(ctypes.c_int if ctype == "int32" else c_scalar) if kind == "scalar" else ctypes.c_void_p
                 for (ctype, _, _), kind in zip(params, kinds)]
                + [ctypes.c_longlong] * (2 + kinds.count("array")))      # rows, cols, row strides
            function.restype = None
            self.functions[name] = (function, kinds)
        self._bernoulli = library.bernoulli
        self._bernoulli.argtypes = [ctypes.c_void_p, ctypes.c_void_p, c_scalar] + [ctypes.c_longlong] * 4
        self._bernoulli.restype = ctypes.c_double
        P, I = ctypes.c_void_p, ctypes.c_longlong
        self._bias_tanh = library.bias_tanh_fast
        self._bias_tanh.argtypes, self._bias_tanh.restype = [P, P, I, I, I], None
        self._log_likelihood = library.bernoulli_log_likelihood
        self._log_likelihood.argtypes, self._log_likelihood.restype = [P, P, P, I, I, I, I, I, P], None
        self._latent = library.iwae_latent
        self._latent.argtypes, self._latent.restype = [P, P, P, P, P, I, I, I, P], None

    def launch(self, name, rows, cols, *args):
        """Run kernel ``name`` over a (rows, cols) grid, its arguments in the CUDA kernel's order:
        an array operand is (rows, cols) with contiguous rows, or a (cols,) vector that every row
        shares; a raw operand is a contiguous pointer. Returns False, and runs nothing, when an
        array does not have that layout or the library's dtype."""
        function, kinds = self.functions[name]
        pointers, strides = [], []
        for kind, a in zip(kinds, args):
            if kind == "scalar":
                pointers.append(a)
                continue
            if a.dtype != self.dtype or not a.flags.aligned:
                return False
            if kind == "array":
                stride = row_stride(a, rows, cols)
                if stride is None:
                    return False
                strides.append(stride)
            pointers.append(a.ctypes.data)
        function(*pointers, rows, cols, *strides)
        return True

    def bernoulli(self, logits, x, scale):
        """The sum of the Bernoulli NLL of the logits (L N, D) with targets ``x`` (N, D), matched
        to each of the L row blocks, as a float; ``logits`` overwritten by scale (sigma(logits) - x).
        None, and nothing done, when a layout does not fit (see :meth:`launch`)."""
        (M, D), N = logits.shape, x.shape[0]
        ld_l, ld_x = row_stride(logits, M, D), row_stride(x, N, D)
        if (ld_l is None or ld_x is None or x.ndim != 2 or N == 0 or M % N
                or logits.dtype != self.dtype or x.dtype != self.dtype
                or not (logits.flags.aligned and x.flags.aligned)):
            return None
        start, step = logits.ctypes.data, N * ld_l * self.dtype.itemsize
        return sum(self._bernoulli(start + k * step, x.ctypes.data, scale, N, D, ld_l, ld_x)
                   for k in range(M // N))

    def _fits(self, *arrays):
        return all(a.dtype == self.dtype and a.flags.aligned for a in arrays)

    def bias_tanh(self, h, b):
        """h = tanh(h + b) (vectorized tanh) for float32 h (rows, cols) with contiguous rows, b
        (cols,); False, and nothing done, for another layout or float64 (whose scalar library tanh
        is slower than NumPy's vectorized one)."""
        if self.dtype != np.float32:
            return False
        rows, cols = h.shape
        ld = row_stride(h, rows, cols)
        if ld is None or row_stride(b, rows, cols) != 0 or not self._fits(h, b):
            return False
        self._bias_tanh(h.ctypes.data, b.ctypes.data, rows, cols, ld)
        return True

    def bernoulli_log_likelihood(self, logits, b, x, log_w):
        """log_w[r] += sum_j x_j a_j - softplus(a_j), a = logits[r] + b, x's row r % n; logits
        (rows, D) and x (n, D) with contiguous rows, b (D,), log_w (rows,) contiguous float64.
        False, and nothing done, for another layout or float64 data (the scalar library exp and
        log1p are slower than NumPy's passes); ``logits`` is not written."""
        if self.dtype != np.float32:
            return False
        (rows, D), n = logits.shape, x.shape[0]
        ld_l, ld_x = row_stride(logits, rows, D), row_stride(x, n, D)
        if (ld_l is None or ld_x is None or x.ndim != 2 or n == 0 or rows % n or row_stride(b, rows, D) != 0
                or not self._fits(logits, b, x) or not _float64_vector(log_w, rows)):
            return False
        self._log_likelihood(logits.ctypes.data, b.ctypes.data, x.ctypes.data, n, rows, D, ld_l, ld_x,
                             log_w.ctypes.data)
        return True

    def iwae_latent(self, mu, sigma, half, eps, z, log_w):
        """z = mu + sigma eps and log_w = log p(z) - log q(z | x) (see the C++ source); eps, z
        (rows, K) and mu, sigma (n, K) contiguous, half (n,) and log_w (rows,) float64. False, and
        nothing done, for another layout."""
        (rows, K), n = eps.shape, mu.shape[0]
        if (rows % n or mu.shape != (n, K) or sigma.shape != (n, K) or z.shape != (rows, K)
                or not all(a.flags.c_contiguous for a in (mu, sigma, eps, z))
                or not self._fits(mu, sigma, eps, z)
                or not _float64_vector(half, n) or not _float64_vector(log_w, rows)):
            return False
        self._latent(mu.ctypes.data, sigma.ctypes.data, half.ctypes.data, eps.ctypes.data, z.ctypes.data,
                     n, rows, K, log_w.ctypes.data)
        return True

    def adam(self, g, beta1, beta2, step_size, eps_hat, p, s, r):
        self._flat("adam", g, beta1, beta2, step_size, eps_hat, p, s, r)

    def sgd(self, g, lr, p):
        self._flat("sgd", g, lr, p)

    def sgd_momentum(self, g, lr, momentum, nesterov, p, velocity):
        self._flat("sgd_momentum", g, lr, momentum, nesterov, p, velocity)

    def _flat(self, name, g, *args):
        if not self.launch(name, 1, g.size, g, *args):
            raise ValueError(f"{name}: the vectors must be contiguous {self.dtype.name} of one length")


def _float64_vector(a, size):
    return (a.dtype == np.float64 and a.shape == (size,) and a.flags.c_contiguous
            and a.flags.aligned)


def row_stride(a, rows, cols):
    """The row stride, in elements, of ``a`` as a (rows, cols) operand: its own for a (rows, cols)
    array with contiguous rows, 0 for a (cols,) vector; None for any other shape or layout."""
    if a.ndim == 1:
        return 0 if a.shape[0] == cols and (cols <= 1 or a.strides[0] == a.itemsize) else None
    if a.ndim != 2 or a.shape != (rows, cols) or (cols > 1 and a.strides[1] != a.itemsize):
        return None
    stride, remainder = divmod(a.strides[0], a.itemsize)
    return stride if remainder == 0 else None

def get(dtype):
    """The compiled kernels for NumPy arrays of ``dtype`` (float32 or float64), or None."""
    kernels = _loaded.get(dtype, False)      # dtype as given: the step asks with array.dtype
    if kernels is False:
        key = np.dtype(dtype).name
        with _lock:
            if key not in _loaded:
                _loaded[key] = _load(key)
            kernels = _loaded[key]
        if isinstance(dtype, np.dtype):
            _loaded[dtype] = kernels
    return kernels


def status():
    """{dtype: "compiled (<library path>)" or "NumPy passes: <why>"} for the dtypes asked for so far."""
    return dict(_status)


def cache_dir():
    if os.environ.get("MINIVAE_CACHE_DIR"):
        return Path(os.environ["MINIVAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minivae"


def find_compiler():
    """``$CXX``, else the first of c++, g++, clang++ on the PATH, else None."""
    return os.environ.get("CXX") or next(
        (found for found in map(shutil.which, ("c++", "g++", "clang++")) if found), None)


def library_source(dtype):
    """The C++ source of the CPU kernels for ``dtype`` ("float32" or "float64")."""
    return host_library_source(C_TYPES[dtype][0], NAMES) + BERNOULLI_SOURCE + FAST_MATH_SOURCE


def library_source_and_path(dtype, compiler):
    """The C++ source of the kernels for ``dtype`` and the cache path of their library: named
    after the hash of the source, the compiler, the flags and the machine."""
    c_name = C_TYPES[dtype][0]
    source = library_source(dtype)
    key = "\n".join([source, compiler, *FLAGS, platform.machine()])
    return source, cache_dir() / f"kernels_{c_name}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _load(dtype):
    if os.environ.get("MINIVAE_HOST_KERNELS", "1") == "0":
        _status[dtype] = "NumPy passes: MINIVAE_HOST_KERNELS=0"
        return None
    if dtype not in C_TYPES:
        _status[dtype] = f"NumPy passes: no kernels for {dtype}"
        return None
    compiler = find_compiler()
    if compiler is None:
        _status[dtype] = "NumPy passes: no C++ compiler found"
        return None
    source, path = library_source_and_path(dtype, compiler)
    try:
        path = _build(source, compiler, path)
        kernels = HostKernels(ctypes.CDLL(str(path)), dtype, C_TYPES[dtype][1])
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        _status[dtype] = f"NumPy passes: building the kernels failed ({type(error).__name__}: {error})"
        return None
    _status[dtype] = f"compiled ({path})"
    return kernels


def _build(source, compiler, path):
    """The library at ``path``, compiled there first unless a loadable one is there already (a
    damaged file is rebuilt). Compiles into a temporary file beside it and renames it into place
    (atomic), so that processes sharing the cache never load a half-written library. Where the
    cache folder cannot be written, builds in a new temporary folder instead."""
    if path.exists():
        try:
            ctypes.CDLL(str(path))
            return path
        except OSError:
            pass                     # damaged or foreign: rebuild below
    try:
        return _compile(source, compiler, path)
    except PermissionError:
        return _compile(source, compiler, Path(tempfile.mkdtemp(prefix="minivae-")) / path.name)


def _compile(source, compiler, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        source_file = Path(work) / "kernels.cpp"
        source_file.write_text(source)
        built = Path(work) / path.name
        subprocess.run([compiler, *FLAGS, "-o", str(built), str(source_file)], check=True,
                       capture_output=True, timeout=120)
        os.replace(built, path)
    return path
