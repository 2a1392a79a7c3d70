"""Probes of the library's public API with bad input (docs/reliability.md, section "library"):
every one is refused with an error that names the problem, or gives exactly the right result."""
import math

import numpy as np
import pytest

import minivae
from minivae import InputError
from minivae.backend import BackendUnavailableError, cupy_gpu_available
from minivae.gradcheck import Float32GradcheckError
from minivae.training.loop import TrainConfig


@pytest.fixture
def model():
    return minivae.VAE(6, [5], 2, seed=0)


@pytest.fixture
def x():
    return np.random.default_rng(0).random((4, 6)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16, np.complex64, object, bool])
def test_every_other_dtype_is_refused(model, x, dtype):
    with pytest.raises(InputError, match=f"x has dtype {np.dtype(dtype)} but the model computes in float32"):
        model.loss_and_grads(x.astype(dtype))
    step = minivae.TrainStep(model, minivae.Adam(model.params))
    with pytest.raises(InputError, match="has dtype"):
        step(x.astype(dtype))


def test_bad_eps_shapes_and_values(model, x):
    for eps in [np.zeros((0, 4, 2), np.float32), np.zeros((1, 1, 4, 2), np.float32), np.zeros(8, np.float32),
                np.zeros((2, 3, 2), np.float32)]:
        with pytest.raises(InputError, match=r"eps must have shape \(n_samples, 4, 2\) with n_samples >= 1"):
            model.loss_and_grads(x, eps=eps)
    for bad, what in [(np.nan, "NaN"), (np.inf, "Inf")]:
        eps = np.zeros((4, 2), np.float32)
        eps[1, 1] = bad
        with pytest.raises(InputError, match=f"eps contains {what}"):
            model.loss_and_grads(x, eps=eps)
        with pytest.raises(InputError, match=f"eps contains {what}"):
            minivae.TrainStep(model, minivae.Adam(model.params), check_values=True)(x, eps=eps)


@pytest.mark.parametrize("n_samples", [0, -1, 1.5, math.nan, None, True, "2"])
def test_n_samples_must_be_a_positive_integer(model, x, n_samples):
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        model.loss_and_grads(x, n_samples=n_samples)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        model.elbo_per_example(x, n_samples=n_samples)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        model.draw_eps(4, n_samples)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        minivae.TrainStep(model, minivae.Adam(model.params), n_samples=n_samples)


@pytest.mark.parametrize("beta", [-1.0, -1e-9, math.nan, math.inf, None, "1", True])
def test_beta_must_be_finite_and_non_negative(model, x, beta):
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        model.loss_and_grads(x, beta=beta)
    step = minivae.TrainStep(model, minivae.Adam(model.params))
    before = model.flat_params.copy()
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        step(x, beta=beta)
    np.testing.assert_array_equal(model.flat_params, before)        # refused before any update


@pytest.mark.parametrize("args,message", [
    ((0, [5], 2), "input_dim must be a positive integer, got 0"),
    ((-3, [5], 2), "input_dim must be a positive integer, got -3"),
    ((6, [5], 0), "latent_dim must be a positive integer, got 0"),
    ((6, [5], -1), "latent_dim must be a positive integer"),
    ((6, [5], 2.5), "latent_dim must be a positive integer, got 2.5"),
    ((6, [5], math.nan), "latent_dim must be a positive integer, got nan"),
    ((6, [5], True), "latent_dim must be a positive integer, got True"),
    ((6, [0], 2), "hidden width must be a positive integer, got 0"),
    ((6, [5, -4], 2), "hidden width must be a positive integer, got -4"),
    ((6, [5.5], 2), "hidden width must be a positive integer, got 5.5"),
    ((6, 5, 2), "hidden_dims must be a sequence of layer widths"),
    ((6, "5", 2), "hidden_dims must be a sequence of layer widths"),
])
def test_zero_negative_and_non_integral_dimensions(args, message):
    with pytest.raises(ValueError, match=message):
        minivae.VAE(*args)


