"""Figures for the study examples (gradient estimators, the ELBO gap, the prior ring).

Every function takes host NumPy arrays or device arrays (copied with :func:`minivae.to_numpy`, the
plotting edge), writes one PNG and returns its path. matplotlib is imported inside the functions
(:mod:`minivae.plots.style`): the core library never needs it.
"""
from __future__ import annotations

import math

import numpy as np

from minivae.backend import to_numpy
from minivae.plots.style import figure, save

COLORS = {"reparam": "tab:blue", "reparam_path": "tab:green", "score": "tab:red",
          "score_loo": "tab:orange"}
LABELS = {"reparam": "reparameterization", "reparam_path": "reparam., path derivative (STL)",
          "score": "score function", "score_loo": "score function + LOO baseline"}


# --- 1. gradient estimators ----------------------------------------------------------------------

def plot_gradient_variance(results, path, title=None):
    """``results``: ``{kl_form: {(estimator, L): EstimatorStatistics}}``; one row per KL form.

    Columns: total variance sum_p Var[g_p] against L (log-log; the dashed line has slope -1),
    the median and interquartile range over parameters of SNR_p = |E g_p| / sd(g_p), and the
    z-scores (mean - reference) / standard error of every parameter (N(0, 1) if unbiased).
    """
    rows = list(results)
    fig = figure(16, 4.6 * len(rows), layout=None)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for row, kl in zip(axes, rows):
        stats = results[kl]
        estimators = list(dict.fromkeys(est for est, _ in stats))
        ax_var, ax_snr, ax_z = row
        z_all = {}
        for est in estimators:
            Ls = sorted(L for e, L in stats if e == est)
            variance = [stats[(est, L)].total_variance for L in Ls]
            snr = [to_numpy(stats[(est, L)].snr) for L in Ls]
            snr = np.array([np.nanpercentile(s, [25, 50, 75]) for s in snr])
            ax_var.loglog(Ls, variance, "o-", color=COLORS[est], label=LABELS[est])
            ax_snr.loglog(Ls, snr[:, 1], "o-", color=COLORS[est], label=LABELS[est])
            ax_snr.fill_between(Ls, snr[:, 0], snr[:, 2], color=COLORS[est], alpha=0.15)
            z = np.concatenate([to_numpy(stats[(est, L)].z_scores) for L in Ls])
            z_all[est] = z[np.isfinite(z)]
        first = stats[next(iter(stats))]
        L_min, L_max = min(L for _, L in stats), max(L for _, L in stats)
        v0 = max(s.total_variance for s in stats.values())
        ax_var.loglog([L_min, L_max], [v0, v0 * L_min / L_max], "k--", lw=0.8, label="slope -1 (1/L)")
        ax_var.set(xlabel="samples L", ylabel="total variance  sum_p Var[g_p]",
                   title=f"kl={kl!r}: total variance against L")
        ax_snr.set(xlabel="samples L", ylabel="SNR_p = |grad_p| / sd(g_p)",
                   title="SNR per parameter (median, IQR band)")
        bins = np.linspace(-5, 5, 41)
        for est, z in z_all.items():
            ax_z.hist(z, bins=bins, density=True, histtype="step", lw=1.5, color=COLORS[est],
                      label=f"{LABELS[est]}: max |z| = {np.abs(z).max():.1f}")
        t = np.linspace(-5, 5, 201)
        ax_z.plot(t, np.exp(-t * t / 2) / math.sqrt(2 * math.pi), "k--", lw=0.8, label="N(0, 1)")
        ax_z.set(xlabel="(mean - reference) / standard error", ylabel="density",
                 title=f"z-scores vs reference, R = {first.n_repeats} (unbiased: N(0, 1))")
        for ax in row:
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    return save(fig, path)


