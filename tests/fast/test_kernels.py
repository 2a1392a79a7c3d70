"""The fused kernels of the fast step, proven without a GPU.

1. The array kernels (NumPy / strict), and on NumPy the same kernels with their hot passes compiled
   for the CPU (:class:`minivae.fast.cpu_kernels.CompiledKernels`), equal the readable ops of layers,
   likelihoods and gaussian.
2. Every CUDA kernel source compiles with NVRTC, in float and double (skipped without NVRTC).
3. The CUDA formulas themselves are checked on the CPU: the same kernel bodies are compiled as
   plain C++ (skipped without a C++ compiler), run on NumPy arrays through a stand-in for
   ``cupy.ElementwiseKernel``, and the whole fast step driven by :class:`CupyKernels` (the CuPy code
   path, argument order, reshapes and broadcasting included) is compared with the reference
   ``forward_backward`` and the reference optimizer updates.
"""
import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest
from backend_selection import TEST_BACKENDS

import minivae
from minivae.backend import strict
from minivae.fast import array_kernels, cpu_library, sources
from minivae.fast.array_kernels import ArrayKernels
from minivae.fast.cpu_kernels import CompiledKernels
from minivae.fast.cuda_kernels import CupyKernels
from minivae.ops.latent import kl_standard_normal, kl_standard_normal_backward, reparameterize, reparameterize_backward
from minivae.ops.layers import get_activation
from minivae.ops.likelihoods import (bernoulli_nll, bernoulli_nll_backward, gaussian_nll,
                                     gaussian_nll_backward, gaussian_nll_fixed, gaussian_nll_fixed_backward)
from minivae.training.step import TrainStep

RTOL = 1e-12


def close(a, b, rtol=RTOL, atol=1e-13):
    np.testing.assert_allclose(minivae.to_numpy(a), minivae.to_numpy(b), rtol=rtol, atol=atol)


