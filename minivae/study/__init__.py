"""Study tools built on the public :class:`minivae.VAE` methods.

``estimators`` (reparameterization against score-function gradients, their variance),
``posterior`` (exact log p(x), the posterior and the ELBO gap on a 2-D latent grid),
``tighter`` (the SNR of IWAE_k gradient estimates against k), ``inference`` (the inference gap
split into approximation and amortization) and ``pixels`` (squared error against likelihoods in
pixel space).
"""
