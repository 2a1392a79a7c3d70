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