def test_no_hidden_layer_is_a_valid_architecture(x):
    model = minivae.VAE(6, [], 2, seed=0, dtype="float64")          # x -> (mu, logvar) -> logits
    assert math.isfinite(model.loss(x.astype(np.float64)))


@pytest.mark.parametrize("backend", ["nope", "", "NUMPY", 3])
def test_bad_backend_names(backend):
    with pytest.raises(ValueError, match="unknown backend"):
        minivae.VAE(6, [5], 2, backend=backend)
    with pytest.raises(ValueError, match="unknown backend"):
        minivae.set_backend(backend)
    assert minivae.get_backend().name == "numpy"            # the process default is unchanged


@pytest.mark.skipif(cupy_gpu_available(), reason="this machine has a GPU: CuPy runs")
def test_cupy_without_a_gpu_says_why():
    with pytest.raises(BackendUnavailableError, match="backend 'cupy' was requested but"):
        minivae.VAE(6, [5], 2, backend="cupy")


@pytest.mark.parametrize("dtype", ["float16", "int32", "complex64", "bfloat16", "nope", None, object])
def test_bad_dtype_names(dtype):
    with pytest.raises(ValueError, match="dtype must be one of"):
        minivae.VAE(6, [5], 2, dtype=dtype)


@pytest.mark.parametrize("lr", [0, -1e-3, math.nan, math.inf, "0.1", None])
def test_learning_rate_must_be_finite_and_positive(model, lr):
    for optimizer in (minivae.Adam, minivae.SGD):
        with pytest.raises(ValueError, match="learning rate must be a finite positive number"):
            optimizer(model.params, lr=lr)
    if not isinstance(lr, str):     # TrainConfig reads its numbers with float(), "0.1" too
        with pytest.raises((ValueError, TypeError)):
            TrainConfig(lr=lr)


def test_other_optimizer_hyperparameters(model):
    with pytest.raises(ValueError, match="eps must be a finite positive number"):
        minivae.Adam(model.params, eps=math.inf)
    with pytest.raises(ValueError, match="betas"):
        minivae.Adam(model.params, betas=(math.nan, 0.999))
    with pytest.raises(ValueError, match="momentum"):
        minivae.SGD(model.params, momentum=math.nan)
    for name in ("beta", "lr_min", "warmup_epochs"):
        with pytest.raises(ValueError, match=f"invalid {name}"):
            TrainConfig(**{name: math.inf})


def test_gradcheck_on_float32_needs_an_explicit_opt_in(model, x):
    with pytest.raises(Float32GradcheckError, match="finite differences need float64"):
        minivae.check_model_gradients(model, x)
    with pytest.raises(Float32GradcheckError):
        minivae.numeric_gradient(lambda v: v * 2.0, x)
    report = minivae.check_model_gradients(model, x, allow_float32=True)     # knowingly: runs
    assert math.isfinite(report.max_error)


def test_latent_points_are_checked(model, x):
    with pytest.raises(InputError, match="z has dtype float64"):
        model.log_likelihood(x, np.zeros((4, 2)))                # was silently promoted to float64
    with pytest.raises(InputError, match=r"z must have shape \(\.\.\., 4, 2\)"):
        model.log_likelihood(x, np.zeros((3, 2), np.float32))
    with pytest.raises(InputError, match=r"z must have shape"):
        model.log_likelihood_and_grad(x, np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match="z contains NaN"):
        model.log_likelihood(x, np.full((2, 4, 2), np.nan, np.float32))
    with pytest.raises(InputError, match="z contains Inf"):
        model.decode(np.full((3, 2), np.inf, np.float32))


@pytest.mark.parametrize("n", [0, -1, 2.5, None])
def test_sample_counts(model, n):
    with pytest.raises(ValueError, match="must be a positive integer"):
        model.sample(n)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.draw_eps(n)