def arrays(backend, *shapes, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return [backend.to_device(scale * rng.standard_normal(s)) for s in shapes]


# --- 1. array kernels vs the readable ops ---------------------------------------------------------

# the array operations on every selected backend, and on NumPy also the compiled CPU kernels
KERNEL_CASES = [(name, kind) for name in TEST_BACKENDS
                for kind in (("array", "compiled") if name == "numpy" else ("array",))]


@pytest.fixture(params=KERNEL_CASES, ids=lambda case: "-".join(case))
def backend_kernels(request):
    """(backend, kernels): the array operations on every backend, and on NumPy also the kernels
    with the hot passes compiled for the CPU (skipped where they cannot be built)."""
    backend = minivae.get_backend(request.param[0])
    if request.param[1] == "array":
        return backend, ArrayKernels(backend.xp)
    if cpu_library.get("float64") is None or cpu_library.get("float32") is None:
        pytest.skip(f"no compiled CPU kernels: {cpu_library.status()}")
    return backend, CompiledKernels(backend.xp)


@pytest.mark.parametrize("activation", array_kernels.KERNEL_ACTIVATIONS)
def test_bias_activation_and_backward(backend_kernels, activation):
    backend, k = backend_kernels
    xp = backend.xp
    x, b, dout = arrays(backend, (5, 7), (7,), (5, 7))
    forward, backward = get_activation(activation)
    expected_out, cache = forward(x + b)
    expected_dx = backward(dout, cache)
    pre = x.copy()
    out = xp.zeros_like(x) if activation in array_kernels.NEEDS_PREACTIVATION else pre
    k.bias_activation(pre, b, activation, out, xp.zeros_like(x))
    close(out, expected_out)
    dh = dout.copy()
    k.activation_backward(dh, activation, out, pre, xp.zeros_like(x), xp.zeros_like(x))
    close(dh, expected_dx)


@pytest.mark.parametrize("L", [1, 3])
def test_reparameterize_kl(backend_kernels, L):
    backend, k = backend_kernels
    xp = backend.xp
    mu, logvar, dz = arrays(backend, (4, 3), (4, 3), (L, 4, 3), scale=0.7)
    (eps,) = arrays(backend, (L, 4, 3), seed=1, scale=1.0)
    z_ref, cache = reparameterize(mu, logvar, eps)
    kl_ref, kl_cache = kl_standard_normal(mu, logvar)
    z, sigma, tmp = xp.zeros_like(eps), xp.zeros_like(mu), xp.zeros_like(mu)
    kl_sum = k.reparameterize_kl(mu, logvar, eps, z, sigma, tmp)
    close(z, z_ref)
    close(kl_sum, kl_ref.sum())
    c = 0.3
    dmu_ref, dlogvar_ref = reparameterize_backward(dz, cache)
    dmu_kl, dlogvar_kl = kl_standard_normal_backward(xp.full((4,), c), kl_cache)
    dmu, dlogvar = xp.zeros_like(mu), xp.zeros_like(mu)
    k.reparameterize_kl_backward(dz, eps, mu, logvar, sigma, c, dmu, dlogvar, tmp)
    close(dmu, dmu_ref + dmu_kl)
    close(dlogvar, dlogvar_ref + dlogvar_kl)


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("N, block", [(30, array_kernels.BLOCK), (30, 7), (4, 5)])
def test_bernoulli(backend_kernels, L, N, block, monkeypatch):
    """One block, blocks of one row (7 entries each), and blocks too small for a product group
    of :meth:`sum_log_products` (30 x 7 = 210 entries: 3 groups of 64 and a remainder of 18)."""
    monkeypatch.setattr(array_kernels, "BLOCK", block)
    backend, k = backend_kernels
    xp = backend.xp
    (logits,) = arrays(backend, (L, N, 7), scale=5.0)
    x = backend.to_device(np.random.default_rng(2).uniform(size=(N, 7)))
    nll_ref, cache = bernoulli_nll(logits, x)
    scale = 1.0 / (L * N)
    dl_ref = bernoulli_nll_backward(xp.full((L, N), scale), cache)
    work = logits.reshape(L * N, 7).copy()
    total = k.bernoulli(work, x, scale, xp.zeros_like(work), xp.zeros_like(work))
    close(total, nll_ref.sum())
    close(work, dl_ref.reshape(L * N, 7))


# gradient tolerance in float32 epsilons: the array passes round each step; the compiled pass
# computes in float with a vectorized exponential (measured: 0.75 epsilons at most here)
BERNOULLI_FLOAT32_GRAD_EPS = {ArrayKernels: 2.0, CompiledKernels: 1.0}


@pytest.mark.parametrize("kind", ["array", "compiled"])
def test_bernoulli_float32_accuracy_on_an_mnist_sized_batch(kind):
    """float32, 256 x 784 logits of all sizes: the loss agrees with a float64 log1p reference to
    float32 precision of the sum, and every gradient entry to float32 rounding."""
    if kind == "compiled" and cpu_library.get("float32") is None:
        pytest.skip(f"no compiled CPU kernels: {cpu_library.status()}")
    kernels = (ArrayKernels if kind == "array" else CompiledKernels)(np)
    rng = np.random.default_rng(5)
    logits = (6.0 * rng.standard_normal((256, 784))).astype(np.float32)
    x = (rng.uniform(size=(256, 784)) < 0.3).astype(np.float32)
    l64, x64 = logits.astype(np.float64), x.astype(np.float64)
    nll64 = np.maximum(l64, 0) + np.log1p(np.exp(-np.abs(l64))) - x64 * l64
    sigma64 = np.exp(np.minimum(l64, 0)) / (1 + np.exp(-np.abs(l64)))
    work = logits.copy()
    total = kernels.bernoulli(work, x, 1.0, np.empty_like(work), np.empty_like(work))
    assert total.dtype == np.float32
    assert abs(float(total) - nll64.sum()) <= 2e-6 * np.abs(nll64).sum()
    atol = BERNOULLI_FLOAT32_GRAD_EPS[type(kernels)] * np.finfo(np.float32).eps
    np.testing.assert_allclose(work, sigma64 - x64, rtol=0, atol=atol)


@pytest.mark.parametrize("size", [1, 63, 64, 65, 1000])
def test_sum_log_products_equals_sum_of_log1p(size):
    """log of products of 64 factors 1 + e, e in [1e-300, 1]: the sum of log1p(e) to rounding,
    the tiny e included (each contributes < 1.2e-16 that rounding of 1 + e may drop)."""
    e = np.exp(-np.random.default_rng(size).uniform(0, 690, size=size))
    expected = np.log1p(e).sum()
    total = ArrayKernels(np).sum_log_products(1.0 + e, np.empty(size))
    assert abs(total - expected) <= 4e-16 * size + 1e-15 * expected


def test_bernoulli_extreme_logits_stay_finite(backend_kernels):
    backend, k = backend_kernels
    xp = backend.xp
    for dtype in ("float32", "float64"):
        logits = backend.to_device(np.array([[-1000.0, -90.0, 0.0, 90.0, 1000.0]]), dtype)
        x = backend.to_device(np.array([[0.0, 1.0, 0.5, 0.0, 1.0]]), dtype)
        nll_ref, cache = bernoulli_nll(logits, x)
        dl_ref = bernoulli_nll_backward(xp.ones((1,), dtype=dtype), cache)
        work = logits.copy()
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            total = k.bernoulli(work, x, 1.0, xp.zeros_like(work), xp.zeros_like(work))
        tol = 10 * np.finfo(dtype).eps
        close(total, nll_ref.sum(), rtol=tol)
        close(work, dl_ref, rtol=tol, atol=tol)
        assert total.dtype == np.dtype(dtype)


def test_gaussian_kernels(backend):
    xp = backend.xp
    k = ArrayKernels(xp)
    mean, x, logvar = arrays(backend, (2, 3, 5), (3, 5), (5,))
    scale = 1.0 / 6
    for variance in (1.0, 0.4):
        nll_ref, cache = gaussian_nll_fixed(mean, x, variance)
        d_ref = gaussian_nll_fixed_backward(xp.full((2, 3), scale), cache)
        work = mean.reshape(6, 5).copy()
        total = k.gaussian_fixed(work, x, scale / variance, xp.zeros_like(work))
        const = 0.5 * 5 * (K_LOG_2PI + np.log(variance))
        close(0.5 / variance * total + 6 * const, nll_ref.sum())
        close(work, d_ref.reshape(6, 5))
    nll_ref, cache = gaussian_nll(mean, logvar, x)
    d_ref, dlogvar_ref = gaussian_nll_backward(xp.full((2, 3), scale), cache)
    work, dlogvar = mean.reshape(6, 5).copy(), xp.zeros_like(logvar)
    total = k.gaussian_learned(work, x, logvar, scale, dlogvar, xp.zeros_like(work),
                               xp.zeros_like(logvar))
    close(0.5 * total + 3.0 * xp.sum(logvar) + 0.5 * 30 * K_LOG_2PI, nll_ref.sum())
    close(work, d_ref.reshape(6, 5))
    close(dlogvar, dlogvar_ref)


K_LOG_2PI = float(np.log(2 * np.pi))


# --- 2. the CUDA sources compile --------------------------------------------------------------------

def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as error:  # noqa: BLE001 - ImportError or a missing libnvrtc
        pytest.skip(f"NVRTC not available: {error}")
    return nvrtc


@pytest.mark.parametrize("dtype", ["float", "double"])
def test_cuda_sources_compile_with_nvrtc(dtype):
    nvrtc = _nvrtc()
    for name in sources.CUDA_KERNELS:
        source = sources.standalone_source(name, dtype)
        program = nvrtc.createProgram(source, f"{name}.cu", [], [])
        try:
            nvrtc.compileProgram(program, ["-arch=compute_90"])
        except Exception as error:  # noqa: BLE001
            log = nvrtc.getProgramLog(program)
            raise AssertionError(f"{name} ({dtype}) does not compile: {error}\n{log}\n{source}")
        assert nvrtc.getPTX(program)
        nvrtc.destroyProgram(program)


def test_every_cupy_kernel_is_used_by_a_method():
    """Each CUDA source is reachable from CupyKernels (no dead, untested kernel)."""
    import inspect
    source = inspect.getsource(CupyKernels)
    for name in sources.CUDA_KERNELS:
        stem = name.split("_backward")[0].replace("bias_", "")
        assert f'"{name}"' in source or stem in array_kernels.KERNEL_ACTIVATIONS, name


# --- 3. the CUDA formulas, compiled for the CPU ------------------------------------------------------

@pytest.fixture(scope="module")
def host_library(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the kernels for the CPU")
    directory = tmp_path_factory.mktemp("kernels")
    libraries = {}
    for dtype in ("float", "double"):
        source = directory / f"kernels_{dtype}.cpp"
        source.write_text(sources.host_library_source(dtype))
        library = directory / f"kernels_{dtype}.so"
        subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(library), str(source)],
                       check=True, capture_output=True)
        libraries[dtype] = ctypes.CDLL(str(library))
    return libraries


