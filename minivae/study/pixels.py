"""Pixel space is a poor place to measure similarity: a digit moved by one pixel is "farther" from
itself than the same digit with a part cut away.

The functions make the two edits of the argument, for batches of square images (N, side^2), with
the array module of the data (host or device):

* :func:`shift` moves every image by (dx, dy) pixels, filling with 0 (the background);
* :func:`cut_away` erases the bottom ``fraction`` of each digit's ink rows (its bounding box);
* :func:`squared_error` is sum_d (a_d - b_d)^2 per image;
* :func:`decoder_nll` is -log p(x' | z) of a model's decoder at z = mu(x), the encoder's mean of
  the *original* image, for edited images x': how surprised the decoder's likelihood is by each edit.

A Gaussian decoder's -log p is the squared error scaled by 1/(2 variance) plus a constant, so it
inherits the ordering exactly; a Bernoulli decoder's is per-pixel cross-entropy, also a sum over
pixels of a cost that knows nothing of neighbours.
"""
from __future__ import annotations

from minivae._types import Array
from minivae.backend import get_array_module
from minivae.model import VAE


def shift(x: Array, side: int, dx: int = 1, dy: int = 0) -> Array:
    """Every image moved dx pixels right and dy down (negative: left, up), zero-filled. (N, side^2)."""
    xp = get_array_module(x)
    images = x.reshape(-1, side, side)
    out = xp.zeros_like(images)
    rows_to, rows_from = (slice(dy, side), slice(0, side - dy)) if dy >= 0 else (slice(0, side + dy), slice(-dy, side))
    cols_to, cols_from = (slice(dx, side), slice(0, side - dx)) if dx >= 0 else (slice(0, side + dx), slice(-dx, side))
    out[:, rows_to, cols_to] = images[:, rows_from, cols_from]
    return out.reshape(x.shape)


def cut_away(x: Array, side: int, fraction: float = 0.2) -> Array:
    """Each image with the bottom ``fraction`` of its ink rows set to 0: if the digit spans rows
    lo..hi, rows from hi + 1 - round(fraction (hi + 1 - lo)) down are erased. (N, side^2)."""
    xp = get_array_module(x)
    images = x.reshape(-1, side, side)
    has_ink = images.max(axis=2) > 0.0                                         # (N, side)
    rows = xp.arange(side)
    lo = xp.argmax(has_ink, axis=1)
    hi = side - 1 - xp.argmax(has_ink[:, ::-1], axis=1)
    start = hi + 1 - xp.rint(fraction * (hi + 1 - lo)).astype(lo.dtype)
    keep = rows[None, :] < start[:, None]                                      # (N, side)
    return (images * keep[:, :, None]).reshape(x.shape)


def squared_error(a: Array, b: Array) -> Array:
    """sum_d (a_d - b_d)^2 per row: (N, D) x2 -> (N,)."""
    residual = a - b
    return (residual * residual).sum(axis=-1)


def decoder_nll(model: VAE, x: Array, edited: Array) -> Array:
    """-log p(edited | z = mu(x)) per image under the model's decoder: x, edited (N, D) -> (N,)."""
    mu, _ = model.encode(x)
    return -model.log_likelihood(edited, mu[None])[0]