def plot_gradient_clouds(clouds, reference, path, title=None):
    """Single-sample gradients with respect to mu (a 2-D latent): one scatter per estimator, on
    the same axes, with the true gradient (``reference``, 2 numbers) as a cross.

    ``clouds``: ``{estimator: (S, 2) array}`` of d loss / d mu for one example.
    """
    reference = to_numpy(reference)
    clouds = {est: to_numpy(c) for est, c in clouds.items()}
    radius = max(np.percentile(np.abs(c - reference), 99) for c in clouds.values())
    fig = figure(4.2 * len(clouds), 4.4, layout=None)
    axes = fig.subplots(1, len(clouds), squeeze=False)
    for ax, (est, cloud) in zip(axes[0], clouds.items()):
        spread = np.sqrt(((cloud - cloud.mean(axis=0)) ** 2).sum(axis=1).mean())
        ax.scatter(cloud[:, 0], cloud[:, 1], s=3, alpha=0.4, color=COLORS.get(est, "k"))
        ax.plot(*reference, "k+", ms=14, mew=2, label="true gradient")
        ax.set(xlim=(reference[0] - radius, reference[0] + radius),
               ylim=(reference[1] - radius, reference[1] + radius), aspect="equal",
               xlabel="d loss / d mu_1", ylabel="d loss / d mu_2",
               title=f"{LABELS.get(est, est)}\nrms spread {spread:.3g}")
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save(fig, path)


# --- 2. the ELBO gap -----------------------------------------------------------------------------

def _zoom(z1, z2, densities, fraction=1e-4):
    """The sub-box where any of the densities exceeds ``fraction`` of its maximum, with a margin."""
    mask = np.zeros(densities[0].shape, dtype=bool)
    for d in densities:
        mask |= d >= fraction * d.max()
    i, j = mask.any(axis=1).nonzero()[0], mask.any(axis=0).nonzero()[0]
    lo1, hi1, lo2, hi2 = z1[i.min()], z1[i.max()], z2[j.min()], z2[j.max()]
    half = 0.6 * max(hi1 - lo1, hi2 - lo2)
    c1, c2 = 0.5 * (lo1 + hi1), 0.5 * (lo2 + hi2)
    return (c1 - half, c1 + half), (c2 - half, c2 + half)


def plot_elbo_gap(x, image_side, grid, gap, path, title=None):
    """One row per example: the data x, the true posterior p(z|x) on the grid, q(z|x) on the same
    axes (the other's contours dashed), and log p(x) = ELBO + KL(q || p(z|x)) in numbers.

    ``grid``: a :class:`minivae.study.posterior.LatentGrid`; ``gap``: the matching ``ElboGap``.
    """
    from minivae.study.posterior import log_posterior
    x = to_numpy(x)
    z1, z2 = to_numpy(grid.z1), to_numpy(grid.z2)
    posterior = np.exp(to_numpy(log_posterior(grid)))
    q = np.exp(to_numpy(grid.log_q))
    numbers = gap.as_floats()
    N = x.shape[0]
    fig = figure(11, 3.6 * N, layout=None)
    axes = fig.subplots(N, 3, squeeze=False,
                      gridspec_kw={"width_ratios": [0.6, 1, 1], "hspace": 0.45})
    for n in range(N):
        ax_x, ax_p, ax_q = axes[n]
        ax_x.imshow(x[n].reshape(image_side, image_side), cmap="gray_r", vmin=0, vmax=1)
        ax_x.set(xticks=[], yticks=[], title=f"x_{n}")
        xlim, ylim = _zoom(z1[n], z2[n], [posterior[n], q[n]])
        extent = (z1[n][0], z1[n][-1], z2[n][0], z2[n][-1])
        for ax, density, other, name in [(ax_p, posterior[n], q[n], "true posterior p(z|x)"),
                                         (ax_q, q[n], posterior[n], "encoder q(z|x)")]:
            ax.imshow(density.T, origin="lower", extent=extent, cmap="viridis")
            levels = other.max() * np.array([0.05, 0.3, 0.7])
            ax.contour(z1[n], z2[n], other.T, levels=levels, colors="w", linewidths=0.7,
                       linestyles="dashed")
            ax.set(xlim=xlim, ylim=ylim, xlabel="z_1", ylabel="z_2", aspect="equal",
                   title=f"{name}\n(dashed: contours of the other)")
        text = (f"log p(x)        = {numbers['log_px'][n]:9.4f}\n"
                f"ELBO            = {numbers['elbo'][n]:9.4f}\n"
                f"KL(q || p(z|x)) = {numbers['kl_posterior'][n]:9.4f}\n"
                f"residual        = {numbers['residual'][n]:9.1e}")
        ax_q.text(0.02, 0.02, text, transform=ax_q.transAxes, family="monospace", fontsize=7.5,
                  color="w", va="bottom", bbox={"facecolor": "k", "alpha": 0.5, "lw": 0})
    if title:
        fig.suptitle(title)
    return save(fig, path)