class HostElementwiseKernel:
    """Calls a host-compiled kernel like ``cupy.ElementwiseKernel``: non-raw arrays broadcast to
    the outputs' shape (expanded into contiguous copies, outputs copied back), raw arrays passed
    as they are (contiguous), scalars by value."""

    def __init__(self, library, name):
        self.name = name
        self.function = getattr(library, name)
        in_params, out_params, _ = sources.CUDA_KERNELS[name]
        self.params = [("in", *p) for p in sources.kernel_params(in_params)] + \
                      [("out", *p) for p in sources.kernel_params(out_params)]
        self.scalars = sources.SCALAR_PARAMS.get(name, ())

    def __call__(self, *args):
        assert len(args) == len(self.params), self.name
        dtype = next(a.dtype for a in args if isinstance(a, np.ndarray))
        ctype_T = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        shaped = [a for (kind, _, pname, raw), a in zip(self.params, args)
                  if not raw and pname not in self.scalars]
        shape = np.broadcast_shapes(*(a.shape for a in shaped))
        call, copy_back = [], []
        for (kind, ctype, pname, raw), a in zip(self.params, args):
            if pname in self.scalars:
                # typed NumPy scalars, as CupyKernels passes them (T: the arrays' dtype)
                assert isinstance(a, np.generic), (self.name, pname, type(a))
                assert a.dtype == (np.int32 if ctype == "int32" else dtype), (self.name, pname)
                call.append(ctypes.c_int(int(a)) if ctype == "int32" else ctype_T(a))
                continue
            assert a.dtype == dtype, (self.name, pname)
            if raw:
                assert a.flags.c_contiguous
                call.append(a.ctypes.data_as(ctypes.c_void_p))
                continue
            if kind == "out":
                assert a.shape == shape, (self.name, pname, a.shape, shape)
                buffer = np.ascontiguousarray(a)
                copy_back.append((a, buffer))
            else:
                buffer = np.ascontiguousarray(np.broadcast_to(a, shape))
            call.append(buffer.ctypes.data_as(ctypes.c_void_p))
            a = buffer
        # one row of all the elements (rows=1, cols=n); every array contiguous (row stride unused)
        call += [ctypes.c_longlong(1), ctypes.c_longlong(int(np.prod(shape)))]
        call += [ctypes.c_longlong(0)] * len(shaped)
        self.function(*call)
        for target, buffer in copy_back:
            if target is not buffer:
                target[...] = buffer


