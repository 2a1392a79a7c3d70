"""The seed's argument, on real MNIST test digits: a digit shifted by one pixel has a larger
squared error to itself than the same digit with a part cut away. The edits are what they say."""
import numpy as np
import pytest

import minivae
from minivae.study import pixels


@pytest.fixture(scope="module")
def digits():
    test = minivae.load_dataset("mnist", "test", download=False, verbose=False)
    return test.images[:1000].reshape(1000, -1).astype(np.float64) / 255.0


def test_a_one_pixel_shift_costs_more_than_a_cut(digits):
    se_shift = pixels.squared_error(digits, pixels.shift(digits, 28))
    for fraction, share in [(0.1, 1.0), (0.15, 0.95), (0.2, 0.8)]:
        se_cut = pixels.squared_error(digits, pixels.cut_away(digits, 28, fraction))
        assert (se_shift > se_cut).mean() >= share, fraction
    se_cut = pixels.squared_error(digits, pixels.cut_away(digits, 28, 0.2))
    assert np.median(se_shift / se_cut) > 1.5                       # measured: 1.97
    # the other way round too: up, down and left
    for dx, dy in [(-1, 0), (0, 1), (0, -1)]:
        moved = pixels.squared_error(digits, pixels.shift(digits, 28, dx, dy))
        assert (moved > se_cut).mean() > 0.75, (dx, dy)


def test_the_cut_removes_a_real_part_and_the_shift_keeps_the_ink(digits):
    cut = pixels.cut_away(digits, 28, 0.2)
    ink, ink_cut = digits.sum(axis=1), cut.sum(axis=1)
    assert np.all(ink_cut < ink) and np.median(1 - ink_cut / ink) > 0.1       # ~10-20% of the ink gone
    shifted = pixels.shift(digits, 28)
    inside = digits.reshape(-1, 28, 28)[:, :, -1].sum(axis=1) == 0          # not touching the right edge
    assert inside.mean() > 0.95
    np.testing.assert_allclose(shifted.sum(axis=1)[inside], ink[inside])      # the same ink, moved


def test_the_edits_on_a_small_image():
    x = np.arange(1.0, 10.0).reshape(1, 9)
    np.testing.assert_array_equal(pixels.shift(x, 3, 1, 0).reshape(3, 3), [[0, 1, 2], [0, 4, 5], [0, 7, 8]])
    np.testing.assert_array_equal(pixels.shift(x, 3, -1, 1).reshape(3, 3), [[0, 0, 0], [2, 3, 0], [5, 6, 0]])
    image = np.zeros((1, 5, 5))
    image[0, 1:5, 2] = 1.0                                    # ink in rows 1..4: cut the bottom half
    np.testing.assert_array_equal(pixels.cut_away(image.reshape(1, 25), 5, 0.5).reshape(5, 5)[:, 2],
                                  [0, 1, 1, 0, 0])


def test_a_gaussian_decoders_nll_is_the_squared_error_to_its_mean(digits):
    model = minivae.VAE(784, [16], 2, likelihood="gaussian", decoder_variance=0.5, dtype="float64", seed=0)
    x = digits[:5]
    edited = pixels.shift(x, 28)
    mean = model.decode_mean(model.encode(x)[0])
    expected = pixels.squared_error(edited, mean) / (2 * 0.5) + 0.5 * 784 * np.log(2 * np.pi * 0.5)
    np.testing.assert_allclose(pixels.decoder_nll(model, x, edited), expected, rtol=1e-12)


def test_runs_on_the_strict_backend(digits):
    backend = minivae.get_backend("strict")
    x = backend.to_device(digits[:20])
    np.testing.assert_allclose(minivae.to_numpy(pixels.cut_away(x, 28, 0.2)), pixels.cut_away(digits[:20], 28, 0.2))
    np.testing.assert_allclose(minivae.to_numpy(pixels.shift(x, 28, 1, -1)), pixels.shift(digits[:20], 28, 1, -1))
