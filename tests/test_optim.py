"""Adam and SGD: the fast flat-vector update equals an independent, straightforward implementation
of the formulas (and torch.optim when PyTorch is installed); state save/restore is exact."""
import math

import numpy as np
import pytest

import minivae
from minivae.fast import updates
from minivae.params import Parameters

SHAPES = {"W": (7, 5), "b": (5,), "v": (3,)}
SIZE = sum(math.prod(s) for s in SHAPES.values())


def flat_params(backend, seed, dtype="float64", n=SIZE, shapes=SHAPES):
    values = np.random.default_rng(seed).standard_normal(n)
    return Parameters(backend.to_device(values, dtype), shapes)


def gradient_sequence(backend, steps, dtype="float64", n=SIZE, shapes=SHAPES):
    return [flat_params(backend, 100 + t, dtype, n, shapes) for t in range(steps)]


def adam_by_hand(p, grads, lr, b1, b2, eps):
    """Kingma & Ba, PyTorch's epsilon placement, in float64 on the host, one line per formula."""
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


def sgd_by_hand(p, grads, lr, momentum, nesterov):
    p, velocity = p.copy(), np.zeros_like(p)
    for t, g in enumerate(grads):
        velocity = g if t == 0 or not momentum else momentum * velocity + g
        if momentum == 0:
            velocity = g
        p = p - lr * (g + momentum * velocity if nesterov else velocity)
    return p, velocity


