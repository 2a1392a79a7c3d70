"""Study tools built on the public :class:`minivae.VAE` methods.

``estimators`` (reparameterization against score-function gradients, their variance) and
``posterior`` (exact log p(x), the posterior and the ELBO gap on a 2-D latent grid).
"""