def plot_iwae(ks, iwae, iwae_se, log_px, kl_posterior, path, title=None):
    """The gap log p(x) - IWAE_k against k, per example, with 2-standard-error bars. At k = 1 the
    expected gap is KL(q || p(z|x)) exactly (drawn as open circles); it shrinks roughly as 1/k.

    Shapes: ks (M,), iwae and iwae_se (M, N), log_px and kl_posterior (N,).
    """
    iwae, iwae_se = to_numpy(iwae), to_numpy(iwae_se)
    log_px, kl_posterior = to_numpy(log_px), to_numpy(kl_posterior)
    ks = np.asarray(ks)
    fig = figure(12, 4.5, layout=None)
    ax, ax_log = fig.subplots(1, 2)
    for n in range(iwae.shape[1]):
        color = f"C{n % 10}"
        gap = log_px[n] - iwae[:, n]
        ax.errorbar(ks, gap, yerr=2 * iwae_se[:, n], fmt="o-", color=color, capsize=3,
                    label=f"x_{n}: log p(x) = {log_px[n]:.3f}")
        ax.plot([1], [kl_posterior[n]], "o", mfc="none", ms=12, color=color)
        ax_log.loglog(ks, np.where(gap > 0, gap, np.nan), "o-", color=color)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="k (importance samples)", ylabel="log p(x) - IWAE_k  (nats)",
           title="IWAE_k rises to log p(x)")
    ax.plot([], [], "o", mfc="none", ms=12, color="k", label="exact KL(q || p(z|x)): the gap at k = 1")
    guide = kl_posterior.max() / ks
    ax_log.loglog(ks, guide, "k--", lw=0.8, label="slope -1")
    ax_log.set(xlabel="k", ylabel="gap (log scale; non-positive estimates omitted)",
               title="the gap shrinks like 1/k")
    for a in (ax, ax_log):
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)


# --- 3. the prior ring ---------------------------------------------------------------------------

def plot_prior_ring(z, g, path, title=None):
    """Left: samples z ~ N(0, I); right: g(z) = z / 10 + z / ||z||, a ring. Colour: the angle of z,
    so one sees where each part of the Gaussian goes."""
    z, g = to_numpy(z), to_numpy(g)
    angle = np.arctan2(z[:, 1], z[:, 0])
    fig = figure(10, 5, layout=None)
    ax_z, ax_g = fig.subplots(1, 2)
    ax_z.scatter(z[:, 0], z[:, 1], c=angle, cmap="hsv", s=2, alpha=0.6)
    ax_z.set(title="z ~ N(0, I)  (the prior)", xlabel="z_1", ylabel="z_2")
    ax_g.scatter(g[:, 0], g[:, 1], c=angle, cmap="hsv", s=2, alpha=0.6)
    ax_g.set(title="g(z) = z / 10 + z / ||z||  (a ring)", xlabel="g_1", ylabel="g_2")
    for ax in (ax_z, ax_g):
        ax.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save(fig, path)


# --- 4. the SNR of IWAE gradient estimates against k ---------------------------------------------

IWAE_COLORS = {"reparam": "tab:red", "stl": "tab:green", "dreg": "tab:blue"}
IWAE_LABELS = {"reparam": "IWAE, reparameterization", "stl": "STL (sticking the landing)",
               "dreg": "DReG (doubly reparameterized)"}


