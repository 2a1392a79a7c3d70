"""The fast training step (minivae.fast.engine via TrainStep) computes exactly what the readable
reference computes: ``model.forward_backward`` followed by the optimizer's reference update."""
import numpy as np
import pytest

import minivae
from minivae.training.step import FastPathWarning, TrainStep

ARCHITECTURES = [
    # hidden_dims, decoder_hidden_dims, activation, likelihood, decoder_variance
    ([12], None, "relu", "bernoulli", 1.0),
    ([12, 9], None, "tanh", "bernoulli", 1.0),
    ([], None, "relu", "bernoulli", 1.0),              # linear encoder and decoder
    ([10], [7, 5], "sigmoid", "gaussian", 1.0),
    ([10], None, "leaky_relu", "gaussian", 0.3),
    ([11, 6], None, "softplus", "gaussian", "learned"),
]
D, K = 8, 3


def make_model(backend, arch, dtype="float64", seed=0):
    hidden, decoder_hidden, activation, likelihood, variance = arch
    return minivae.VAE(D, hidden, K, likelihood=likelihood, activation=activation, backend=backend,
                       dtype=dtype, seed=seed, decoder_hidden_dims=decoder_hidden,
                       decoder_variance=variance)


def batch(backend, n, dtype="float64", seed=1, L=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, size=(n, D))
    eps = rng.standard_normal((L, n, K))
    return backend.to_device(x, dtype), backend.to_device(eps, dtype)


def host(a):
    return minivae.to_numpy(a)


def assert_close(actual, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(host(actual), host(expected), rtol=rtol, atol=atol)


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: f"{a[2]}-{a[3]}-{a[4]}-{len(a[0])}")
@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("threads, n", [(1, 6), (2, 6), (2, 7)])
def test_fused_step_equals_reference(backend, arch, L, threads, n):
    """Loss terms, gradients and updated parameters agree with forward_backward + Adam._update,
    on one thread and split between two (halves of 3 + 3 and 3 + 4 examples)."""
    fast_model, ref_model = make_model(backend, arch), make_model(backend, arch)
    x, eps = batch(backend, n, L=L)
    fast_opt = minivae.Adam(fast_model.params, lr=1e-2)
    ref_opt = minivae.Adam(dict(ref_model.params), lr=1e-2)   # a plain dict: the reference update
    step = TrainStep(fast_model, fast_opt, n_samples=L, threads=threads)
    assert step.fused
    for beta in (1.0, 0.35):
        terms = step(x, beta=beta, eps=eps)
        ref_terms, ref_grads = ref_model.forward_backward(x, eps=eps, beta=beta)
        ref_opt.step(ref_grads)
        for name in ("loss", "reconstruction", "kl"):
            assert_close(getattr(terms, name), getattr(ref_terms, name))
            assert type(getattr(terms, name)) is type(getattr(ref_terms, name))
        assert_close(step.grads.flat, ref_grads.flat)
        assert_close(fast_model.params.flat, ref_model.params.flat)


def test_fused_step_float32_matches_reference(backend):
    """float32 stays float32 (no float64 promotion) and agrees to float32 precision."""
    arch = ARCHITECTURES[0]
    fast_model, ref_model = make_model(backend, arch, "float32"), make_model(backend, arch, "float32")
    x, eps = batch(backend, 16, "float32", L=2)
    step = TrainStep(fast_model, minivae.SGD(fast_model.params, lr=0.1), n_samples=2)
    terms = step(x, eps=eps)
    ref_terms, ref_grads = ref_model.forward_backward(x, eps=eps)
    for value in (terms.loss, terms.reconstruction, terms.kl, step.grads.flat, fast_model.params.flat):
        assert value.dtype == np.float32
    tol = 50 * np.finfo(np.float32).eps
    assert_close(terms.loss, ref_terms.loss, rtol=tol, atol=tol)
    assert_close(step.grads.flat, ref_grads.flat, rtol=tol, atol=tol)


@pytest.mark.parametrize("make_optimizer", [
    lambda params: minivae.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
    lambda params: minivae.Adam(params, lr=1e-2),
    lambda params: minivae.Adam(dict(params), lr=1e-2),   # not the flat vector: one update after
], ids=["sgd-nesterov", "adam", "adam-dict"])
def test_two_threads_equal_one_thread(backend, make_optimizer):
    """float32, several steps: the two-thread step stays within float32 rounding of the one-thread
    step (only the order of a few additions differs), and is itself bit-reproducible."""
    arch = ARCHITECTURES[5]   # two hidden layers, learned variance: every buffer kind
    runs = {}
    for threads in (1, 2, 2):
        model = make_model(backend, arch, "float32", seed=3)
        step = TrainStep(model, make_optimizer(model.params), n_samples=2, threads=threads)
        x, _ = batch(backend, 9, "float32")
        losses = [float(step(x).loss) for _ in range(4)]
        runs.setdefault(threads, []).append((losses, host(model.params.flat)))
    (losses_1, params_1), = runs[1]
    (losses_2, params_2), (losses_2b, params_2b) = runs[2]
    assert losses_2 == losses_2b
    np.testing.assert_array_equal(params_2, params_2b)
    np.testing.assert_allclose(losses_2, losses_1, rtol=1e-5)
    np.testing.assert_allclose(params_2, params_1, rtol=1e-4, atol=1e-5)