class HostCupyKernels(CupyKernels):
    """CupyKernels' own methods, with the CUDA kernels run on the CPU."""

    def __init__(self, libraries):
        super().__init__(np)
        self.libraries = libraries

    def kernel(self, name):
        return _HostDispatch(self.libraries, name)


class _HostDispatch:
    def __init__(self, libraries, name):
        self.libraries, self.name = libraries, name

    def __call__(self, *args):
        dtype = next(a.dtype for a in args if isinstance(a, np.ndarray))
        library = self.libraries["float" if dtype == np.float32 else "double"]
        return HostElementwiseKernel(library, self.name)(*args)


ARCHITECTURES = [
    ([12], "relu", "bernoulli", 1.0), ([9, 7], "tanh", "bernoulli", 1.0),
    ([8], "sigmoid", "gaussian", 0.5), ([8], "leaky_relu", "bernoulli", 1.0),
    ([10], "softplus", "gaussian", "learned"), ([], "relu", "gaussian", 1.0),
]


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: f"{a[1]}-{a[2]}-{a[3]}")
@pytest.mark.parametrize("L", [1, 2])
def test_cuda_kernels_drive_the_step_like_the_reference(host_library, arch, L):
    hidden, activation, likelihood, variance = arch
    make = lambda: minivae.VAE(6, hidden, 3, likelihood=likelihood, activation=activation,  # noqa: E731
                               dtype="float64", seed=3, decoder_variance=variance)
    fast_model, ref_model = make(), make()
    rng = np.random.default_rng(5)
    x, eps = rng.uniform(0.05, 0.95, (5, 6)), rng.standard_normal((L, 5, 3))
    step = TrainStep(fast_model, minivae.Adam(fast_model.params, lr=0.01), n_samples=L)
    step._engine.kernels = HostCupyKernels(host_library)
    ref_opt = minivae.Adam(dict(ref_model.params), lr=0.01)
    terms = step(x, beta=0.6, eps=eps)
    ref_terms, ref_grads = ref_model.forward_backward(x, eps=eps, beta=0.6)
    ref_opt.step(ref_grads)
    close(terms.loss, ref_terms.loss)
    close(terms.kl, ref_terms.kl)
    close(step.grads.flat, ref_grads.flat)
    close(fast_model.params.flat, ref_model.params.flat)


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: f"{a[1]}-{a[2]}-{a[3]}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_kernels_compute_the_importance_weights_like_the_reference(host_library, arch, dtype):
    """minivae.fast.iwae driven by CupyKernels (the CUDA bodies compiled for the CPU)."""
    from minivae.fast.iwae import FusedIWAE
    hidden, activation, likelihood, variance = arch
    model = minivae.VAE(6, hidden, 3, likelihood=likelihood, activation=activation, dtype=dtype,
                        seed=3, decoder_variance=variance)
    rng = np.random.default_rng(5)
    x = rng.uniform(0.05, 0.95, (2, 6)).astype(dtype)
    eps = rng.standard_normal((5, 2, 3)).astype(dtype)
    engine = FusedIWAE(model, block_rows=4, threads=1)
    engine.kernels = HostCupyKernels(host_library)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    close(engine.log_weights(x, eps), model.log_importance_weights(x, eps), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", [lambda p: minivae.Adam(p, lr=0.01, betas=(0.8, 0.99)),
                                  lambda p: minivae.SGD(p, lr=0.1),
                                  lambda p: minivae.SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: minivae.SGD(p, lr=0.1, momentum=0.9, nesterov=True)])
