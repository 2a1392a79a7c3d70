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
* the Bernoulli loss with its gradient: one pass; in float64 :data:`BERNOULLI_SOURCE` (the sum in
  double), in float32 ``bernoulli_float`` of :data:`FAST_MATH_SOURCE` (a vectorized exp and log, float
  sums per block of 256 pixels added up in double);
* the reparameterization with the KL term in float32, forward and backward, as vectorized loops
  (``reparameterize_kl_float``; the KL sum in double);
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

from minivae.fast.program_source import runtime_source
from minivae.fast.sources import CUDA_KERNELS, SCALAR_PARAMS, host_library_source, kernel_params

OPTIMIZER_KERNELS = ("adam", "sgd", "sgd_momentum")
STEP_KERNELS = ("bias_relu", "bias_leaky_relu", "relu_backward", "leaky_relu_backward",
                "tanh_backward", "sigmoid_backward", "reparameterize_kl", "reparameterize_kl_backward")
NAMES = OPTIMIZER_KERNELS + STEP_KERNELS
# no -march (the cache may be shared; the functions carry their own instruction sets); no
# trapping maths, so that a comparison inside a loop can be vectorized; no fused multiply-add
# contraction, so that a result does not depend on which instruction set ran
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp-simd",
         "-pthread", "-shared", "-fPIC")
C_TYPES = {"float32": ("float", ctypes.c_float), "float64": ("double", ctypes.c_double)}