def test_sample_with_eps_of_another_count(model):
    with pytest.raises(InputError, match=r"eps must have shape \(3, 2\)"):
        model.sample(3, eps=np.zeros((5, 2), np.float32))


def test_evaluation_refuses_empty_data_and_bad_batch_sizes(model, x):
    for evaluate in (minivae.heldout_elbo, minivae.latent_statistics):
        with pytest.raises(InputError, match="x is empty"):
            evaluate(model, x[:0])
        with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
            evaluate(model, x, batch_size=0)
    with pytest.raises(InputError, match="x is empty"):
        minivae.iwae_bound(model, x[:0], k=2, progress=False)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        minivae.iwae_bound(model, x, k=0, progress=False)
    with pytest.raises(ValueError, match="batch_rows must be a positive integer"):
        minivae.iwae_bound(model, x, k=2, batch_rows=-1, progress=False)


def layouts(x):
    """x (N, D) C-ordered, and the same values in other memory layouts."""
    wide = np.zeros((x.shape[0] * 2, x.shape[1] * 3), x.dtype)
    wide[::2, ::3] = x
    return {"fortran": np.asfortranarray(x), "strided": wide[::2, ::3], "transposed": np.ascontiguousarray(x.T).T}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_contiguous_input_gives_the_contiguous_result_exactly(backend, dtype):
    """The reference path and the fused step (compiled CPU kernels on NumPy, one and two
    threads, one and two samples) give bit for bit the result of the C-ordered batch."""
    rng = np.random.default_rng(1)
    x = rng.random((32, 10)).astype(dtype)
    eps = rng.standard_normal((2, 32, 3)).astype(dtype)

    def run(x_host, eps_host, threads):
        model = minivae.VAE(10, [7, 5], 3, seed=0, dtype=dtype, backend=backend)
        step = minivae.TrainStep(model, minivae.Adam(model.params, lr=1e-2), threads=threads)
        xd, ed = backend.to_device(x_host), backend.to_device(eps_host)
        terms, grads = model.forward_backward(xd, eps=ed)
        losses = [float(step(xd, eps=ed).loss) for _ in range(3)]
        return [float(terms.loss), minivae.to_numpy(grads.flat).copy(), losses,
                minivae.to_numpy(model.flat_params).copy()]

    for threads in (1, 2):
        expected = run(x, eps, threads)
        for name, x_other in layouts(x).items():
            eps_other = np.asfortranarray(eps) if name == "fortran" else eps
            got = run(x_other, eps_other, threads)
            assert got[0] == expected[0] and got[2] == expected[2], name
            np.testing.assert_array_equal(got[1], expected[1], err_msg=name)
            np.testing.assert_array_equal(got[3], expected[3], err_msg=name)


def test_sample_names_eps_as_the_caller_passed_it(model):
    with pytest.raises(InputError, match="eps has dtype float64"):              # was: "z has dtype"
        model.sample(2, eps=np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"eps must have shape \(2, 2\) for n = 2, got \(2, 2, 1\)"):
        model.sample(2, eps=np.zeros((2, 2, 1), np.float32))


def test_study_tools_check_their_counts_first(model, x):
    """Before any costly work: the 100,000-sample reference gradient, the tiling of x."""
    from minivae.study import estimators, posterior
    with pytest.raises(ValueError, match="sample size must be a positive integer, got 0"):   # was: ZeroDivisionError
        estimators.compare_estimators(model, x[:1], sample_sizes=(0,))
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        estimators.compare_estimators(model, x[:1], estimators=("nope",))
    with pytest.raises(ValueError, match="n_samples must be a positive integer, got 2.5"):   # was: cut to 2
        estimators.estimator_statistics(model, x[:1], n_samples=2.5)
    with pytest.raises(ValueError, match="k must be a positive integer, got 1.5"):           # was: cut to 1
        posterior.iwae_bound_repeats(model, x, k=1.5)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match=r"x contains NaN \(1 entries\)"):                  # was: 100 entries
        posterior.iwae_bound_repeats(model, bad, k=2)
