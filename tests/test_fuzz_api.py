"""Fuzzing the public API with hypothesis (docs/reliability.md): random shapes, dtypes, memory
layouts and values for the batch, the noise, beta and n_samples. The property: every call either
raises a clear ``InputError`` / ``ValueError`` or returns a finite result; never another
exception, a NaN, or a hang (every call is on a 5-feature model and takes milliseconds; the
hypothesis deadline, a generous 5 s per example, turns a hang into a failure). ``derandomize``
and no example database: the same examples on every run, on every machine.

The values are drawn from the whole float range of their dtype (NaN, Inf, huge and tiny numbers
included) for the Bernoulli decoder, whose data must lie in [0, 1]. For the Gaussian decoder any
finite value is data; values far from unit scale overflow exp(logvar / 2) of an untrained model
(docs/reliability.md, "numerical range"), so its finite values are drawn from [-100, 100]. Likewise
a valid beta is drawn from [0, 1000]: any finite beta >= 0 is accepted, and one near the largest
float overflows beta * KL to Inf (the same section). The noise eps is drawn from [-8, 8] (or NaN, Inf).
"""
import math
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minivae
from minivae import InputError

D, K = 5, 2
MODELS = {(likelihood, dtype): minivae.VAE(D, [4], K, likelihood=likelihood, dtype=dtype, seed=0)
          for likelihood in ("bernoulli", "gaussian") for dtype in ("float32", "float64")}
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.uint8, np.complex64, np.bool_]
DEADLINE = timedelta(seconds=5)
FUZZ = settings(max_examples=80, deadline=DEADLINE, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def usually(draw):
    """True four times out of five: each part of a call is valid that often, so that valid calls
    (and calls with one bad part) are common, not only calls that fail on the dtype."""
    return draw(st.sampled_from([True, True, True, True, False]))


def values(dtype, likelihood, valid):
    """For a valid batch, values in the likelihood's range: [0, 1] (Bernoulli) or [-100, 100]
    (Gaussian); else any value of the dtype: NaN, Inf, huge and tiny numbers (Gaussian: NaN, Inf or
    [-100, 100], see the module docstring)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return None                                   # hypothesis' default for the dtype
    width = 8 * dtype.itemsize
    if likelihood == "gaussian":
        finite_values = st.floats(-100, 100, width=width)
        return finite_values if valid else finite_values | st.sampled_from([math.nan, math.inf, -math.inf])
    if valid:
        return st.floats(0, 1, width=width)
    return st.floats(width=width, allow_nan=True, allow_infinity=True)


@st.composite
def batches(draw, likelihood, model_dtype):
    """A batch of random shape, dtype, values and memory layout."""
    dtype = np.dtype(model_dtype) if usually(draw) else draw(st.sampled_from(DTYPES))
    if usually(draw):
        shape = (draw(st.integers(1, 6)), D)
    else:
        shape = draw(st.one_of(st.tuples(st.integers(0, 6), st.sampled_from([D, D - 1, D + 1, 0])),
                               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)))
    x = draw(hnp.arrays(dtype, shape, elements=values(dtype, likelihood, usually(draw))))
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided" and x.ndim >= 1:
        wide = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), x.dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    return x


@st.composite
def calls(draw):
    """(model, x, eps, beta, n_samples): each part valid four times out of five."""
    likelihood = draw(st.sampled_from(["bernoulli", "gaussian"]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    model = MODELS[likelihood, dtype]
    x = draw(batches(likelihood, dtype))
    N = x.shape[0] if x.ndim else 1
    if usually(draw):
        eps = draw(st.none() | hnp.arrays(np.dtype(dtype), st.sampled_from([(N, K), (1, N, K), (2, N, K)]),
                                          elements=st.floats(-8, 8, width=32)))
    else:
        eps = draw(hnp.arrays(st.sampled_from([np.dtype(dtype), np.dtype(np.float32), np.dtype(np.float64)]),
                              st.sampled_from([(N, K), (2, N, K), (2, 3, K), (0, N, K), (N, K + 1)]),
                              elements=st.floats(-8, 8, width=32) | st.sampled_from([math.nan, math.inf])))
    if usually(draw):
        beta = draw(st.floats(0, 1000) | st.integers(0, 3))
    else:   # refused: negative, NaN, Inf, not a number (a huge finite beta overflows: see the docstring)
        beta = draw(st.floats(max_value=-1e-300) | st.sampled_from([math.nan, math.inf, -math.inf, None, "1", True])
                    | st.integers(-2, -1))
    if usually(draw):
        n_samples = draw(st.integers(1, 3))
    else:
        n_samples = draw(st.integers(-2, 0) | st.floats(-2, 3) | st.sampled_from([None, True, "2"]))
    return model, x, eps, beta, n_samples


def finite(value):
    array = minivae.to_numpy(value)
    return bool(np.isfinite(array).all())


@FUZZ
@given(calls())
def test_loss_and_grads_refuses_or_is_finite(call):
    model, x, eps, beta, n_samples = call
    try:
        loss, grads = model.loss_and_grads(x, eps=eps, n_samples=n_samples, beta=beta)
    except (InputError, ValueError) as error:
        assert str(error)                                           # a message, not a bare error
        return
    assert math.isfinite(loss) and finite(grads.flat)
    assert x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] == D and x.dtype == model.dtype


@FUZZ
@given(calls(), st.sampled_from(["encode", "reconstruct", "elbo_per_example"]))
def test_inference_refuses_or_is_finite(call, method):
    model, x, *_ = call
    try:
        result = getattr(model, method)(x)
    except (InputError, ValueError) as error:
        assert str(error)
        return
    for array in result if isinstance(result, tuple) else (result,):
        assert finite(array)


@FUZZ
@given(calls(), st.sampled_from([1, 2]))
def test_train_step_with_value_checks_refuses_or_is_finite(call, threads):
    model, x, eps, beta, n_samples = call
    model = minivae.VAE(**model.config, seed=0)                    # a fresh model: steps change it
    before = minivae.to_numpy(model.flat_params).copy()
    try:
        step = minivae.TrainStep(model, minivae.Adam(model.params), n_samples=n_samples,
                                 check_values=True, threads=threads)
        terms = step(x, beta=beta, eps=eps)
    except (InputError, ValueError) as error:
        assert str(error)
        np.testing.assert_array_equal(minivae.to_numpy(model.flat_params), before)   # nothing changed
        return
    assert finite(terms.loss) and finite(model.flat_params)


@settings(max_examples=60, deadline=DEADLINE, derandomize=True, database=None)
@given(st.one_of(st.integers(-3, 6), st.floats(-3, 6), st.sampled_from([math.nan, math.inf, -math.inf]),
                 st.none(), st.booleans(), st.text(max_size=3)),
       st.lists(st.one_of(st.integers(-2, 6), st.floats(-2, 6)), max_size=3),
       st.sampled_from(["float32", "float64", "float16", "int8", None, "x"]),
       st.sampled_from(["numpy", "strict", "nope", None, ""]))
def test_construction_refuses_or_builds_a_working_model(latent_dim, hidden, dtype, backend):
    """Sizes stay small: a float such as 1e9 is an integral, valid latent_dim, and that model
    allocates what it asks for, gigabytes (the suite's worker was killed for memory when any
    float could be drawn)."""
    try:
        model = minivae.VAE(D, hidden, latent_dim, dtype=dtype, backend=backend, seed=0)
    except (InputError, ValueError) as error:
        assert str(error)
        return
    x = model.backend.to_device(np.full((2, D), 0.5, dtype=model.dtype))
    assert math.isfinite(model.loss(x))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_fuzz_reaches_both_outcomes(likelihood):
    """The generators are not degenerate: a valid call exists among what they draw (checked on
    one hand-made example of each kind), and so do refusals."""
    model = MODELS[likelihood, "float64"]
    x = np.full((3, D), 0.25)
    loss, _ = model.loss_and_grads(np.asfortranarray(x), n_samples=2, beta=0.5)
    assert math.isfinite(loss)
    with pytest.raises(InputError):
        model.loss_and_grads(x.astype(np.float16))