def test_threads_auto_splits_numpy_batches_and_restores_the_blas(monkeypatch):
    from threadpoolctl import threadpool_info

    from minivae.training import step as step_module
    from minivae.training.step import PARALLEL_MIN_WORK, PROGRAM_PARALLEL_MIN_WORK
    model = make_model(minivae.get_backend("numpy"), ARCHITECTURES[0], "float32")
    for program, minimum in ((False, PARALLEL_MIN_WORK), (True, PROGRAM_PARALLEL_MIN_WORK)):
        step = TrainStep(model, minivae.Adam(model.params), program=program)
        if step.runner != ("program" if program else "engine"):
            continue                          # (no recorded step on this machine)
        n = -(-minimum // model.params.flat.size)    # the smallest batch split in two
        assert step._use_two_threads(n) and not step._use_two_threads(n - 1)
    big = minivae.VAE(784, [400], 20, seed=0)
    assert TrainStep(big, minivae.Adam(big.params), program=False)._use_two_threads(16)
    assert TrainStep(big, minivae.Adam(big.params))._use_two_threads(2)
    with monkeypatch.context() as patch:          # one core: "auto" keeps one thread
        patch.setattr(step_module, "CORES", 1)
        assert not TrainStep(big, minivae.Adam(big.params))._use_two_threads(2048)
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    x, _ = batch(minivae.get_backend("numpy"), 40, "float32")
    step = TrainStep(model, minivae.Adam(model.params), threads=2)
    step(x)
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == before
    with pytest.raises(ValueError, match="threads must be"):
        TrainStep(model, minivae.Adam(model.params), threads=3)


def test_noise_drawn_like_the_reference(backend):
    """Without eps, the step draws the same noise from model.random as forward_backward does."""
    arch = ARCHITECTURES[1]
    fast_model, ref_model = make_model(backend, arch, seed=4), make_model(backend, arch, seed=4)
    x, _ = batch(backend, 5)
    step = TrainStep(fast_model, minivae.SGD(fast_model.params, lr=0.1), n_samples=2)
    terms = step(x)
    ref_terms, ref_grads = ref_model.forward_backward(x, n_samples=2)
    assert_close(terms.loss, ref_terms.loss)
    assert_close(step.grads.flat, ref_grads.flat)


def test_deterministic_and_no_stale_state(backend):
    """Two fresh steps from the same seed give bit-identical results; changing the batch size
    (a new workspace) and coming back changes nothing."""
    arch = ARCHITECTURES[0]
    results = []
    for _ in range(2):
        model = make_model(backend, arch, seed=7)
        step = TrainStep(model, minivae.Adam(model.params, lr=1e-2))
        x, _ = batch(backend, 6)
        x_small, _ = batch(backend, 3, seed=9)
        losses = [float(step(x).loss), float(step(x_small).loss), float(step(x).loss)]
        results.append((losses, host(model.params.flat)))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_loss_terms_are_not_overwritten_by_the_next_step(backend):
    model = make_model(backend, ARCHITECTURES[0])
    step = TrainStep(model, minivae.SGD(model.params, lr=0.5))
    x, eps = batch(backend, 4)
    first = step(x, eps=eps)
    value = float(first.loss)
    step(x, eps=eps)
    assert float(first.loss) == value


def test_reference_fallback_and_fused_agree(backend):
    """fused=False runs model.forward_backward: the same numbers as the fused path."""
    arch = ARCHITECTURES[3]
    a, b = make_model(backend, arch), make_model(backend, arch)
    x, eps = batch(backend, 5)
    fast = TrainStep(a, minivae.SGD(a.params, lr=0.1, momentum=0.9))
    slow = TrainStep(b, minivae.SGD(b.params, lr=0.1, momentum=0.9), fused=False)
    assert not slow.fused
    for _ in range(2):
        assert_close(fast(x, eps=eps).loss, slow(x, eps=eps).loss)
    assert_close(a.params.flat, b.params.flat)


def test_subclass_falls_back_to_reference(backend):
    class MyVAE(minivae.VAE):
        pass
    model = MyVAE(D, [5], K, backend=backend, dtype="float64", seed=0)
    with pytest.warns(FastPathWarning, match="MyVAE is not minivae.VAE itself"):
        assert not TrainStep(model, minivae.SGD(model.params, lr=0.1)).fused


def test_input_checks(backend):
    model = make_model(backend, ARCHITECTURES[0])
    step = TrainStep(model, minivae.SGD(model.params, lr=0.1))
    x, eps = batch(backend, 4)
    with pytest.raises(minivae.InputError):
        step(x[:, :5])
    with pytest.raises(minivae.InputError):
        step(x.astype("float32"))
    with pytest.raises(minivae.InputError):
        step(x, eps=eps[:, :3])
    checked = TrainStep(model, minivae.SGD(model.params, lr=0.1), check_values=True)
    with pytest.raises(minivae.InputError):
        checked(x * 3.0)
    with pytest.raises(ValueError):
        TrainStep(model, minivae.SGD(model.params, lr=0.1), n_samples=0)


def test_no_allocation_in_steady_state():
    """After the first step, the numpy step allocates no large arrays (no page faults)."""
    import tracemalloc
    model = minivae.VAE(64, [32], 4, seed=0)
    step = TrainStep(model, minivae.Adam(model.params))
    x = (np.random.default_rng(0).uniform(size=(128, 64)) < 0.3).astype(np.float32)
    step(x)
    step(x)
    tracemalloc.start()
    for _ in range(3):
        step(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 1024, peak   # a batch of logits alone is 32 KiB; nothing of that size is new