def test_cuda_optimizer_kernels_match_the_array_update(host_library, dtype, make):
    from minivae.params import Parameters
    rng = np.random.default_rng(0)
    start = rng.standard_normal(50).astype(dtype)
    a, b = Parameters(start.copy(), {"w": (50,)}), Parameters(start.copy(), {"w": (50,)})
    opt_a, opt_b = make(a), make(b)
    kernels = HostCupyKernels(host_library)
    for _ in range(3):
        g = Parameters(rng.standard_normal(50).astype(dtype), {"w": (50,)})
        opt_a.step(g)                                   # array (chunked) update
        opt_b.step_count += 1
        assert opt_b.flat_update(kernels).fused(b.flat, g.flat, opt_b.state, opt_b._step_scalars())
    tol = 1e-12 if dtype == "float64" else 1e-5
    close(a.flat, b.flat, rtol=tol, atol=tol)
    for name in opt_a.state:
        close(opt_a.state[name], opt_b.state[name], rtol=tol, atol=tol)


# --- 4. every launch passes what its kernel declares ---------------------------------------------------

class RecordingCupy:
    """The array module of the ``strict-cuda`` backend: the strict stand-in's functions, and an
    ``ElementwiseKernel`` that checks each launch against its kernel's signature, records it, and
    runs it through the host-compiled CUDA formulas."""

    def __init__(self, libraries):
        self.libraries, self.launches, self.built = libraries, [], []
        recorder = self

        class ElementwiseKernel:
            def __init__(self, in_params, out_params, operation, name, **kwargs):
                assert name.startswith("minivae_"), name
                self.kernel = name[len("minivae_"):]
                assert (in_params, out_params, operation) == sources.CUDA_KERNELS[self.kernel][:3]
                recorder.built.append(self.kernel)

            def __call__(self, *args):
                recorder.launches.append((self.kernel, check_launch(self.kernel, args)))
                host = [a._data if isinstance(a, strict.ndarray) else a for a in args]   # device memory
                _HostDispatch(recorder.libraries, self.kernel)(*host)

        self.ElementwiseKernel = ElementwiseKernel

    def __getattr__(self, name):
        return getattr(strict, name)


