"""Training end to end: the loop, one step, checkpoints, evaluation, and the data.

``loop`` (:class:`Trainer`, :class:`TrainConfig`), ``step`` (:class:`TrainStep`: the fast path,
or the reference where the fast path does not apply), ``checkpoint`` (atomic ``.npz`` files, no
pickle), ``evaluate`` (held-out -ELBO, IWAE_k, latent statistics) and ``data`` (the IDX format,
where files come from, preprocessing).
"""
