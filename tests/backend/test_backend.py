"""Backends: selection, the lazy and optional CuPy, the strict stand-in that catches the
implicit host/device conversions and mixing that would break on a GPU, and the capabilities each
backend declares (a backend added outside the package trains; no code outside minivae/backend/
looks at a backend's name)."""
import re
from pathlib import Path

import numpy as np
import pytest

import minivae
from minivae.backend import (BACKEND_NAMES, BACKENDS, CAPABILITIES, BackendUnavailableError,
                             cupy_gpu_available, get_array_module, register_backend, resolve_backend_name,
                             strict, unregister_backend)
from minivae.backend.numpy_backend import NumpyBackend
from minivae.fast import cpu_library
from minivae.fast.array_kernels import ArrayKernels
from minivae.fast.cpu_kernels import CompiledKernels
from minivae.fast.cuda_kernels import CupyKernels
from minivae.fast.dispatch import get_kernels


def test_auto_picks_cupy_only_with_a_gpu():
    assert resolve_backend_name("auto") == ("cupy" if cupy_gpu_available() else "numpy")


@pytest.mark.skipif(cupy_gpu_available(), reason="this machine has a GPU")
def test_cupy_without_a_gpu_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="cupy"):
        minivae.VAE(4, [3], 2, backend="cupy")


def test_missing_cupy_is_a_clear_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_cupy)
    monkeypatch.setattr(minivae.backend, "_backends", {})
    with pytest.raises(BackendUnavailableError, match="CuPy is not installed"):
        minivae.get_backend("cupy")
    assert minivae.backend.cupy_gpu_available() is False
    assert resolve_backend_name("auto") == "numpy"


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        minivae.get_backend("tpu")


def test_set_backend_sets_the_process_default():
    try:
        minivae.set_backend("strict")
        model = minivae.VAE(4, [3], 2, seed=0)
        assert model.backend.name == "strict"
        assert isinstance(model.params.flat, strict.ndarray)
    finally:
        minivae.set_backend("numpy")
    assert minivae.VAE(4, [3], 2).backend.name == "numpy"


def test_get_array_module_follows_the_arrays():
    assert get_array_module(np.zeros(2)) is np
    assert get_array_module(strict.zeros(2)) is strict
    assert get_array_module(np.zeros(2), strict.zeros(2)) is strict


def test_strict_refuses_implicit_conversion_to_numpy():
    a = strict.ones((2, 3))
    for convert in (np.asarray, np.array, lambda v: np.asarray(v.sum()), lambda v: v.tolist()):
        with pytest.raises(TypeError):
            convert(a)


def test_strict_refuses_mixing_with_numpy_arrays():
    a = strict.ones((2, 3))
    for mix in (lambda: a + np.ones(3), lambda: np.ones(3) * a, lambda: np.exp(a) @ np.ones((3, 2)),
                lambda: strict.concatenate([a, np.ones((1, 3))]), lambda: a.__setitem__(0, np.zeros(3)),
                lambda: np.maximum(a, np.zeros((2, 3)))):
        with pytest.raises(TypeError, match="mixing"):
            mix()


def test_strict_allows_what_cupy_allows():
    a = strict.asarray(np.arange(6.0).reshape(2, 3))  # explicit host -> device
    b = (a * np.float32(2.0) + 1.0) @ strict.ones((3, 1))
    assert isinstance(b, strict.ndarray) and b.shape == (2, 1)
    assert float(a.sum()) == 15.0  # explicit scalar read
    assert isinstance(a.sum(), strict.ndarray)  # reductions stay on the device, as in CuPy
    a += 1.0
    np.testing.assert_array_equal(minivae.to_numpy(a), np.arange(1.0, 7.0).reshape(2, 3))
    out = strict.empty((2, 3))
    assert np.add(a, a, out=out) is out


def test_random_draws_on_the_backend(backend):
    random = backend.random(0)
    draws = random.normal((3, 2), np.float32)
    assert backend.is_native(draws) and draws.dtype == np.float32 and draws.shape == (3, 2)
    assert backend.is_native(random.uniform((4,), np.float64))
    assert sorted(minivae.to_numpy(random.permutation(5)).tolist()) == [0, 1, 2, 3, 4]
    out = backend.xp.zeros((3, 2), dtype=np.float32)
    assert random.normal((3, 2), np.float32, out=out) is out
    assert float(abs(out).sum()) > 0