def check_launch(name, args):
    """Assert that ``args`` match kernel ``name``'s parameters as CuPy binds them: arrays of the
    backend (one dtype T) where the kernel takes arrays, raw arrays C-contiguous, outputs of the
    launch's full shape, and every scalar a NumPy scalar of exactly its parameter's type (T: the
    arrays' dtype; int32: numpy.int32). A Python float would reach a RawKernel as a double and an
    int as a 64-bit integer; a numpy.float64 scalar with float32 arrays is a type mismatch for T.
    Returns the dtype T."""
    in_params, out_params, _ = sources.CUDA_KERNELS[name]
    params = [("in", *p) for p in sources.kernel_params(in_params)] + \
             [("out", *p) for p in sources.kernel_params(out_params)]
    assert len(args) == len(params), (name, len(args), len(params))
    scalars = sources.SCALAR_PARAMS.get(name, ())
    arrays = [a for (_, _, pname, _), a in zip(params, args) if pname not in scalars]
    assert all(isinstance(a, strict.ndarray) for a in arrays), (name, [type(a) for a in arrays])
    T = arrays[0].dtype
    assert T in (np.float32, np.float64) and all(a.dtype == T for a in arrays), (name, [a.dtype for a in arrays])
    shape = np.broadcast_shapes(*(a.shape for (_, _, pname, raw), a in zip(params, args)
                                  if pname not in scalars and not raw))
    for (kind, ctype, pname, raw), a in zip(params, args):
        if pname in scalars:
            expected = T.type if ctype == "T" else np.dtype(ctype).type
            assert type(a) is expected, \
                f"{name}: {pname} is a {type(a).__name__}, the kernel takes {ctype} = {expected.__name__}"
        elif raw:
            assert a.flags.c_contiguous, (name, pname)
        elif kind == "out":
            assert a.shape == shape, (name, pname, a.shape, shape)
    return T


@pytest.fixture
def strict_cuda(host_library):
    """A backend with CuPy's capabilities and kernels (``kernel_family = "cuda"``) on the strict
    stand-in's arrays: the whole CuPy code path of the fast step and the optimizers, on the CPU,
    every launch checked (:func:`check_launch`). Its noise is NumPy's generator, copied in."""
    from minivae.backend import Random, register_backend, unregister_backend
    from minivae.backend.base import Backend
    from minivae.backend.cupy_backend import CupyBackend
    from minivae.backend.strict_backend import StrictBackend
    xp = RecordingCupy(host_library)

    class StrictCuda(CupyBackend):
        name = "strict-cuda"
        draws_into_out = False
        owns, to_host = StrictBackend.owns, StrictBackend.to_host

        def __init__(self):
            Backend.__init__(self)   # no GPU to look for

        @staticmethod
        def array_module():
            return xp

        def random(self, seed=None):
            return Random(self, seed)

        def synchronize(self):
            pass

    register_backend(StrictCuda)
    try:
        yield minivae.get_backend("strict-cuda")
    finally:
        unregister_backend("strict-cuda")


