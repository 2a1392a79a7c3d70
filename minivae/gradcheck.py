"""Finite-difference gradient checks: the proof that every hand-written backward is right.

Central differences in float64. The default is the fourth-order central stencil

    df/dp_i ~ [f(p - 2h e_i) - 8 f(p - h e_i) + 8 f(p + h e_i) - f(p + 2h e_i)] / (12 h),

whose truncation error is O(h^4), so h can be large (default 1e-4) and the rounding error,
O(eps_64 |f| / h), stays small too: a small VAE's gradients agree to ~1e-9. ``order=2`` gives the
classic (f(p + h e_i) - f(p - h e_i)) / (2h), error O(h^2). A perturbation of 2h that carries a
ReLU pre-activation across 0 breaks any finite difference, so the step is chosen per element or
direction by self-consistency (:func:`stable_difference`: h, h/10, ... until two estimates agree).

* Small tensors are checked element by element.
* Large tensors are checked along random directions d: the same stencil in t of f(p + t d) must
  equal <grad, d> (four loss evaluations per direction instead of four per element).

The relative error of a tensor is  max_i |a_i - n_i| / max(max_i |a_i|, max_i |n_i|)  (analytic a,
numeric n): an error measured against the tensor's own scale, so that entries that happen to be
near zero do not inflate it. For directions it is |<g, d> - n_d| / max(|<g, d>|, |n_d|).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from minivae._types import Array
from minivae.backend import get_array_module, to_numpy

if TYPE_CHECKING:
    from minivae.model import VAE


TINY = 1e-300


class Float32GradcheckError(ValueError):
    """Finite differences in float32 are too coarse to prove anything; use float64."""


def relative_error(analytic: npt.ArrayLike, numeric: npt.ArrayLike) -> float:
    """max |a - n| / max(max |a|, max |n|) for host arrays (0 when both are exactly zero)."""
    analytic, numeric = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0))
    if scale == 0.0:
        return 0.0
    return float(np.abs(analytic - numeric).max() / max(scale, TINY))


def _unit_roundoff(array):
    return float(np.finfo(array.dtype).eps)


def _refuse_float32(arrays, allow_float32):
    for array in arrays:
        if array.dtype != np.float64 and not allow_float32:
            raise Float32GradcheckError(
                f"gradient check on {array.dtype} data: finite differences need float64 "
                "(build the model with dtype='float64'), or pass allow_float32=True knowingly")


# (offset, weight) pairs: derivative ~ sum_k weight_k f(p + offset_k h d) / h
STENCILS = {2: ((-1, -0.5), (1, 0.5)),
            4: ((-2, 1.0 / 12.0), (-1, -8.0 / 12.0), (1, 8.0 / 12.0), (2, -1.0 / 12.0))}


def central_difference(f_at: Callable[[float], float], h: float, order: int = 4) -> float:
    """The derivative at t = 0 of the scalar function ``f_at(t)`` by a central stencil."""
    return _central_difference(f_at, h, order)[0]


def _central_difference(f_at, h, order):
    """(estimate, an upper bound on its rounding error relative to unit roundoff)."""
    try:
        stencil = STENCILS[order]
    except KeyError:
        raise ValueError(f"order must be one of {sorted(STENCILS)}, got {order}") from None
    values = [(weight, f_at(offset * h)) for offset, weight in stencil]
    estimate = sum(weight * value for weight, value in values) / h
    rounding = sum(abs(weight * value) for weight, value in values) / h
    return estimate, rounding


def stable_difference(f_at: Callable[[float], float], h: float, order: int = 4, steps: int = 5,
                      agreement: float = 1e-6, unit_roundoff: float = 2.2e-16) -> float:
    """A central difference whose step is chosen by self-consistency, robust to kinks.

    A ReLU kink within the stencil's reach (2h) ruins a finite difference, and a tiny step drowns
    it in rounding error. So: estimate at h, h/10, h/100, ... (``steps`` sizes) and stop at the first
    two consecutive estimates that agree — to ``agreement`` relative, or within what rounding of
    the loss values can explain (``unit_roundoff`` times the stencil's sum |w f| / h, times 100
    for the rounding inside the loss) — returning the one with the larger step (less rounding).
    If none agree, return the coarser estimate of the closest pair. The choice never looks at
    the analytic gradient, so it cannot flatter it.
    """
    estimates = [_central_difference(f_at, h, order)]
    for k in range(1, steps):
        estimates.append(_central_difference(f_at, h / 10.0 ** k, order))
        (coarse, _), (fine, fine_rounding) = estimates[-2], estimates[-1]
        slack = agreement * max(abs(coarse), abs(fine)) + 100.0 * unit_roundoff * fine_rounding
        if abs(coarse - fine) <= slack:
            return coarse
    if len(estimates) == 1:
        return estimates[0][0]
    values = [estimate for estimate, _ in estimates]
    gaps = [abs(a - b) / max(abs(a), abs(b), TINY) for a, b in zip(values[:-1], values[1:])]
    return values[int(np.argmin(gaps))]


def numeric_gradient(f: Callable[[Array], Array | float], x: Array, dout: Array | None = None, h: float = 1e-4,
                     order: int = 4, steps: int = 1, allow_float32: bool = False) -> np.ndarray:
    """The numeric gradient of  sum(f(x) * dout)  with respect to ``x``, element by element.

    ``f`` maps an array to an array (or a scalar); ``x`` is perturbed in place and restored.
    ``dout`` is the upstream gradient (a random one makes every output count); None means ones.
    Returns a host NumPy array with the shape of ``x``. The cs231n ``eval_numerical_gradient_array``;
    ``steps > 1`` chooses the step per element with :func:`stable_difference`.
    """
    _refuse_float32([x], allow_float32)
    xp = get_array_module(x)

    def objective():
        out = f(x)
        return float((out * dout).sum()) if dout is not None else float(xp.asarray(out).sum())

    grad = np.zeros(x.shape)
    flat_x = x.reshape(-1)
    flat_grad = grad.reshape(-1)
    for i in range(flat_x.size):
        old = flat_x[i].copy()

        def f_at(t):
            flat_x[i] = old + t
            return objective()
        flat_grad[i] = stable_difference(f_at, h, order, steps, unit_roundoff=_unit_roundoff(x))
        flat_x[i] = old
    return grad


@dataclass
class ParameterCheck:
    """The outcome for one parameter: its relative error and how it was measured."""
    name: str
    relative_error: float
    method: str       # "elementwise" or "directions"
    checked: int      # elements or directions checked


@dataclass
class GradcheckReport:
    """Relative errors per parameter. ``report[name]`` is the error; ``report.max_error`` the worst."""
    checks: dict[str, ParameterCheck] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.checks[name].relative_error

    def __iter__(self) -> Iterator[str]:
        return iter(self.checks)

    @property
    def errors(self) -> dict[str, float]:
        return {name: check.relative_error for name, check in self.checks.items()}

    @property
    def max_error(self) -> float:
        return max(self.errors.values())

    def passed(self, tolerance: float = 1e-7) -> bool:
        return self.max_error < tolerance

    def __str__(self) -> str:
        width = max(len(name) for name in self.checks)
        lines = [f"{'parameter':<{width}}  relative error  method"]
        for check in self.checks.values():
            lines.append(f"{check.name:<{width}}  {check.relative_error:14.3e}  "
                         f"{check.method} ({check.checked})")
        return "\n".join(lines)


def gradcheck(loss_fn: Callable[[], float], params: Mapping[str, Array], grads: Mapping[str, Array],
              h: float = 1e-4, order: int = 4, steps: int = 5, max_elements: int = 256, n_directions: int = 6,
              seed: int = 0, allow_float32: bool = False) -> GradcheckReport:
    """Compare analytic gradients with central differences of a scalar loss.

    Parameters
    ----------
    loss_fn : callable () -> float
        Evaluates the loss at the *current* values of ``params`` (which are perturbed in place).
    params : dict name -> array
    grads : dict name -> array
        The analytic gradients at the unperturbed ``params``.
    max_elements : int
        Tensors up to this size are checked element by element; larger ones along
        ``n_directions`` random directions.
    h, order, steps
        The largest step, the stencil order (2 or 4), and how many step sizes
        (h, h/10, ...) :func:`stable_difference` may try to get clear of ReLU kinks.
    """
    _refuse_float32(params.values(), allow_float32)
    rng = np.random.default_rng(seed)
    report = GradcheckReport()
    for name, p in params.items():
        g = grads[name]
        if p.size <= max_elements:
            numeric = numeric_gradient(lambda _: loss_fn(), p, h=h, order=order, steps=steps,
                                       allow_float32=allow_float32)
            error = relative_error(to_numpy(g), numeric)
            report.checks[name] = ParameterCheck(name, error, "elementwise", p.size)
        else:
            error = max(_direction_error(loss_fn, p, g, rng, h, order, steps)
                        for _ in range(n_directions))
            report.checks[name] = ParameterCheck(name, error, "directions", n_directions)
    return report


def _direction_error(loss_fn, p, g, rng, h, order, steps):
    """|<g, d> - D_d f| / scale for one random direction d, D_d f by a central stencil."""
    xp = get_array_module(p)
    direction = xp.asarray(rng.standard_normal(p.shape), dtype=p.dtype)  # explicit host -> device
    original = p.copy()

    def f_at(t):
        p[...] = original + t * direction
        return loss_fn()
    numeric = stable_difference(f_at, h, order, steps, unit_roundoff=_unit_roundoff(p))
    p[...] = original
    analytic = float((g * direction).sum())
    return relative_error([analytic], [numeric])


def check_model_gradients(model: VAE, x: Array, eps: Array | None = None, n_samples: int = 1, beta: float = 1.0,
                          **options: Any) -> GradcheckReport:
    """Gradient-check a whole :class:`minivae.VAE` on a batch ``x`` with the noise held fixed.

    ``eps`` (L, N, K) is drawn once if not given, so the loss is a deterministic function of the
    parameters. Options go to :func:`gradcheck` (``h``, ``max_elements``, ``n_directions`` …).
    """
    if eps is None:
        eps = model.draw_eps(x.shape[0], n_samples)
    _, grads = model.loss_and_grads(x, eps=eps, beta=beta)
    return gradcheck(lambda: model.loss(x, eps=eps, beta=beta), model.params, grads, **options)
