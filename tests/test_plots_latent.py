"""The latent codes behind traversals.png and interpolations.png are what the pictures say."""
import numpy as np

from minivae.plots import interpolation_latents, traversal_latents


def test_a_traversal_changes_one_dimension_per_row():
    z = np.array([0.5, -1.0, 2.0])
    values = np.linspace(-3, 3, 5)
    codes = traversal_latents(z, [2, 0], values)
    assert codes.shape == (2, 5, 3)
    np.testing.assert_array_equal(codes[0, :, 2], values)
    np.testing.assert_array_equal(codes[0, :, :2], np.broadcast_to(z[:2], (5, 2)))
    np.testing.assert_array_equal(codes[1, :, 0], values)
    np.testing.assert_array_equal(codes[1, :, 1:], np.broadcast_to(z[1:], (5, 2)))


def test_an_interpolation_is_a_straight_path_between_the_endpoints():
    a, b = np.array([[0.0, 1.0], [2.0, 2.0]]), np.array([[1.0, -1.0], [2.0, 0.0]])
    codes = interpolation_latents(a, b, 5)
    assert codes.shape == (2, 5, 2)
    np.testing.assert_array_equal(codes[:, 0], a)
    np.testing.assert_array_equal(codes[:, -1], b)
    np.testing.assert_allclose(np.diff(codes, axis=1), np.broadcast_to(((b - a) / 4)[:, None], (2, 4, 2)))