OPTIMIZERS = {"adam": lambda p: minivae.Adam(p, lr=0.01), "sgd": lambda p: minivae.SGD(p, lr=0.1),
              "momentum": lambda p: minivae.SGD(p, lr=0.1, momentum=0.9),
              "nesterov": lambda p: minivae.SGD(p, lr=0.1, momentum=0.9, nesterov=True)}
OPTIMIZER_KERNEL = {"adam": "adam", "sgd": "sgd", "momentum": "sgd_momentum", "nesterov": "sgd_momentum"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: f"{a[1]}-{a[2]}-{a[3]}")
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_cuda_launch_passes_its_kernels_types(strict_cuda, arch, dtype, optimizer):
    """Training steps on the CuPy code path: every launch matches its kernel's signature, each
    kernel object is built once (CuPy then compiles it once per dtype and caches it, on disk too),
    nothing is read on the host, and the result is the NumPy backend's."""
    hidden, activation, likelihood, variance = arch
    make = lambda backend: minivae.VAE(6, hidden, 3, likelihood=likelihood, activation=activation,  # noqa: E731
                                       dtype=dtype, seed=3, decoder_variance=variance, backend=backend)
    model, reference = make(strict_cuda), make("numpy")
    step = TrainStep(model, OPTIMIZERS[optimizer](model.params), n_samples=2)
    reference_step = TrainStep(reference, OPTIMIZERS[optimizer](reference.params), n_samples=2, threads=1)
    x = np.random.default_rng(5).uniform(0.05, 0.95, (5, 6)).astype(dtype)
    xp = strict_cuda.xp
    built_before = len(xp.built)
    step(strict_cuda.to_device(x), beta=0.6)
    launched = {name for name, _ in xp.launches}
    reads = strict.host_reads()
    for _ in range(3):
        terms = step(strict_cuda.to_device(x), beta=0.6)
    assert strict.host_reads() == reads          # nothing read on the host
    for _ in range(4):
        reference_terms = reference_step(x, beta=0.6)
    assert OPTIMIZER_KERNEL[optimizer] in launched and "reparameterize_kl" in launched
    assert {T for _, T in xp.launches} == {np.dtype(dtype)}
    assert len(xp.built) - built_before <= len(launched) and len(set(xp.built)) == len(xp.built)
    tol = 1e-10 if dtype == "float64" else 2e-4
    close(terms.loss, reference_terms.loss, rtol=tol, atol=tol)
    close(model.params.flat, reference.params.flat, rtol=tol, atol=tol)


def test_a_python_scalar_or_a_wider_scalar_is_caught():
    """What :func:`check_launch` refuses: the mistakes that CuPy would pass on silently."""
    b, h = strict.asarray(np.zeros(3, np.float32)), strict.asarray(np.zeros((2, 3), np.float32))
    assert check_launch("bias_leaky_relu", (b, np.float32(0.01), h.copy(), h)) == np.float32
    for slope in (0.01, np.float64(0.01)):
        with pytest.raises(AssertionError, match="slope"):
            check_launch("bias_leaky_relu", (b, slope, h.copy(), h))
    mu = strict.asarray(np.zeros((2, 3), np.float32))
    eps = strict.asarray(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(AssertionError, match="NK"):
        check_launch("reparameterize_kl", (mu, mu, eps, np.int32(1), 6, mu.copy(), eps.copy()))


def test_loops_over_samples_count_in_64_bits():
    """A loop over the L samples indexes ``l * NK + i``: with an ``int`` counter the product wraps
    where L N K >= 2^31 (CuPy's ``i`` is 64-bit already). Every loop counter in the CUDA sources is
    ``long long`` (docs/gpu.md, the CuPy review)."""
    from minivae.fast.sources import CUDA_KERNELS
    loops = [(name, loop) for name, (_, _, body) in CUDA_KERNELS.items()
             for loop in re.findall(r"for \((\w[\w ]*?) \w+ =", body)]
    assert loops, "the reparameterization kernels loop over the samples"
    assert [(name, counter) for name, counter in loops if counter != "long long"] == []