def plot_iwae_snr(results, path, title=None):
    """Log-log SNR of the encoder's (left) and the decoder's (right) gradient estimates against k.

    ``results``: ``{(estimator, k): SNRStatistics}`` (:func:`minivae.study.tighter.gradient_snr`).
    Solid: the network's SNR as one vector (noise-debiased; a point is omitted where the signal is
    not resolved); dotted: the median per-parameter SNR. Dashed grey: slopes -1/2 and +1/2.
    """
    estimators = list(dict.fromkeys(est for est, _ in results))
    ks = sorted({k for _, k in results})
    fig = figure(12, 4.8, layout=None)
    axes = fig.subplots(1, 2)
    for ax, network in zip(axes, ("encoder", "decoder")):
        for est in estimators:
            snr = np.array([results[(est, k)].network_snr[network] for k in ks])
            median = np.array([results[(est, k)].median_snr[network] for k in ks])
            ax.loglog(ks, np.where(snr > 0, snr, np.nan), "o-", color=IWAE_COLORS.get(est, "k"),
                      label=IWAE_LABELS.get(est, est))
            ax.loglog(ks, median, ":", color=IWAE_COLORS.get(est, "k"), lw=1)
        reference = results[(estimators[0], ks[0])].network_snr[network]
        k = np.array([ks[0], ks[-1]], dtype=np.float64)
        for slope in (-0.5, 0.5):
            ax.loglog(k, reference * (k / k[0]) ** slope, "--", color="0.5", lw=0.8)
        ax.plot([], [], "--", color="0.5", lw=0.8, label="slopes -1/2, +1/2")
        ax.plot([], [], ":", color="k", lw=1, label="median per-parameter SNR")
        ax.set(xlabel="k (importance samples)", ylabel="SNR = ||E g|| / sqrt(sum Var g)",
               title=f"{network}'s gradient")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)


# --- 5. the inference gap, split -----------------------------------------------------------------

def plot_inference_gap(x, image_side, grid, gap, path, title=None):
    """One row per example: the digit, the true posterior p(z|x), the encoder's q and the best
    Gaussian q* (each with the posterior's contours dashed), and the split of the gap in numbers.

    ``grid``: the :class:`minivae.study.posterior.LatentGrid`; ``gap``: the matching
    :class:`minivae.study.inference.InferenceGap`.
    """
    from minivae.study.posterior import log_gaussian_on_grid, log_posterior
    x = to_numpy(x)
    z1, z2 = to_numpy(grid.z1), to_numpy(grid.z2)
    posterior = np.exp(to_numpy(log_posterior(grid)))
    q = np.exp(to_numpy(grid.log_q))
    q_opt = np.exp(to_numpy(log_gaussian_on_grid(grid, gap.mu_optimal, gap.logvar_optimal)))
    numbers = gap.as_floats()
    N = x.shape[0]
    fig = figure(14.5, 3.5 * N, layout=None)
    axes = fig.subplots(N, 4, squeeze=False, gridspec_kw={"width_ratios": [0.6, 1, 1, 1], "hspace": 0.45})
    for n in range(N):
        ax_x, *density_axes = axes[n]
        ax_x.imshow(x[n].reshape(image_side, image_side), cmap="gray_r", vmin=0, vmax=1)
        ax_x.set(xticks=[], yticks=[], title=f"x_{n}")
        xlim, ylim = _zoom(z1[n], z2[n], [posterior[n], q[n], q_opt[n]])
        extent = (z1[n][0], z1[n][-1], z2[n][0], z2[n][-1])
        levels = posterior[n].max() * np.array([0.05, 0.3, 0.7])
        for ax, density, name in [(density_axes[0], posterior[n], "true posterior p(z|x)"),
                                  (density_axes[1], q[n], "encoder's q(z|x)"),
                                  (density_axes[2], q_opt[n], "best Gaussian q*(z)")]:
            ax.imshow(density.T, origin="lower", extent=extent, cmap="viridis")
            ax.contour(z1[n], z2[n], posterior[n].T, levels=levels, colors="w", linewidths=0.7,
                       linestyles="dashed")
            ax.set(xlim=xlim, ylim=ylim, xlabel="z_1", ylabel="z_2", aspect="equal",
                   title=f"{name}\n(dashed: p(z|x))")
        text = (f"log p(x)      = {numbers['log_px'][n]:9.3f}\n"
                f"ELBO(q*)      = {numbers['elbo_optimal'][n]:9.3f}\n"
                f"ELBO(encoder) = {numbers['elbo_encoder'][n]:9.3f}\n"
                f"approximation = {numbers['approximation'][n]:9.3f}\n"
                f"amortization  = {numbers['amortization'][n]:9.3f}")
        density_axes[2].text(0.02, 0.02, text, transform=density_axes[2].transAxes, family="monospace",
                             fontsize=7.5, color="w", va="bottom",
                             bbox={"facecolor": "k", "alpha": 0.5, "lw": 0})
    if title:
        fig.suptitle(title)
    return save(fig, path)


