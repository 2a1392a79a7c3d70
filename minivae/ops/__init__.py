"""The reference math: each op a forward beside its backward, stateless, on any array module.

``layers`` (the affine map and the activations, registered by name), ``likelihoods`` (the decoder's
p(x | z), registered by name), ``latent`` (the reparameterization, the KL term, Gaussian
log-densities) and ``numerics`` (log 2 pi, log-sum-exp). :class:`minivae.VAE` composes them;
every backward is derived in docs/gradients.md and checked by finite differences in tests/ops/.
"""
