"""The CUDA sources of the fused kernels, and their wrapping as C++ loops for the CPU.

Each kernel is the formula for one element (:data:`CUDA_KERNELS`), in the form
``cupy.ElementwiseKernel`` takes. :mod:`minivae.fast.cuda_kernels` compiles them for the GPU;
:func:`host_function` wraps one in a plain C++ loop over rows and columns, which
:mod:`minivae.fast.cpu_library` compiles for the CPU; :func:`standalone_source` writes one as a
self-contained ``__global__`` function, for compiling with NVRTC on a machine without a GPU.
This module computes nothing: it only writes source text.
"""
from __future__ import annotations

# CUDA: the same formulas, one kernel per pass. Each entry is a cupy.ElementwiseKernel:
# (input params, output params, body). ``T`` is float or double; outputs are read-write references;
# ``i`` is the element index and ``raw`` params are indexed by hand (contiguous buffers).
CUDA_KERNELS = {
    # (a comparison rather than fmax: C++ compilers vectorize it for the CPU; the same for NaN: 0)
    "bias_relu": ("T b", "T h", "T v = h + b; h = v > (T)0 ? v : (T)0;"),
    "bias_tanh": ("T b", "T h", "h = tanh(h + b);"),
    "bias_sigmoid": ("T b", "T h",
                     "T x = h + b; T e = exp(-fabs(x)); h = (x >= (T)0 ? (T)1 : e) / ((T)1 + e);"),
    "bias_leaky_relu": ("T b, T slope", "T pre, T h",
                        "pre = pre + b; h = pre > (T)0 ? pre : slope * pre;"),
    "bias_softplus": ("T b", "T pre, T h",
                      "pre = pre + b; h = fmax(pre, (T)0) + log1p(exp(-fabs(pre)));"),
    "relu_backward": ("T h", "T dh", "dh = h > (T)0 ? dh : (T)0;"),
    "tanh_backward": ("T h", "T dh", "dh = dh * ((T)1 - h * h);"),
    "sigmoid_backward": ("T h", "T dh", "dh = dh * h * ((T)1 - h);"),
    "leaky_relu_backward": ("T pre, T slope", "T dh", "dh = pre > (T)0 ? dh : slope * dh;"),
    "softplus_backward": ("T pre", "T dh",
                          "T e = exp(-fabs(pre)); dh = dh * (pre >= (T)0 ? (T)1 : e) / ((T)1 + e);"),
    # over (N, K); the L samples of eps and z are (L, N, K) contiguous: sample l at l * NK + i
    # (l is 64-bit, so that l * NK cannot overflow where L N K >= 2^31; i is 64-bit in CuPy too)
    "reparameterize_kl": (
        "T mu, T logvar, raw T eps, int32 L, int32 NK", "T kl, raw T z",
        "T sigma = exp(logvar * (T)0.5);"
        " for (long long l = 0; l < L; ++l) z[l * NK + i] = mu + sigma * eps[l * NK + i];"
        " kl = (T)0.5 * (mu * mu + exp(logvar) - logvar - (T)1);"),
    "reparameterize_kl_backward": (
        "T mu, T logvar, raw T dz, raw T eps, int32 L, int32 NK, T c", "T dmu, T dlogvar",
        "T sum_dz = 0, sum_dz_eps = 0;"
        " for (long long l = 0; l < L; ++l) { T d = dz[l * NK + i]; sum_dz += d; sum_dz_eps += d * eps[l * NK + i]; }"
        " T sigma = exp(logvar * (T)0.5);"
        " dmu = sum_dz + c * mu;"
        " dlogvar = (T)0.5 * sigma * sum_dz_eps + (T)0.5 * c * (exp(logvar) - (T)1);"),
    # BCE and its gradient from one exp(-|l|); x broadcasts over the L samples
    "bernoulli": ("T x, T scale", "T l, T nll",
                  "T e = exp(-fabs(l));"
                  " nll = fmax(l, (T)0) + log1p(e) - x * l;"
                  " l = scale * ((l >= (T)0 ? (T)1 : e) / ((T)1 + e) - x);"),
    "gaussian_fixed": ("T x, T scale", "T r, T sq", "r = r - x; sq = r * r; r = scale * r;"),
    "adam": ("T g, T beta1, T beta2, T step_size, T eps_hat", "T p, T s, T r",
             "s = beta1 * s + g;"
             " r = beta2 * r + g * g;"
             " p = p - step_size * s / (sqrt(r) + eps_hat);"),
    "sgd": ("T g, T lr", "T p", "p = p - lr * g;"),
    "sgd_momentum": ("T g, T lr, T momentum, T nesterov", "T p, T velocity",
                     "velocity = momentum * velocity + g;"
                     " p = p - lr * (nesterov != (T)0 ? g + momentum * velocity : velocity);"),
}


def kernel_params(spec):
    """'T x, raw T y, int32 L' -> [(type, name, raw), ...]."""
    out = []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        words = item.split()
        raw = words[0] == "raw"
        out.append((words[-2], words[-1], raw))
    return out