# --- 6. pixel space: a shift costs more than a cut ----------------------------------------------

def plot_pixel_space(examples, fractions, shift_wins, samples, path, side=28, title=None):
    """Top left: for a few digits, the digit, it shifted by one pixel, and it with a part cut away,
    each titled with its squared error to the digit and the decoders' -log p(x' | z = mu(x)).
    Top right: the fraction of test digits whose shift costs more squared error than the cut,
    against the fraction of the digit cut away. Bottom: samples of the Gaussian-decoder and the
    Bernoulli-decoder VAE, side by side.

    ``examples``: list of dicts with ``images`` {"digit", "shifted", "cut"} (side^2,) and
    ``numbers`` {version: (squared error, Gaussian nll, Bernoulli nll)}; ``fractions``,
    ``shift_wins``: (F,); ``samples``: {"gaussian": (n, side^2), "bernoulli": (n, side^2)}.
    """
    from minivae.plots.training import tile
    n_examples = len(examples)
    fig = figure(15, 3.6 * n_examples + 6.5, layout=None)
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6 * n_examples, 6.5])
    left, right = top.subfigures(1, 2, width_ratios=[1.5, 1])
    axes = left.subplots(n_examples, 3, squeeze=False, gridspec_kw={"hspace": 0.6, "top": 0.88})
    names = {"digit": "the digit x", "shifted": "shifted 1 pixel right", "cut": "a part cut away"}
    for row, example in zip(axes, examples):
        for ax, version in zip(row, ("digit", "shifted", "cut")):
            ax.imshow(to_numpy(example["images"][version]).reshape(side, side), cmap="gray", vmin=0, vmax=1)
            se, gaussian, bernoulli = example["numbers"][version]
            ax.set_title(f"{names[version]}\nsq. error {se:.1f}\n-log p: Gauss {gaussian:.0f}, Bern {bernoulli:.0f}",
                         fontsize=8)
            ax.set(xticks=[], yticks=[])
    ax = right.subplots()
    ax.plot(100 * np.asarray(fractions), 100 * np.asarray(shift_wins), "o-", color="tab:red")
    ax.axhline(50, color="k", lw=0.8, ls="--")
    ax.set(xlabel="% of the digit's rows cut away (from the bottom)",
           ylabel="% of test digits: sq. error(shift 1 px) > sq. error(cut)",
           title="a 1-pixel shift is 'farther' than a cut", ylim=(0, 102))
    ax.grid(alpha=0.3)
    sample_axes = bottom.subplots(1, 2)
    for ax, name in zip(sample_axes, ("gaussian", "bernoulli")):
        images = to_numpy(samples[name])
        columns = int(math.ceil(math.sqrt(images.shape[0])))
        ax.imshow(tile(np.clip(images, 0, 1), int(math.ceil(images.shape[0] / columns)), columns, side=side),
                  cmap="gray", vmin=0, vmax=1)
        ax.set(xticks=[], yticks=[], title=f"samples E[x|z], z ~ N(0, I): {name} decoder")
    if title:
        fig.suptitle(title)
    return save(fig, path)
