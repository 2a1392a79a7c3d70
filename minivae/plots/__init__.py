"""Figures, in one style (:mod:`minivae.plots.style`): ``training`` (image grids, the latent space,
curves, monitoring) and ``study`` (gradient estimators, the ELBO gap, the prior ring).

Host data in, one PNG out; matplotlib is imported only when a figure is drawn.
"""
from minivae.plots.study import (plot_elbo_gap, plot_gradient_clouds, plot_gradient_variance, plot_iwae,
                                 plot_iwae_snr, plot_prior_ring)
from minivae.plots.training import (interpolation_latents, plot_curves, plot_interpolations, plot_latent,
                                    plot_manifold, plot_monitor, plot_reconstructions, plot_samples,
                                    plot_traversals, principal_components, tile, traversal_latents)

__all__ = ["plot_curves", "plot_latent", "plot_manifold", "plot_monitor", "plot_reconstructions",
           "plot_samples", "principal_components", "tile", "plot_traversals", "plot_interpolations",
           "traversal_latents", "interpolation_latents", "plot_elbo_gap", "plot_gradient_clouds",
           "plot_gradient_variance", "plot_iwae", "plot_iwae_snr", "plot_prior_ring"]