def standalone_source(name, dtype="float", host=False):
    """The kernel ``name`` as a self-contained ``extern "C"`` function: a ``__global__`` CUDA
    kernel (``host=False``, for compiling with NVRTC as CuPy would compile the body), or a plain
    C++ loop for the CPU (``host=True``, see :func:`host_function`).

    CUDA form: every non-raw array parameter is a contiguous pointer indexed by ``i`` (pass
    broadcast arrays expanded), the last argument the element count ``n``. Scalars (the params
    named in :data:`SCALAR_PARAMS`) are passed by value."""
    if host:
        return host_library_source(dtype, [name])
    args, elements = _signature(name)
    lines = [f"typedef {dtype} T;",
             f'extern "C" __global__ void {name}({", ".join(args + ["long long n"])}) {{',
             "  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
             "  if (i < n) {"]
    lines += ["    " + _bind(pname, kind, "i") for pname, kind in elements]
    return "\n".join(lines + [f"    {CUDA_KERNELS[name][2]}", "  }", "}"])


def _signature(name):
    """(the C arguments of kernel ``name``, its elementwise arrays as [(name, "in" | "out")])."""
    in_params, out_params, _ = CUDA_KERNELS[name]
    scalars = SCALAR_PARAMS.get(name, ())
    types = {"T": "T", "int32": "int"}
    args, elements = [], []
    for kind, (ctype, pname, raw) in [("in", p) for p in kernel_params(in_params)] + \
            [("out", p) for p in kernel_params(out_params)]:
        t = types[ctype]
        if pname in scalars:
            args.append(f"const {t} {pname}")
        elif raw:
            args.append(f"{'const ' if kind == 'in' else ''}{t}* {pname}")
        else:
            args.append(f"{'const ' if kind == 'in' else ''}{t}* _{pname}")
            elements.append((pname, kind))
    return args, elements


def _bind(pname, kind, index):
    """The body's name for one element of an elementwise array: a copy of an input, a reference
    to an output."""
    return f"const T {pname} = _{pname}[{index}];" if kind == "in" else f"T& {pname} = _{pname}[{index}];"


def host_function(name):
    """The kernel ``name`` as a C++ loop over a (rows, cols) grid, for the CPU.

    Each non-raw array parameter ``x`` is a pointer to a (rows, cols) array with contiguous rows
    and a row stride ``ld_x`` (0: a (cols,) vector that every row shares, as a bias broadcasts);
    the arguments are the kernel's parameters, then ``rows, cols``, then the row strides in
    parameter order. The body sees ``i = row cols + col``, the element's index in a contiguous
    (rows, cols) array, as a CUDA kernel sees its element index (``raw`` arrays are indexed by
    it). The inner loop has no calls for the kernels without transcendental functions, so that the
    compiler vectorizes it."""
    args, elements = _signature(name)
    args += ["long long rows", "long long cols"] + [f"long long ld_{pname}" for pname, _ in elements]
    # (row_, col_: no kernel has a parameter of that name)
    return "\n".join([f'extern "C" HOST_KERNEL void {name}({", ".join(args)}) {{',
                      "  for (long long row_ = 0; row_ < rows; ++row_) {",
                      "    for (long long col_ = 0; col_ < cols; ++col_) {",
                      "      const long long i = row_ * cols + col_; (void)i;"]
                     + ["      " + _bind(pname, kind, f"row_ * ld_{pname} + col_") for pname, kind in elements]
                     + [f"      {CUDA_KERNELS[name][2]}", "    }", "  }", "}"])


# Compiled for the CPU: plain C++, every function built for several instruction sets on x86-64
# with GCC or Clang (``target_clones``: the loader picks the best one the processor has).
HOST_PREAMBLE = """#include <cmath>
using std::exp; using std::fabs; using std::fmax; using std::log1p; using std::sqrt; using std::tanh;
#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 6) && defined(__linux__)
#define HOST_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOST_KERNEL
#endif
"""


def host_library_source(dtype="double", names=None):
    """The kernels ``names`` (default: every kernel) as C++ functions in one translation unit
    (:func:`host_function`): for checking the CUDA formulas on the CPU (``tests/fast/test_kernels.py``)
    and for the compiled CPU kernels of :mod:`minivae.fast.cpu_library`."""
    functions = [host_function(name) for name in (CUDA_KERNELS if names is None else names)]
    return "\n".join([f"typedef {dtype} T;", HOST_PREAMBLE, *functions]) + "\n"


# the parameters each kernel receives as Python scalars (all others are arrays)
SCALAR_PARAMS = {
    "bias_leaky_relu": ("slope",), "leaky_relu_backward": ("slope",),
    "reparameterize_kl": ("L", "NK"), "reparameterize_kl_backward": ("L", "NK", "c"),
    "bernoulli": ("scale",), "gaussian_fixed": ("scale",),
    "adam": ("beta1", "beta2", "step_size", "eps_hat"),
    "sgd": ("lr",), "sgd_momentum": ("lr", "momentum", "nesterov"),
}
