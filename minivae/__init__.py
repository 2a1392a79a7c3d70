"""minivae: a variational autoencoder with every gradient written by hand and checked.

Public names only; the architecture is in the subpackages:

* ``ops``      the reference math, each forward beside its backward: ``layers``, ``likelihoods``,
               ``latent``, ``numerics``;
* ``model``    the :class:`VAE` that composes the ops (``forward_backward`` is the whole backward);
* ``optim``    SGD and Adam; ``gradcheck`` finite differences; ``params`` the flat parameter vector;
* ``backend``  NumPy, CuPy and the strict CuPy stand-in, with their capabilities;
* ``fast``     the fused training step and its kernels, for the models it declares it supports;
* ``training`` the loop, :class:`TrainStep`, checkpoints, evaluation, the data;
* ``study``    gradient estimators, the posterior on a 2-D latent grid;
* ``plots``    the figures (matplotlib, imported only when a figure is drawn).
"""
from minivae.backend import Backend, BackendUnavailableError, get_array_module, get_backend, set_backend, to_numpy
from minivae.gradcheck import GradcheckReport, check_model_gradients, gradcheck, numeric_gradient
from minivae.model import VAE, LossTerms
from minivae.optim import SGD, Adam
from minivae.params import Parameters
from minivae.study import estimators, posterior
from minivae.training import data
from minivae.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from minivae.training.data import load_dataset
from minivae.training.evaluate import heldout_elbo, iwae_bound, latent_statistics
from minivae.training.loop import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted, train
from minivae.training.step import FastPathWarning, TrainStep
from minivae.validation import InputError

__version__ = "0.1.0"

__all__ = [
    "VAE", "LossTerms", "Parameters", "TrainStep", "FastPathWarning", "Adam", "SGD",
    "Backend", "BackendUnavailableError", "get_backend", "set_backend", "get_array_module", "to_numpy",
    "gradcheck", "check_model_gradients", "numeric_gradient", "GradcheckReport", "InputError",
    "data", "load_dataset", "Trainer", "TrainConfig", "TrainingDiverged", "TrainingInterrupted", "train",
    "heldout_elbo", "iwae_bound", "latent_statistics", "save_checkpoint", "load_checkpoint", "load_model",
    "estimators", "posterior",
]

from minivae import _compat  # noqa: E402  (after the names above: it aliases the old module paths)

_compat.install(__import__(__name__))