def test_random_state_round_trips():
    random = minivae.get_backend("numpy").random(3)
    state = random.get_state()
    first = random.normal((4,), np.float64)
    random.set_state(state)
    np.testing.assert_array_equal(random.normal((4,), np.float64), first)


def test_to_numpy_is_the_explicit_host_copy(backend):
    device = backend.to_device(np.arange(3.0))
    host = minivae.to_numpy(device)
    assert type(host) is np.ndarray and host.tolist() == [0.0, 1.0, 2.0]


# --- capabilities instead of names ----------------------------------------------------------------

CAPABILITY_VALUES = {
    "numpy": dict(can_export_rng_state=True, draws_into_out=True, default_batch_rows=2 ** 13,
                  kernel_family="compiled-cpu", split_step="auto"),
    "cupy": dict(can_export_rng_state=False, draws_into_out=True, default_batch_rows=2 ** 16,
                 kernel_family="cuda", split_step="never"),
    "strict": dict(can_export_rng_state=True, draws_into_out=False, default_batch_rows=2 ** 13,
                   kernel_family="array", split_step="on request"),
}
KERNEL_CLASSES = {"compiled-cpu": CompiledKernels, "cuda": CupyKernels, "array": ArrayKernels}


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_each_builtin_backend_declares_its_capabilities(name):
    """On the classes, so that CuPy's are checked without a GPU."""
    backend_class = BACKENDS[name]
    assert backend_class.name == name
    assert {capability: getattr(backend_class, capability) for capability in CAPABILITIES} == \
        CAPABILITY_VALUES[name]


def test_the_capabilities_are_what_the_library_does(backend):
    """Kernels, the rng state export, the thread split and the evaluation batch follow the
    declarations (on the backends this machine runs)."""
    assert type(get_kernels(backend)) is KERNEL_CLASSES[backend.kernel_family]
    model = minivae.VAE(4, [3], 2, seed=0, backend=backend)
    optimizer = minivae.Adam(model.params)
    assert optimizer.backend == backend
    assert type(optimizer._flat_update.kernels) is KERNEL_CLASSES[backend.kernel_family]
    random = backend.random(0)
    if backend.can_export_rng_state:
        random.set_state(random.get_state())
    else:
        with pytest.raises(NotImplementedError):
            random.get_state()
    threads = minivae.TrainStep(model, optimizer, threads=2).threads
    assert threads == (1 if backend.split_step == "never" else 2)


class ToyBackend(NumpyBackend):
    """A backend that exists in this file only: NumPy arrays, the array kernels (no compiled
    passes), and generators that cannot export their state."""

    name = "toy"
    kernel_family = "array"
    can_export_rng_state = False


@pytest.fixture
def toy():
    register_backend(ToyBackend)
    try:
        yield minivae.get_backend("toy")
    finally:
        unregister_backend("toy")
    with pytest.raises(ValueError, match="unknown backend 'toy'"):
        minivae.get_backend("toy")


def train_a_little(backend, steps=4):
    """Losses and parameters (float64) after a few TrainStep + Adam steps on ``backend``."""
    model = minivae.VAE(12, [8], 3, dtype="float64", seed=0, backend=backend)
    step = minivae.TrainStep(model, minivae.Adam(model.params, lr=1e-2))
    x = model.backend.to_device(np.random.default_rng(1).uniform(size=(16, 12)))
    losses = [float(step(x).loss) for _ in range(steps)]
    return np.array(losses), minivae.to_numpy(model.params.flat).copy()


def test_a_backend_added_outside_the_package_trains_like_the_array_kernels(toy, monkeypatch):
    """The toy backend runs the fast step and the optimizer with the array kernels: the same losses
    and parameters as the strict stand-in (the array kernels too), and the compiled CPU library
    (MINIVAE_HOST_KERNELS) is never asked for."""
    assert type(get_kernels(toy)) is ArrayKernels
    with monkeypatch.context() as patch:
        patch.setattr(cpu_library, "get", lambda dtype: pytest.fail("the toy backend asked for compiled kernels"))
        toy_losses, toy_params = train_a_little("toy")
    strict_losses, strict_params = train_a_little("strict")
    np.testing.assert_allclose(toy_losses, strict_losses, rtol=1e-13)
    np.testing.assert_allclose(toy_params, strict_params, rtol=1e-13, atol=1e-15)
    assert toy_losses[-1] < toy_losses[0]


