"""Pictures: image grids, the latent space, training curves, gradient and latent monitoring.

Every function takes host data (arrays go through :func:`minivae.to_numpy` first), draws one
figure with matplotlib's object-oriented API on the Agg canvas (no display, no pyplot state), and
saves it to ``path`` (:mod:`minivae.plots.style`: matplotlib only when a plot is made).
"""
from __future__ import annotations

import math

import numpy as np

from minivae.backend import to_numpy
from minivae.plots.style import figure as new_figure
from minivae.plots.style import save


def tile(images, rows, columns, side=28, padding=1) -> np.ndarray:
    """Images ``(n, side * side)`` -> one ``(rows (side + padding), columns (side + padding))``
    mosaic, row-major, blank where ``n < rows * columns``."""
    images = to_numpy(images).reshape(-1, side, side)
    cell = side + padding
    mosaic = np.ones((rows * cell - padding, columns * cell - padding), dtype=np.float64)
    for index, image in enumerate(images[:rows * columns]):
        r, c = divmod(index, columns)
        mosaic[r * cell:r * cell + side, c * cell:c * cell + side] = image
    return mosaic


def _image(axes, mosaic, title):
    axes.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()


def plot_reconstructions(x, x_reconstructed, path, title="reconstructions", columns=16, pairs=2):
    """Inputs above, their reconstructions below: ``pairs`` row pairs of ``columns`` images each."""
    x, x_reconstructed = to_numpy(x), to_numpy(x_reconstructed)
    n = min(len(x), columns * pairs)
    width = columns * 29 - 1                     # tile()'s width: 28 pixels + 1 of padding
    blocks = []
    for start in range(0, n, columns):
        chunk = slice(start, min(n, start + columns))
        if blocks:
            blocks.append(np.ones((6, width)))      # a gap between two input/output pairs
        blocks += [tile(x[chunk], 1, columns), np.ones((1, width)), tile(x_reconstructed[chunk], 1, columns)]
    mosaic = np.vstack(blocks)
    figure = new_figure(columns * 0.45, 2 * pairs * 0.5 + 0.5)
    _image(figure.add_subplot(), mosaic, f"{title}\n(rows alternate: input, reconstruction)")
    return save(figure, path)


def plot_samples(images, path, title="samples from the prior", columns=10):
    """A grid of images (n, 784), e.g. decoded draws z ~ N(0, I)."""
    images = to_numpy(images)
    rows = math.ceil(len(images) / columns)
    figure = new_figure(columns * 0.5, rows * 0.5 + 0.4)
    _image(figure.add_subplot(), tile(images, rows, columns), title)
    return save(figure, path)


def plot_manifold(images, path, title="decoded latent grid"):
    """Images (n, n, 784) decoded from an n x n grid of z values (2-D latent space)."""
    images = to_numpy(images)
    n = images.shape[0]
    figure = new_figure(8, 8.3)
    _image(figure.add_subplot(), tile(images.reshape(n * n, -1), n, n, padding=0), title)
    return save(figure, path)


def traversal_latents(z, order, values):
    """The latent codes of a traversal: for each dimension j of ``order`` (a row), ``z`` (K,) with
    z_j replaced by each of ``values`` (a column). Host arrays: -> (len(order), len(values), K)."""
    z, values = to_numpy(z).astype(np.float64), np.asarray(values, dtype=np.float64)
    codes = np.broadcast_to(z, (len(order), len(values), z.shape[0])).copy()
    for row, j in enumerate(order):
        codes[row, :, j] = values
    return codes


def interpolation_latents(z_start, z_end, steps):
    """Straight paths z_a + t (z_b - z_a), t = 0 ... 1 in ``steps`` steps, one per row of
    ``z_start``, ``z_end`` (P, K): -> (P, steps, K) on the host."""
    z_start, z_end = to_numpy(z_start).astype(np.float64), to_numpy(z_end).astype(np.float64)
    t = np.linspace(0.0, 1.0, int(steps))[None, :, None]
    return z_start[:, None, :] + t * (z_end - z_start)[:, None, :]


def plot_traversals(images, kl, order, values, path, title="latent traversals"):
    """Images (rows, columns, 784): row r decodes z with dimension ``order[r]`` set to each of
    ``values`` and the others held; each row is labelled with its dimension and KL (nats)."""
    images = to_numpy(images)
    rows, columns = images.shape[:2]
    figure = new_figure(columns * 0.5 + 1.6, rows * 0.5 + 0.9)
    axes = figure.add_subplot()
    _image(axes, tile(images.reshape(rows * columns, -1), rows, columns), title)
    for c, v in enumerate(values):
        axes.text(14 + 29 * c, 29 * rows + 4, f"{v:+.1f}", ha="center", va="top", fontsize=6)
    for r, j in enumerate(order):
        axes.text(-4, 14 + 29 * r, f"z_{j}  KL {float(kl[j]):.2f}", ha="right", va="center", fontsize=6)
    axes.text(29 * columns / 2, 29 * rows + 22, "value of the traversed dimension (the others: the posterior "
              "mean of one test digit)", ha="center", va="top", fontsize=7)
    return save(figure, path)