@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3)])
def test_adam_matches_formulas(backend, betas, eps):
    params = flat_params(backend, 0)
    start = np.array(minivae.to_numpy(params.flat))  # a copy: params change in place
    grads = gradient_sequence(backend, 6)
    opt = minivae.Adam(params, lr=0.05, betas=betas, eps=eps)
    for g in grads:
        opt.step(g)
    expected, m, v = adam_by_hand(start, [minivae.to_numpy(g.flat) for g in grads], 0.05, *betas, eps)
    np.testing.assert_allclose(minivae.to_numpy(params.flat), expected, rtol=1e-12, atol=1e-14)
    state = opt.state_dict()
    assert state["step"] == 6 and state["beta1"] == betas[0] and state["eps"] == eps
    exp_avg, exp_avg_sq = opt.moments()
    np.testing.assert_allclose(minivae.to_numpy(exp_avg), m, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(minivae.to_numpy(exp_avg_sq), v, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(minivae.to_numpy(state["exp_sum"]), m / (1 - betas[0]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(minivae.to_numpy(state["exp_sum_sq"]), v / (1 - betas[1]), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.8, True)])
def test_sgd_matches_formulas(backend, momentum, nesterov):
    params = flat_params(backend, 0)
    start = np.array(minivae.to_numpy(params.flat))  # a copy: params change in place
    grads = gradient_sequence(backend, 5)
    opt = minivae.SGD(params, lr=0.1, momentum=momentum, nesterov=nesterov)
    for g in grads:
        opt.step(g)
    expected, velocity = sgd_by_hand(start, [minivae.to_numpy(g.flat) for g in grads], 0.1,
                                     momentum, nesterov)
    np.testing.assert_allclose(minivae.to_numpy(params.flat), expected, rtol=1e-12, atol=1e-14)
    if momentum:
        np.testing.assert_allclose(minivae.to_numpy(opt.state_dict()["velocity"]), velocity,
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", [lambda p: minivae.Adam(p, lr=0.01),
                                  lambda p: minivae.SGD(p, lr=0.1, momentum=0.9, nesterov=True)])
def test_fast_flat_path_equals_reference_per_array_path(backend, make, monkeypatch):
    """The chunked flat update (several chunks, a ragged last one) equals the whole-array
    reference ``_update`` applied array by array (a plain dict takes that path)."""
    monkeypatch.setattr(updates, "CHUNK", 16)
    fast, ref = flat_params(backend, 1), flat_params(backend, 1)
    fast_opt, ref_opt = make(fast), make(dict(ref))
    for g in gradient_sequence(backend, 4):
        fast_opt.step(g)
        ref_opt.step(dict(g))
    np.testing.assert_allclose(minivae.to_numpy(fast.flat), minivae.to_numpy(ref.flat),
                               rtol=1e-13, atol=1e-15)
    for name in fast_opt.state:
        np.testing.assert_allclose(minivae.to_numpy(fast_opt.state[name]),
                                   minivae.to_numpy(ref_opt.state[name]), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("make", [lambda p: minivae.Adam(p, lr=0.01, betas=(0.8, 0.99)),
                                  lambda p: minivae.SGD(p, lr=0.1, momentum=0.9)])
def test_state_save_restore_gives_identical_steps(backend, make):
    a = flat_params(backend, 2)
    opt_a = make(a)
    grads = gradient_sequence(backend, 6)
    for g in grads[:3]:
        opt_a.step(g)
    saved = {k: (minivae.to_numpy(v) if hasattr(v, "shape") else v) for k, v in opt_a.state_dict().items()}
    b = Parameters(backend.to_device(minivae.to_numpy(a.flat)), SHAPES)
    opt_b = make(b)
    opt_b.load_state_dict(saved)       # host arrays, as read from a checkpoint
    for g in grads[3:]:
        opt_a.step(g)
        opt_b.step(g)
    np.testing.assert_array_equal(minivae.to_numpy(a.flat), minivae.to_numpy(b.flat))
    assert opt_b.state_dict()["step"] == 6


def test_adam_loads_a_state_saved_as_pytorch_moments(backend):
    """A state with exp_avg / exp_avg_sq (PyTorch's names; minivae's checkpoints before the weighted
    sums) loads as s = m / (1 - b1), r = v / (1 - b2) and continues the same run."""
    make = lambda p: minivae.Adam(p, lr=0.01, betas=(0.8, 0.99))  # noqa: E731
    a = flat_params(backend, 2)
    opt_a = make(a)
    grads = gradient_sequence(backend, 6)
    for g in grads[:3]:
        opt_a.step(g)
    exp_avg, exp_avg_sq = opt_a.moments()
    saved = {k: v for k, v in opt_a.state_dict().items() if not k.startswith("exp_")}
    saved.update(exp_avg=minivae.to_numpy(exp_avg), exp_avg_sq=minivae.to_numpy(exp_avg_sq))
    b = Parameters(backend.to_device(minivae.to_numpy(a.flat)), SHAPES)
    opt_b = make(b)
    opt_b.load_state_dict(saved)
    for name in opt_a.state_names:
        np.testing.assert_allclose(minivae.to_numpy(opt_b.state[name]), minivae.to_numpy(opt_a.state[name]),
                                   rtol=1e-15)
    for g in grads[3:]:
        opt_a.step(g)
        opt_b.step(g)
    np.testing.assert_allclose(minivae.to_numpy(b.flat), minivae.to_numpy(a.flat), rtol=1e-13)


def test_float32_stays_float32(backend):
    params = flat_params(backend, 0, "float32")
    opt = minivae.Adam(params, lr=1e-3)
    opt.step(gradient_sequence(backend, 1, "float32")[0])
    assert params.flat.dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.state.values())


def test_adam_matches_torch_optim():
    torch = pytest.importorskip("torch")
    backend = minivae.get_backend("numpy")
    params = flat_params(backend, 3)
    tparam = torch.nn.Parameter(torch.from_numpy(params.flat.copy()))
    opt = minivae.Adam(params, lr=0.02, betas=(0.8, 0.95), eps=1e-6)
    topt = torch.optim.Adam([tparam], lr=0.02, betas=(0.8, 0.95), eps=1e-6)
    sopt_params = flat_params(backend, 3)
    sopt = minivae.SGD(sopt_params, lr=0.05, momentum=0.7, nesterov=True)
    sparam = torch.nn.Parameter(torch.from_numpy(sopt_params.flat.copy()))
    storch = torch.optim.SGD([sparam], lr=0.05, momentum=0.7, nesterov=True)
    for g in gradient_sequence(backend, 5):
        opt.step(g)
        sopt.step(g)
        tparam.grad = torch.from_numpy(g.flat.copy())
        sparam.grad = torch.from_numpy(g.flat.copy())
        topt.step()
        storch.step()
    np.testing.assert_allclose(params.flat, tparam.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sopt_params.flat, sparam.detach().numpy(), rtol=1e-12, atol=1e-14)
    exp_avg, exp_avg_sq = opt.moments()
    np.testing.assert_allclose(exp_avg, topt.state[tparam]["exp_avg"].numpy(), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(exp_avg_sq, topt.state[tparam]["exp_avg_sq"].numpy(), rtol=1e-12)