def test_a_backend_without_rng_state_resumes_by_replaying_the_noise(toy, tmp_path):
    """Mid-epoch checkpoints of a backend that cannot export its generator state hold none; the
    resumed run replays the epoch's draws and ends where an uninterrupted run ends."""
    from minivae.training.loop import TrainConfig, Trainer

    def trainer(path=None):
        x = np.random.default_rng(0).uniform(size=(60, 10)).astype(np.float32)
        config = TrainConfig(epochs=2, batch_size=20, lr=1e-2, seed=3, log_every=2, eval_batch_size=20)
        return Trainer(minivae.VAE(10, [6], 2, backend="toy", seed=1), x, config, checkpoint_path=path,
                       progress=False, log=None)
    straight = trainer()
    straight.fit()
    path = tmp_path / "run.npz"
    first = trainer(path)
    first.fit(time_limit=0.0)                  # stops after the first log interval, mid-epoch
    _, meta = minivae.load_checkpoint(path)
    assert meta["progress"]["step_in_epoch"] == 2 and meta["rng"]["noise_state"] is None
    resumed = trainer(path).restore(path)
    resumed.fit()
    np.testing.assert_array_equal(resumed.model.flat_params, straight.model.flat_params)


def test_registering_checks_the_declaration():
    class Unnamed(NumpyBackend):
        name = "numpy"
    with pytest.raises(ValueError, match="new name"):
        register_backend(Unnamed)

    class Undeclared(minivae.Backend):
        name = "undeclared"
        can_export_rng_state = True
    with pytest.raises(ValueError, match="does not declare draws_into_out"):
        register_backend(Undeclared)

    class Misdeclared(NumpyBackend):
        name = "misdeclared"
        split_step = "sometimes"
    with pytest.raises(ValueError, match="split_step"):
        register_backend(Misdeclared)
    assert "misdeclared" not in BACKENDS


NAME_COMPARISON = re.compile(r"backend\.name\s*(==|!=|in\b)|\.name\s*(==|!=)\s*[\"'](numpy|cupy|strict)[\"']")


def test_no_code_outside_the_backends_compares_a_backend_name():
    """What differs between backends is asked of their capabilities: only minivae/backend/ may
    look at a backend's name (examples/ neither)."""
    assert NAME_COMPARISON.search('if self.backend.name != "cupy":')        # what it catches
    assert NAME_COMPARISON.search('threads if model.backend.name in ("numpy", "strict")')
    assert NAME_COMPARISON.search('module.name == "strict"')
    package = Path(minivae.__file__).parent
    sources = [path for path in package.rglob("*.py") if package / "backend" not in path.parents]
    sources += list((package.parent / "examples").rglob("*.py"))
    assert len(sources) > 20
    offenders = [f"{path}:{number}: {line.strip()}" for path in sources
                 for number, line in enumerate(path.read_text().splitlines(), start=1)
                 if NAME_COMPARISON.search(line)]
    assert offenders == []


@pytest.mark.parametrize("dims", [(784, [400], 20), (784, [512], 20), (784, [200, 200], 50)],
                         ids=["pytorch-example", "mnist-default", "classic"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_shipped_models_parameter_views_start_on_16_byte_boundaries(dims, dtype):
    """The views into the flat parameter vector are correct at any element offset (the kernels
    index elements; cuBLAS takes any element-aligned pointer), but cuBLAS and vectorized loads are
    fastest from 16-byte boundaries: the models the examples and benchmarks train have every view
    there (docs/gpu.md, the CuPy review). CuPy's pool aligns the flat vector itself to 512 bytes."""
    model = minivae.VAE(*dims, backend="numpy", dtype=dtype, seed=0)
    base = model.params.flat.__array_interface__["data"][0]
    offsets = {name: view.__array_interface__["data"][0] - base for name, view in model.params.items()}
    assert min(offsets.values()) == 0 and len(offsets) == len(model.params.shapes)
    assert {name: offset % 16 for name, offset in offsets.items() if offset % 16} == {}
