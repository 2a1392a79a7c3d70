"""minivae: a variational autoencoder with every gradient written by hand and checked.

Public names only; see the modules for the math:
``layers`` (affine map, activations), ``likelihoods`` (Bernoulli/Gaussian NLL), ``gaussian``
(reparameterization, KL, log-densities), ``model`` (the VAE), ``optim`` (SGD, Adam),
``gradcheck`` (finite differences), ``backend`` (NumPy/CuPy/strict array modules).
"""
from minivae.backend import (Backend, BackendUnavailableError, get_array_module, get_backend,
                             set_backend, to_numpy)
from minivae.gradcheck import GradcheckReport, check_model_gradients, gradcheck, numeric_gradient
from minivae.model import VAE, LossTerms
from minivae.optim import SGD, Adam
from minivae.params import Parameters
from minivae.step import TrainStep
from minivae.validation import InputError

__version__ = "0.1.0"

__all__ = ["VAE", "LossTerms", "Adam", "SGD", "Parameters", "Backend", "BackendUnavailableError",
           "get_backend", "set_backend", "get_array_module", "to_numpy", "gradcheck",
           "check_model_gradients", "numeric_gradient", "GradcheckReport", "InputError", "TrainStep"]

# Study tools (issue 5): gradient estimators and the exact ELBO gap; figures in minivae.study_plots
# (matplotlib, imported on use). See docs/gradients.md and docs/study.md.
from minivae import estimators, posterior  # noqa: E402

__all__ += ["estimators", "posterior"]

# MNIST end to end (issue 7): data sets, the training loop, evaluation, checkpoints; figures in
# minivae.plots (matplotlib, imported on use). See docs/mnist.md and examples/mnist.py.
from minivae import data  # noqa: E402
from minivae.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from minivae.data import load_dataset  # noqa: E402
from minivae.evaluate import heldout_elbo, iwae_bound, latent_statistics  # noqa: E402
from minivae.train import TrainConfig, Trainer, TrainingDiverged, train  # noqa: E402

__all__ += ["data", "load_dataset", "Trainer", "TrainConfig", "TrainingDiverged", "train",
            "heldout_elbo", "iwae_bound", "latent_statistics", "save_checkpoint", "load_checkpoint",
            "load_model"]