# The Bernoulli NLL for the CPU, float64 data (float32 data: ``bernoulli_float`` in
# :data:`FAST_MATH_SOURCE`). The CUDA kernel "bernoulli" writes every entry's NLL, then a device-wide
# sum adds them up; a CPU loop adds them as it goes. With e = exp(-|l|):
#     nll = max(l, 0) - x l + log(1 + e),   l <- scale (sigma(l) - x),   sigma(l) = [l >= 0 ? 1 : e] / (1 + e).
# The logs: sum log(1 + e) = log of the product of the factors (1 + e) of a group of entries (each
# factor in (1, 2]: a product of GROUP of them stays below 2^GROUP, no overflow), one log per group
# instead of a log1p per entry.
BERNOULLI_SOURCE = r"""
#include <cstring>

static const long long GROUP = 256;

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
        const double e = std::exp(-std::fabs(v));
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
static const float EXP_CLAMP = -87.0f;       // exp(-87) ~ 1.6e-38: still a normal float
static const float EXP_CLAMP_HIGH = 88.0f;   // exp(88) ~ 1.7e38: below float's largest, 3.4e38

// exp(x) = 2^n (1 + q), x clamped to [-87, 88]: returns 2^n and q
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
  x = x > EXP_CLAMP_HIGH ? EXP_CLAMP_HIGH : x;
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

// exp(x) for any float x: 0 where expf underflows to a subnormal or 0 (x < -87.34), inf where it
// overflows (x > 88.72), NaN for NaN
static inline float exp_float(float x) {
  const ExpParts e = exp_parts(x);
  float v = e.two_n + e.two_n * e.q;
  v = x < -87.33654f ? 0.0f : v;
  v = x > 88.72283f ? INFINITY : v;
  return x != x ? x : v;
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

// The logs of a row as one log: each SIMD lane keeps a product of factors (1 + e) in (1, 2] as a
// mantissa in [1, 2) and an exponent (the product's exponent bits are moved into an integer sum
// after every factor: no overflow for any row length). One horizontal reduction per row. (The
// lanes' share of a row depends on the instruction set and on where the vector loop starts, i.e.
// on the data's alignment: the last bits of a float32 sum may differ between machines or buffers,
// within float32 rounding.)
static inline void multiply_into(float& mantissa, int& exponent, float factor) {
  const int m = bits_of(mantissa * factor);
  exponent += (m >> 23) - 127;
  mantissa = float_from_bits((m & 0x007fffff) | 0x3f800000);
}

static inline double log_of(float mantissa, int exponent) {
  return std::log((double)mantissa) + 0.6931471805599453 * exponent;
}

static inline double bernoulli_row(const float* l, const float* b, const float* x, long long cols) {
  float linear = 0.0f, mantissa = 1.0f;
  int exponent = 0;
#pragma omp simd reduction(+:linear, exponent) reduction(*:mantissa)
  for (long long j = 0; j < cols; ++j) {
    const float a = l[j] + b[j];
    linear += x[j] * a - (a > 0.0f ? a : 0.0f);
    multiply_into(mantissa, exponent, 1.0f + exp_nonpositive_f(-std::fabs(a)));
  }
  return (double)linear - log_of(mantissa, exponent);
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

// The training step's passes for float32 data (the CUDA formulas "bernoulli", "reparameterize_kl"
// and "reparameterize_kl_backward", with the exponentials above: vectorized, to float precision).
// The sums over a row in float per SIMD lane, over the rows in double.

// Sum of the Bernoulli NLL of a (rows, cols) block, e = exp(-|l|): max(l, 0) - x l + log(1 + e);
// the logits l become scale (sigma(l) - x), sigma(l) = [l >= 0 ? 1 : e] / (1 + e).
extern "C" HOST_KERNEL double bernoulli_float(float* _l, const float* _x, const float scale, long long rows,
                                              long long cols, long long ld_l, long long ld_x) {
  const long long BLOCK = 256;   // columns per float sum: the sums of a wide row stay accurate
  double total = 0.0;
  for (long long r = 0; r < rows; ++r) {
    float* l = _l + r * ld_l;
    const float* x = _x + r * ld_x;
    float row_mantissa = 1.0f;
    int row_exponent = 0;
    for (long long j0 = 0; j0 < cols; j0 += BLOCK) {
      const long long j1 = j0 + BLOCK < cols ? j0 + BLOCK : cols;
      float linear = 0.0f, mantissa = 1.0f;
      int exponent = 0;
#pragma omp simd reduction(+:linear, exponent) reduction(*:mantissa)
      for (long long j = j0; j < j1; ++j) {
        const float v = l[j], xj = x[j];
        const float e = exp_nonpositive_f(-std::fabs(v));
        linear += (v > 0.0f ? v : 0.0f) - xj * v;
        multiply_into(mantissa, exponent, 1.0f + e);
        l[j] = scale * ((v >= 0.0f ? 1.0f : e) / (1.0f + e) - xj);
      }
      total += linear;
      multiply_into(row_mantissa, row_exponent, mantissa);   // mantissa < 2^16: the lanes' product
      row_exponent += exponent;
    }
    total += log_of(row_mantissa, row_exponent);
  }
  return total;
}

// z = mu + sigma eps (sigma = exp(logvar / 2)) for the L samples; returns sum KL =
// 1/2 sum (mu^2 + exp(logvar) - logvar - 1). mu, logvar (rows, K) with rows ld apart; eps and z
// (L, rows, K): rows K apart, samples NK apart.
extern "C" HOST_KERNEL double reparameterize_kl_float(const float* mu, const float* logvar, const float* eps,
                                                      float* z, long long L, long long NK, long long rows,
                                                      long long K, long long ld) {
  double total = 0.0;
  for (long long r = 0; r < rows; ++r) {
    const float* m = mu + r * ld;
    const float* lv = logvar + r * ld;
    float acc = 0.0f;
#pragma omp simd reduction(+:acc)
    for (long long j = 0; j < K; ++j) {
      const float v = lv[j];
      z[r * K + j] = m[j] + exp_float(0.5f * v) * eps[r * K + j];
      acc += m[j] * m[j] + exp_float(v) - v - 1.0f;
    }
    for (long long l = 1; l < L; ++l) {
#pragma omp simd
      for (long long j = 0; j < K; ++j) {
        z[l * NK + r * K + j] = m[j] + exp_float(0.5f * lv[j]) * eps[l * NK + r * K + j];
      }
    }
    total += 0.5 * (double)acc;
  }
  return total;
}

// dmu = sum_l dz + c mu;  dlogvar = sigma/2 sum_l dz eps + c (exp(logvar) - 1) / 2 (layouts as above;
// dmu, dlogvar like mu, logvar)
extern "C" HOST_KERNEL void reparameterize_kl_backward_float(const float* mu, const float* logvar,
                                                             const float* dz, const float* eps, const float c,
                                                             float* dmu, float* dlogvar, long long L, long long NK,
                                                             long long rows, long long K, long long ld) {
  for (long long r = 0; r < rows; ++r) {
    const float* m = mu + r * ld;
    const float* lv = logvar + r * ld;
    float* dm = dmu + r * ld;
    float* dlv = dlogvar + r * ld;
#pragma omp simd
    for (long long j = 0; j < K; ++j) {          // the sums over the samples, in dmu and dlogvar
      dm[j] = dz[r * K + j];
      dlv[j] = dz[r * K + j] * eps[r * K + j];
    }
    for (long long l = 1; l < L; ++l) {
#pragma omp simd
      for (long long j = 0; j < K; ++j) {
        dm[j] += dz[l * NK + r * K + j];
        dlv[j] += dz[l * NK + r * K + j] * eps[l * NK + r * K + j];
      }
    }
#pragma omp simd
    for (long long j = 0; j < K; ++j) {
      const float v = lv[j];
      dm[j] = dm[j] + c * m[j];
      dlv[j] = 0.5f * exp_float(0.5f * v) * dlv[j] + 0.5f * c * (exp_float(v) - 1.0f);
    }
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
        F, D = ctypes.c_float, ctypes.c_double
        self._bernoulli_float = library.bernoulli_float
        self._bernoulli_float.argtypes, self._bernoulli_float.restype = [P, P, F, I, I, I, I], D
        self._reparameterize = library.reparameterize_kl_float
        self._reparameterize.argtypes, self._reparameterize.restype = [P, P, P, P, I, I, I, I, I], D
        self._reparameterize_backward = library.reparameterize_kl_backward_float
        self._reparameterize_backward.argtypes = [P, P, P, P, F, P, P, I, I, I, I, I]
        self._reparameterize_backward.restype = None
        # the runtime of recorded steps (float32 only): minivae.fast.program
        self.replay_run = getattr(library, "replay_run", None)
        self.replay_set_gemm = getattr(library, "replay_set_gemm", None)
        if self.replay_run is not None:
            self.replay_run.argtypes = [P, I, P, P, P, ctypes.c_int]
            self.replay_run.restype = ctypes.c_int
            self.replay_set_gemm.argtypes, self.replay_set_gemm.restype = [P, ctypes.c_int], None

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
        start, step, x_data = logits.ctypes.data, N * ld_l * self.dtype.itemsize, x.ctypes.data
        function = self._bernoulli_float if self.dtype == np.float32 else self._bernoulli
        return sum(function(start + k * step, x_data, scale, N, D, ld_l, ld_x) for k in range(M // N))

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

    def reparameterize_kl(self, mu, logvar, eps, z, NK):
        """z = mu + exp(logvar / 2) eps; returns the KL term summed (a float). mu, logvar (rows, K)
        with contiguous rows; eps, z (L, rows, K) with contiguous (rows, K) blocks NK elements
        apart (:func:`minivae.fast.cpu_kernels.sample_stride`). None, and nothing done, for
        another layout or float64 (the generic kernel "reparameterize_kl" takes those)."""
        ld = self._head_stride(mu, logvar, eps)
        if ld is None or not self._fits(z):
            return None
        L, rows, K = eps.shape
        return self._reparameterize(mu.ctypes.data, logvar.ctypes.data, eps.ctypes.data, z.ctypes.data,
                                    L, NK, rows, K, ld)

    def reparameterize_kl_backward(self, dz, eps, mu, logvar, c, dmu, dlogvar, NK):
        """dmu = sum_l dz + c mu; dlogvar = exp(logvar / 2)/2 sum_l dz eps + c (exp(logvar) - 1)/2
        (layouts as :meth:`reparameterize_kl`; dmu, dlogvar those of mu, logvar). False, and
        nothing done, for another layout or float64."""
        ld = self._head_stride(mu, logvar, eps)
        if (ld is None or not self._fits(dz, dmu, dlogvar)
                or {row_stride(a, *mu.shape) for a in (dmu, dlogvar)} != {ld}):
            return False
        L, rows, K = eps.shape
        self._reparameterize_backward(mu.ctypes.data, logvar.ctypes.data, dz.ctypes.data, eps.ctypes.data,
                                      c, dmu.ctypes.data, dlogvar.ctypes.data, L, NK, rows, K, ld)
        return True

    def _head_stride(self, mu, logvar, eps):
        """The common row stride of float32 mu and logvar (rows, K) for samples eps (L, rows, K);
        None when there is none or the dtype is not float32."""
        if self.dtype != np.float32 or mu.ndim != 2 or eps.shape[1:] != mu.shape:
            return None
        ld = row_stride(mu, *mu.shape)
        if ld is None or row_stride(logvar, *mu.shape) != ld or not self._fits(mu, logvar, eps):
            return None
        return ld

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
    """The C++ source of the CPU kernels for ``dtype`` ("float32" or "float64"); the float32
    library also holds the runtime of recorded steps (:mod:`minivae.fast.program_source`)."""
    source = host_library_source(C_TYPES[dtype][0], NAMES) + BERNOULLI_SOURCE + FAST_MATH_SOURCE
    return source + runtime_source() if dtype == "float32" else source


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
