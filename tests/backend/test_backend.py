"""Backends: selection, the lazy and optional CuPy, and the strict stand-in that catches the
implicit host/device conversions and mixing that would break on a GPU."""
import numpy as np
import pytest

import minivae
from minivae.backend import BackendUnavailableError, cupy_gpu_available, get_array_module, resolve_backend_name, strict


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
