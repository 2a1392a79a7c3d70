"""minivae: a variational autoencoder with every gradient written by hand and checked.

Public names only; the math lives in the modules:
``layers`` (affine map, activations), ``likelihoods`` (Bernoulli/Gaussian NLL), ``gaussian``
(reparameterization, KL, log-densities), ``model`` (the VAE), ``optim`` (SGD, Adam), ``step`` and
``engine`` (the fast training step), ``gradcheck`` (finite differences), ``backend`` (NumPy, CuPy
and strict array modules), ``data``, ``train``, ``evaluate``, ``checkpoint`` (MNIST end to end),
``estimators`` and ``posterior`` (study tools). Figures live in ``plots`` and ``study_plots``
(matplotlib, imported only when a figure is drawn).
"""
from minivae import data, estimators, posterior
from minivae.backend import (Backend, BackendUnavailableError, get_array_module, get_backend,
                             set_backend, to_numpy)
from minivae.checkpoint import load_checkpoint, load_model, save_checkpoint
from minivae.data import load_dataset
from minivae.evaluate import heldout_elbo, iwae_bound, latent_statistics
from minivae.gradcheck import GradcheckReport, check_model_gradients, gradcheck, numeric_gradient
from minivae.model import VAE, LossTerms
from minivae.optim import SGD, Adam
from minivae.params import Parameters
from minivae.step import TrainStep
from minivae.train import TrainConfig, Trainer, TrainingDiverged, train
from minivae.validation import InputError

__version__ = "0.1.0"

__all__ = [
    "VAE", "LossTerms", "Parameters", "TrainStep", "Adam", "SGD",
    "Backend", "BackendUnavailableError", "get_backend", "set_backend", "get_array_module", "to_numpy",
    "gradcheck", "check_model_gradients", "numeric_gradient", "GradcheckReport", "InputError",
    "data", "load_dataset", "Trainer", "TrainConfig", "TrainingDiverged", "train",
    "heldout_elbo", "iwae_bound", "latent_statistics", "save_checkpoint", "load_checkpoint", "load_model",
    "estimators", "posterior",
]