def plot_interpolations(x_start, images, x_end, path, title="interpolations"):
    """One row per pair of test digits: the first digit, E[x | z] along the straight path between
    their posterior means (``images`` (P, steps, 784)), and the second digit."""
    x_start, images, x_end = to_numpy(x_start), to_numpy(images), to_numpy(x_end)
    P, steps = images.shape[:2]
    rows = np.concatenate([x_start[:, None], images, x_end[:, None]], axis=1)     # (P, steps + 2, 784)
    figure = new_figure((steps + 2) * 0.55, P * 0.55 + 0.6)
    axes = figure.add_subplot()
    _image(axes, tile(rows.reshape(P * (steps + 2), -1), P, steps + 2), title)
    for column, text in [(0, "digit a"), (steps + 1, "digit b")]:
        axes.text(14 + 29 * column, 29 * P + 4, text, ha="center", va="top", fontsize=7)
    return save(figure, path)


def principal_components(mu, n_components=2):
    """Project rows of ``mu (N, K)`` onto their first principal components: (N, n_components).
    With K <= n_components the centred ``mu`` itself; columns that do not exist (K = 1, or fewer
    rows than components) are zeros."""
    mu = to_numpy(mu).astype(np.float64)
    centred = mu - mu.mean(axis=0)
    if mu.shape[1] <= n_components:
        points = centred
    else:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points = centred @ vt[:n_components].T
    missing = n_components - points.shape[1]
    return np.pad(points, ((0, 0), (0, missing))) if missing > 0 else points


def plot_latent(mu, labels, path, title="latent space", class_names=None):
    """Scatter of the posterior means coloured by class: ``mu`` itself when K = 2, otherwise its
    first two principal components (said on the axes)."""
    mu, labels = to_numpy(mu), to_numpy(labels)
    points = principal_components(mu)
    pca = mu.shape[1] > 2
    figure = new_figure(7, 6)
    axes = figure.add_subplot()
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7,
                           vmin=-0.5, vmax=9.5, rasterized=True)
    colorbar = figure.colorbar(scatter, ax=axes, ticks=range(10))
    if class_names:
        colorbar.ax.set_yticklabels(class_names, fontsize=8)
    axes.set_xlabel("principal component 1 of mu" if pca else "mu_1")
    axes.set_ylabel("principal component 2 of mu" if pca else "mu_2" if mu.shape[1] > 1 else "0 (a 1-D latent space)")
    axes.set_title(title, fontsize=9)
    return save(figure, path)


def _series(history, name):
    values = history.get(name, [])
    return [e for e, v in zip(history["epoch"], values) if v is not None], [v for v in values if v is not None]


def plot_curves(history, path, title="training"):
    """Negative ELBO, reconstruction and KL per epoch, training and held-out, in three panels."""
    figure = new_figure(13, 3.8)
    panels = [("neg_elbo", "-ELBO (nats)"), ("reconstruction", "reconstruction -log p(x|z)"),
              ("kl", "KL(q(z|x) || p(z))")]
    for index, (name, label) in enumerate(panels):
        axes = figure.add_subplot(1, 3, index + 1)
        for split, style in (("train", "-"), ("valid", "o-")):
            epochs, values = _series(history, f"{split}_{name}")
            if values:
                axes.plot(epochs, values, style, markersize=3,
                          label="training (mean over the epoch)" if split == "train" else "held-out")
        axes.set_xlabel("epoch")
        axes.set_title(label, fontsize=9)
        axes.grid(alpha=0.3)
        if axes.lines:                   # none with --epochs 0
            axes.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    return save(figure, path)


def plot_monitor(history, path, title="monitoring"):
    """Per-layer gradient norms (mean over the steps of each epoch), the KL of each latent
    dimension per epoch, and the number of active units."""
    figure = new_figure(14, 4)
    axes = figure.add_subplot(1, 3, 1)
    for layer, norms in history.get("grad_norm", {}).items():
        axes.plot(history["epoch"][-len(norms):], norms, label=layer)
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_title("gradient norm per layer", fontsize=9)
    if axes.lines:
        axes.legend(fontsize=7)
    axes.grid(alpha=0.3)

    axes = figure.add_subplot(1, 3, 2)
    kl = np.asarray(history.get("kl_per_dim") or [[0.0]], dtype=np.float64)
    epochs = history["epoch"][-len(kl):] if history.get("kl_per_dim") else [0]
    image = axes.imshow(kl.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, kl.shape[1] - 0.5))
    figure.colorbar(image, ax=axes, label="nats")
    axes.set_xlabel("epoch")
    axes.set_ylabel("latent dimension")
    axes.set_title("KL per latent dimension", fontsize=9)

    axes = figure.add_subplot(1, 3, 3)
    active = history.get("active_units", [])
    axes.plot(history["epoch"][-len(active):] if active else [], active, "o-", markersize=3)
    axes.set_xlabel("epoch")
    axes.set_title("active units (Var_x E[z_j|x] > 0.01)", fontsize=9)
    axes.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    return save(figure, path)
