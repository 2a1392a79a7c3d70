"""log 2 pi and log-sum-exp: one definition each, stable, and the chunked log-sum-exp equal to the
one-shot one."""
import math

import numpy as np
import pytest
from scipy import special

import minivae
from minivae.fast import engine
from minivae.ops import latent, likelihoods, numerics
from minivae.study import posterior


def test_one_log_2pi_everywhere():
    assert numerics.LOG_2PI == math.log(2 * math.pi)
    for module in (latent, likelihoods, engine):
        assert module.LOG_2PI is numerics.LOG_2PI, module.__name__


def test_one_logsumexp_everywhere():
    assert posterior.logsumexp is numerics.logsumexp


def values_with_infinities(rng):
    """(12, 4): large magnitudes (exp overflows without the shift), a column that is -inf in its
    first rows only, and a column that is -inf everywhere (the log of an empty sum)."""
    a = rng.standard_normal((12, 4)) * 300.0
    a[:5, 1] = -np.inf
    a[:, 2] = -np.inf
    return a


def test_logsumexp_matches_scipy(backend, rng):
    a = values_with_infinities(rng)
    on_device = backend.to_device(a)
    for axis in (0, 1, None):
        out = numerics.logsumexp(on_device, axis=axis)
        expected = special.logsumexp(a, axis=axis)
        assert out.shape == np.shape(expected)
        np.testing.assert_allclose(minivae.to_numpy(out), expected, rtol=1e-14)


@pytest.mark.parametrize("cuts", [(), (1,), (3, 4, 9), (5, 11)])
def test_running_logsumexp_equals_the_one_shot_one(cuts, backend, rng):
    """Chunks along the first axis, merged with the running (max, sum) update, give logsumexp."""
    a = values_with_infinities(rng)
    on_device = backend.to_device(a)
    state = None
    for start, stop in zip((0, *cuts), (*cuts, a.shape[0])):
        state = numerics.logsumexp_update(on_device[start:stop], state)
    out = numerics.logsumexp_value(state)
    assert out.shape == (4,)
    np.testing.assert_allclose(minivae.to_numpy(out), special.logsumexp(a, axis=0), rtol=1e-14)
