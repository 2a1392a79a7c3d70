"""Preprocessing: uint8 images to float rows in [0, 1], and the binarizations.

Preprocessing (:func:`preprocess`; the images become float32 rows of 784 values in [0, 1]):

``"none"``
    continuous intensities ``pixel / 255``, fitted with a Bernoulli decoder as in PyTorch's
    examples/vae. Its "loss" is a cross-entropy, not the log-likelihood of a distribution over
    images: comparable to that example's printed test loss only, not to the literature's nats.
``"fixed"``
    thresholded once, ``pixel / 255 > 0.5``: a fixed binary data set, for quick repeatable runs.
    Easier than stochastic binarization (less noise to model): its nats are lower and not
    comparable to the published tables.
``"dynamic"``
    a fresh Bernoulli draw ``x ~ Bernoulli(pixel / 255)`` every epoch for the training set (see
    :mod:`minivae.training.loop`) and one fixed draw for the test set: the setting of the
    importance-weighted-autoencoder literature (Burda et al. 2016, Table 1: 86.76 nats for
    784-200-200-50 with k = 1), whose -log p(x) estimates (IWAE-5000 on the test set) are
    comparable to ours.

"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from minivae._types import Array
from minivae.backend import get_array_module

if TYPE_CHECKING:
    from minivae.backend import Random


PREPROCESSING = ("none", "fixed", "dynamic")


def to_unit_interval(images: npt.ArrayLike, dtype: npt.DTypeLike = "float32") -> np.ndarray:
    """uint8 images (N, H, W) -> host rows (N, H W) of intensities ``pixel / 255`` in [0, 1]."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(dtype) / 255.0


def binarize_fixed(x: Array, threshold: float = 0.5) -> Array:
    """``1[x > threshold]`` in ``x``'s dtype, on ``x``'s device. (N, D) -> (N, D)."""
    return (x > threshold).astype(x.dtype)


def binarize_dynamic(x: Array, random: Random, out: Array | None = None, draws: Array | None = None) -> Array:
    """One Bernoulli draw per pixel, ``x_bin ~ Bernoulli(x)``: ``1[u < x]``, ``u ~ U[0, 1)``.

    ``random`` is a :class:`minivae.backend.Random` on ``x``'s device. (N, D) -> (N, D). ``out``
    (may be ``x`` itself) and ``draws`` (for u), arrays like ``x``, are reused where given: a
    training loop that binarizes 47 million pixels every epoch allocates nothing (fresh arrays of
    that size cost more in page faults than the draws). The same values either way.
    """
    xp = get_array_module(x)
    u = random.uniform(x.shape, x.dtype, out=draws)
    if out is None:
        out = xp.empty_like(x)
    return xp.less(u, x, out=out)   # 1.0 or 0.0 in x's dtype


def preprocess(images: npt.ArrayLike, binarize: str = "none", threshold: float = 0.5,
               dtype: npt.DTypeLike = "float32") -> np.ndarray:
    """uint8 images -> host float rows in [0, 1] for ``binarize`` = ``"none"`` or ``"fixed"``.

    ``"dynamic"`` returns the intensities unchanged: the binarization is drawn later, on the
    device (every epoch by the trainer, once for a test set with :func:`binarize_dynamic`).
    """
    if binarize not in PREPROCESSING:
        raise ValueError(f"binarize must be one of {PREPROCESSING}, got {binarize!r}")
    x = to_unit_interval(images, dtype)
    return binarize_fixed(x, threshold) if binarize == "fixed" else x
