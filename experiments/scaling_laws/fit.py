r"""Fits scaling laws to (N, D, C, loss) points, with seeded bootstrap confidence intervals.

    python -m experiments.scaling_laws.fit --data=results.csv --out=fits/ \
        [--approaches=1,2,3,kaplan] [--bootstrap=200] [--seed=0] [--drop_highest=K] \
        [--target=loss | --target=eval/perplexity/bpb | --target=1-eval/few_shot/accuracy]

writes `fit.json` (every coefficient with its 95% interval and its bootstrap samples) and PNG plots
into --out, and prints a table. On Epoch's Chinchilla points
(experiments/scaling_laws/data/epoch_chinchilla_points.csv) with the default 200 resamples it takes under a minute on 2 CPU cores and gives E = 1.82, A = 478, B = 2143,
alpha = 0.347, beta = 0.367, inside Epoch's published intervals.

Approaches (`--approaches` names; fit.json keys):

* `1` (approach1), Hoffmann et al.'s Approach 1: the lower envelope of loss against compute. Points
  are binned by log10 C (bins of `ENVELOPE_BIN_DEX` = 0.1 dex); the lowest-loss point of each bin
  is kept when it beats every bin of smaller compute; N_opt = k_N C^a and D_opt = k_D C^b are
  fitted to those points by least squares in log-log space.
* `2` (approach2), IsoFLOP profiles: points are grouped by compute (see `isoflop_groups`: sorted
  log10 C, a new group wherever the gap exceeds `ISOFLOP_GAP_DEX` = 0.02 dex, about 5%); each
  group with >= 3 model sizes gets a parabola of loss in log N whose vertex (inside the sampled
  sizes) is that budget's N_opt; D_opt is read off the group's log D - log N line at that vertex;
  then power laws as in Approach 1.
* `3` (approach3), the parametric fit L(N, D) = E + A / N^alpha + B / D^beta done as Epoch
  describes: log-sum-exp form, Huber loss (delta 1e-3) on log-loss residuals, BFGS with exact JAX
  gradients started from Hoffmann's grid. The 5,400 grid points are scored at once (jax.vmap) and
  BFGS runs from the best `top_k` = 20 of them; the lowest objective wins. A fit counts as
  converged when the gradient's largest component is below `GRAD_TOL` = 1e-6 (it is typically
  ~1e-10; the Huber objective here is ~1e-3).
* `kaplan` (kaplan_nd, kaplan_n, kaplan_d), Kaplan et al. 2020: L(N, D) fitted by least squares
  on log loss (BFGS from a small grid); then L(N) on data-unlimited points and L(D) on
  model-unlimited points, by linear least squares in log-log space. A point is data-unlimited when
  the fitted L(N, D) lies within `KAPLAN_LIMIT_TOLERANCE` = 2% of its N-only limit L(N) (Kaplan's
  own overfitting criterion, their eq. 4.4); model-unlimited likewise for L(D). Per model size
  (per token count) the point with the most tokens (parameters) is used.

Bootstrap: each resample draws len(data) points with replacement (numpy Generator seeded by
[--seed, approach]) and refits. Approach 3 (and Kaplan L(N, D)) resamples start BFGS from the
full-data optimum and from the `bootstrap_starts` = 1 best grid point for that resample (for
Approach 3 ranked among the full data's `SHORTLIST` = 256 best), keeping the lowest converged
objective. Resamples an approach cannot use (e.g. too few IsoFLOP groups survive) are counted as
failures in fit.json. Intervals are the 2.5th and 97.5th percentiles of the resampled estimates.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from experiments.scaling_laws import data as data_lib
from experiments.scaling_laws import laws
from research.errors import UserError
from research.errors import exit_on_user_error

APPROACHES = ('1', '2', '3', 'kaplan')
DEFAULT_BOOTSTRAP = 200
CI_LEVEL = 0.95

HUBER_DELTA = 1e-3
GRAD_TOL = 1e-6
# scipy's BFGS stops once max |gradient| < gtol; this is far below GRAD_TOL so that BFGS only stops
# when float64 line searches can make no more progress ("precision loss"), i.e. at the optimum.
BFGS_GTOL = 1e-12
BFGS_MAXITER = 5000

# Approach 3 resamples re-rank only this many of the full data's best grid points.
SHORTLIST = 256

ENVELOPE_BIN_DEX = 0.1
ISOFLOP_GAP_DEX = 0.02
ISOFLOP_MAX_SPAN_DEX = 0.1
MIN_ISOFLOP_SIZES = 3
KAPLAN_LIMIT_TOLERANCE = 0.02

# Hoffmann et al.'s initialisation grid for Approach 3, in Epoch's (a, b, e, alpha, beta) order.
HOFFMANN_GRID = np.array(
    [(a, b, e, alpha, beta)
     for alpha, beta, e, a, b in itertools.product(
         np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5), np.arange(-1, 1.51, 0.5),
         np.arange(0, 25.1, 5), np.arange(0, 25.1, 5))],
    dtype=np.float64)
# Starts for Kaplan's L(N, D) in (log Nc, log Dc, alpha_N / alpha_D, alpha_D).
KAPLAN_GRID = np.array(
    [(np.log(10.0**n), np.log(10.0**d), p, alpha_d)
     for n, d, p, alpha_d in itertools.product((10, 13, 16, 19), (10, 13, 16, 19), (0.5, 1.0, 2.0),
                                               (0.05, 0.1, 0.2, 0.4))],
    dtype=np.float64)

APPROACH_SEED = {'approach1': 1, 'approach2': 2, 'approach3': 3, 'kaplan_nd': 4, 'kaplan_n': 5,
                 'kaplan_d': 6}


class NotApplicable(Exception):
  """An approach cannot use these data; the message says why."""


@dataclasses.dataclass
class Fit:
  """One fitted law: point estimates, bootstrap samples and diagnostics.

  Attributes:
    name: fit.json key, e.g. 'approach3'.
    law: the fitted formula, in words.
    values: point estimates from all points, e.g. {'E': 1.82, ..., 'a': 0.51}.
    samples: bootstrap estimates per name (one entry per successful resample).
    info: diagnostics: points used, objective, gradient norm, resample failures, seconds.
    extra: approach-specific results used by plots and written to fit.json (IsoFLOP minima,
      envelope points).
  """

  name: str
  law: str
  values: dict[str, float]
  samples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def interval(self, name: str, level: float = CI_LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval for `name`, or None without samples."""
    s = self.samples.get(name)
    if s is None or len(s) < 2:
      return None
    tail = 50 * (1 - level)
    lo, hi = np.percentile(s, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclasses.dataclass
class Skipped:
  name: str
  reason: str


# A generic multi-start BFGS on a jax objective f(theta, weights).


@dataclasses.dataclass
class Minimum:
  theta: np.ndarray
  value: float
  grad_norm: float  # max |gradient|

  @property
  def converged(self) -> bool:
    return bool(np.isfinite(self.value) and self.grad_norm < GRAD_TOL)


class Objective:
  """A weighted objective f(theta, weights) -> scalar, jitted once and minimised from many starts.

  Weights are bootstrap counts (all ones for the full data), so every resample reuses one
  compilation. Must be built and used inside `jax.enable_x64(True)`.
  """

  def __init__(self, fn: Callable[[jax.Array, jax.Array], jax.Array], n_points: int):
    self.n_points = n_points
    self.ones = np.ones(n_points)
    self._value_and_grad = jax.jit(jax.value_and_grad(fn))
    self._batch = jax.jit(jax.vmap(fn, in_axes=(0, None)))

  def __call__(self, theta, weights=None) -> float:
    return self.value_and_grad(theta, weights)[0]

  def value_and_grad(self, theta, weights=None) -> tuple[float, np.ndarray]:
    weights = self.ones if weights is None else weights
    value, grad = self._value_and_grad(np.asarray(theta, np.float64), weights)
    return float(value), np.asarray(grad, np.float64)

  def best_of_grid(self, grid: np.ndarray, k: int, weights=None) -> np.ndarray:
    """The `k` grid rows with the lowest objective, best first."""
    weights = self.ones if weights is None else weights
    values = np.asarray(self._batch(grid, weights))
    values = np.where(np.isfinite(values), values, np.inf)
    return grid[np.argsort(values, kind='stable')[:k]]

  def minimize(self, start, weights=None) -> Minimum:
    def fun(theta):
      return self.value_and_grad(theta, weights)

    result = scipy.optimize.minimize(fun, np.asarray(start, np.float64), jac=True, method='BFGS',
                                     options={'gtol': BFGS_GTOL, 'maxiter': BFGS_MAXITER})
    value, grad = fun(result.x)
    return Minimum(theta=result.x, value=value, grad_norm=float(np.max(np.abs(grad))))

  def minimize_from(self, starts: Iterable[np.ndarray], weights=None) -> Minimum:
    """The lowest converged minimum over `starts` (the lowest of all when none converged)."""
    minima = [self.minimize(s, weights) for s in starts]
    ranked = sorted(minima, key=lambda m: (not m.converged, np.nan_to_num(m.value, nan=np.inf)))
    return ranked[0]


def _x64(fn):
  """Runs `fn` with float64 jax, without changing the process-wide default."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.enable_x64(True):
      return fn(*args, **kwargs)

  return wrapped


# Bootstrap.


def _rng(seed: int, name: str) -> np.random.Generator:
  return np.random.default_rng([seed, APPROACH_SEED[name]])


def _bootstrap(estimate: Callable[[np.ndarray], dict[str, float]], n_points: int, n_resamples: int,
               rng: np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
  """Runs `estimate(indices)` on resamples; returns samples per name and the failure count."""
  rows, failures = [], 0
  for _ in range(n_resamples):
    index = rng.integers(0, n_points, size=n_points)
    try:
      rows.append(estimate(index))
    except NotApplicable:
      failures += 1
  names = rows[0].keys() if rows else ()
  return {k: np.array([r[k] for r in rows]) for k in names}, failures


def _bootstrap_info(n_resamples: int, failures: int) -> dict[str, Any]:
  return {'bootstrap_resamples': n_resamples, 'bootstrap_failures': failures}


# Approach 3: L(N, D) = E + A / N^alpha + B / D^beta, Epoch's procedure.


def approach3_objective_fn(data: data_lib.ScalingData, delta: float = HUBER_DELTA):
  """f(theta, weights) = sum_i w_i Huber_delta(log L_pred(theta; N_i, D_i) - log L_i) (jax)."""
  # numpy float64 constants: jax takes their dtype when tracing, which happens under x64.
  log_n, log_d, log_l = (np.log(x) for x in (data.N, data.D, data.L))

  def objective(theta, weights):
    residual = laws.chinchilla_log_loss(theta, log_n, log_d) - log_l
    return jnp.sum(weights * laws.huber(residual, delta))

  return objective


@_x64
def approach3_objective(data: data_lib.ScalingData, params: laws.Chinchilla,
                        delta: float = HUBER_DELTA) -> float:
  """Epoch's objective at `params` (e.g. to compare an optimum with Hoffmann's published one)."""
  fn = approach3_objective_fn(data, delta)
  return float(fn(jnp.asarray(params.theta()), jnp.ones(len(data))))


def _chinchilla_values(theta) -> dict[str, float]:
  p = laws.Chinchilla.from_theta(theta)
  a, b = p.optimal_exponents()
  return {'E': p.E, 'A': p.A, 'B': p.B, 'alpha': p.alpha, 'beta': p.beta, 'a': a, 'b': b}


@_x64
def fit_approach3(data: data_lib.ScalingData,
                  *,
                  bootstrap: int = 0,
                  seed: int = 0,
                  delta: float = HUBER_DELTA,
                  top_k: int = 20,
                  bootstrap_starts: int = 1) -> Fit:
  """Fits L(N, D) = E + A / N^alpha + B / D^beta as Epoch describes (see the module docstring).

  Args:
    data: the points.
    bootstrap: number of resamples for confidence intervals (0: none).
    seed: seeds the resampling.
    delta: Huber threshold on log-loss residuals.
    top_k: BFGS runs on the full data start from this many best points of Hoffmann's grid.
    bootstrap_starts: grid starts per resample, besides the full-data optimum.

  Returns:
    Fit with values E, A, B, alpha, beta, a = beta / (alpha + beta), b = alpha / (alpha + beta).
  """
  if len(data) < 5:
    raise NotApplicable('Approach 3 fits 5 parameters and needs at least 5 points, got '
                        f'{len(data)}')
  start_time = time.time()
  objective = Objective(approach3_objective_fn(data, delta), len(data))
  ranked = objective.best_of_grid(HOFFMANN_GRID, max(top_k, SHORTLIST))
  best = objective.minimize_from(ranked[:top_k])

  def estimate(index):
    weights = np.bincount(index, minlength=len(data)).astype(np.float64)
    # A resample's best grid points are among the full data's best few hundred; ranking only those
    # keeps the per-resample grid cost negligible.
    starts = [best.theta, *objective.best_of_grid(ranked, bootstrap_starts, weights)]
    m = objective.minimize_from(starts, weights)
    if not m.converged:
      raise NotApplicable('BFGS did not converge')
    return _chinchilla_values(m.theta)

  samples, failures = _bootstrap(estimate, len(data), bootstrap, _rng(seed, 'approach3'))
  info = {'n_points': len(data), 'objective': best.value, 'grad_norm': best.grad_norm,
          'converged': best.converged, 'huber_delta': delta, 'grid_starts': top_k,
          'bootstrap_starts': f'full-data optimum + {bootstrap_starts} best grid point(s)',
          **_bootstrap_info(bootstrap, failures), 'seconds': round(time.time() - start_time, 2)}
  return Fit(name='approach3', law='L(N, D) = E + A / N^alpha + B / D^beta',
             values=_chinchilla_values(best.theta), samples=samples, info=info,
             extra={'theta': [float(v) for v in best.theta]})


# Kaplan et al. 2020.


def kaplan_objective_fn(data: data_lib.ScalingData):
  """f(theta, weights) = sum_i w_i (log L_pred - log L_i)^2 / 2 for Kaplan's L(N, D) (jax)."""
  log_n, log_d, log_l = (np.log(x) for x in (data.N, data.D, data.L))

  def objective(theta, weights):
    residual = laws.kaplan_log_loss_nd(theta, log_n, log_d) - log_l
    return 0.5 * jnp.sum(weights * residual**2)

  return objective


def _kaplan_values(theta) -> dict[str, float]:
  p = laws.Kaplan.from_theta(theta)
  a, b = p.optimal_exponents()
  return {'Nc': p.Nc, 'Dc': p.Dc, 'alpha_N': p.alpha_N, 'alpha_D': p.alpha_D, 'a': a, 'b': b}


@_x64
def fit_kaplan_nd(data: data_lib.ScalingData,
                  *,
                  bootstrap: int = 0,
                  seed: int = 0,
                  top_k: int = 10,
                  bootstrap_starts: int = 1) -> Fit:
  """Fits Kaplan's L(N, D) = [(Nc / N)^(alpha_N / alpha_D) + Dc / D]^alpha_D.

  Least squares on log loss, BFGS with exact JAX gradients from the best `top_k` points of
  `KAPLAN_GRID`. a and b are the exponents of the minimum of this L(N, D) along C = 6 N D.
  """
  if len(data) < 4:
    raise NotApplicable(f'Kaplan L(N, D) fits 4 parameters and needs at least 4 points, got '
                        f'{len(data)}')
  start_time = time.time()
  objective = Objective(kaplan_objective_fn(data), len(data))
  best = objective.minimize_from(objective.best_of_grid(KAPLAN_GRID, top_k))
  if not (best.converged and best.theta[3] > 0 and best.theta[2] > 0):
    raise NotApplicable('Kaplan L(N, D) has no converged fit with positive exponents on these data '
                        f'(alpha_D = {best.theta[3]:.3g}, alpha_N / alpha_D = {best.theta[2]:.3g})')

  def estimate(index):
    weights = np.bincount(index, minlength=len(data)).astype(np.float64)
    starts = [best.theta, *objective.best_of_grid(KAPLAN_GRID, bootstrap_starts, weights)]
    m = objective.minimize_from(starts, weights)
    if not (m.converged and m.theta[3] > 0 and m.theta[2] > 0):
      raise NotApplicable('no converged fit')
    return _kaplan_values(m.theta)

  samples, failures = _bootstrap(estimate, len(data), bootstrap, _rng(seed, 'kaplan_nd'))
  info = {'n_points': len(data), 'objective': best.value, 'grad_norm': best.grad_norm,
          'converged': best.converged, **_bootstrap_info(bootstrap, failures),
          'seconds': round(time.time() - start_time, 2)}
  return Fit(name='kaplan_nd', law='L(N, D) = [(Nc / N)^(alpha_N / alpha_D) + Dc / D]^alpha_D',
             values=_kaplan_values(best.theta), samples=samples, info=info)


def _best_per_group(keys: np.ndarray, candidates: np.ndarray, order_by: np.ndarray) -> np.ndarray:
  """Indices of candidates with the largest `order_by` per distinct key (keys rounded to 0.1%)."""
  rounded = np.round(np.log(keys) * 1000).astype(np.int64)
  chosen = {}
  for i in np.flatnonzero(candidates):
    if rounded[i] not in chosen or order_by[i] > order_by[chosen[rounded[i]]]:
      chosen[rounded[i]] = i
  return np.array(sorted(chosen.values()), dtype=np.int64)


def _fit_one_variable_power_law(x: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
  """(x_c, alpha) of L = (x_c / x)^alpha by least squares of log L on log x."""
  slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
  alpha = -slope
  if not alpha > 0:
    raise NotApplicable(f'loss does not fall with scale (exponent {alpha:.3g})')
  return float(np.exp(intercept / alpha)), float(alpha)


def _fit_kaplan_limit(data: data_lib.ScalingData, joint: Fit, *, which: str, bootstrap: int,
                      seed: int, tolerance: float) -> Fit:
  p = laws.Kaplan.from_mapping(joint.values)
  predicted = laws.kaplan_loss_nd(data.N, data.D, p)
  if which == 'n':
    excess = predicted / laws.kaplan_loss_n(data.N, p.Nc, p.alpha_N) - 1
    used = _best_per_group(data.N, excess <= tolerance, data.D)
    x, kind, names = data.N, 'data-unlimited', ('Nc', 'alpha_N')
  else:
    excess = predicted / laws.kaplan_loss_d(data.D, p.Dc, p.alpha_D) - 1
    used = _best_per_group(data.D, excess <= tolerance, data.N)
    x, kind, names = data.D, 'model-unlimited', ('Dc', 'alpha_D')
  label = f'Kaplan L({which.upper()})'
  if len(used) < 3:
    raise NotApplicable(
        f'{label} needs {kind} points (fitted L(N, D) within {tolerance:.0%} of its '
        f'{which.upper()}-only limit) at >= 3 {"model sizes" if which == "n" else "token counts"}; '
        f'found {len(used)}')
  x, loss = x[used], data.L[used]

  def estimate(index):
    if len(np.unique(x[index])) < 2:
      raise NotApplicable('resample has one size')
    return dict(zip(names, _fit_one_variable_power_law(x[index], loss[index])))

  values = dict(zip(names, _fit_one_variable_power_law(x, loss)))
  samples, failures = _bootstrap(estimate, len(used), bootstrap, _rng(seed, f'kaplan_{which}'))
  law = 'L(N) = (Nc / N)^alpha_N' if which == 'n' else 'L(D) = (Dc / D)^alpha_D'
  info = {'n_points': len(used), 'selection': f'{kind}: fitted L(N, D) within {tolerance:.0%} of '
          f'{law.split(" =")[0]}, one point per {"size" if which == "n" else "token count"}',
          **_bootstrap_info(bootstrap, failures)}
  return Fit(name=f'kaplan_{which}', law=law, values=values, samples=samples, info=info,
             extra={'used': used})


def fit_kaplan_n(data, joint: Fit, *, bootstrap=0, seed=0, tolerance=KAPLAN_LIMIT_TOLERANCE) -> Fit:
  """Kaplan's L(N) = (Nc / N)^alpha_N on the data-unlimited points that `joint` identifies."""
  return _fit_kaplan_limit(data, joint, which='n', bootstrap=bootstrap, seed=seed,
                           tolerance=tolerance)


def fit_kaplan_d(data, joint: Fit, *, bootstrap=0, seed=0, tolerance=KAPLAN_LIMIT_TOLERANCE) -> Fit:
  """Kaplan's L(D) = (Dc / D)^alpha_D on the model-unlimited points that `joint` identifies."""
  return _fit_kaplan_limit(data, joint, which='d', bootstrap=bootstrap, seed=seed,
                           tolerance=tolerance)


# Approaches 1 and 2: compute-optimal allocations, then power laws in C.


def _allocation_values(c, n_opt, d_opt) -> dict[str, float]:
  k_n, a = laws.fit_power_law(c, n_opt)
  k_d, b = laws.fit_power_law(c, d_opt)
  return {'a': a, 'b': b, 'k_N': k_n, 'k_D': k_d}


def loss_envelope(data: data_lib.ScalingData, bin_dex: float = ENVELOPE_BIN_DEX) -> np.ndarray:
  """Indices of the lower envelope of loss against compute, in increasing compute.

  The lowest-loss point of each log10 C bin, kept only when its loss is below that of every bin of
  smaller compute (more compute must buy a lower loss on the frontier).
  """
  bins = np.floor(np.log10(data.C) / bin_dex).astype(np.int64)
  envelope, best_loss = [], np.inf
  for b in np.unique(bins):
    members = np.flatnonzero(bins == b)
    i = members[np.argmin(data.L[members])]
    if data.L[i] < best_loss:
      envelope.append(i)
      best_loss = data.L[i]
  return np.array(envelope, dtype=np.int64)


def fit_approach1(data: data_lib.ScalingData, *, bootstrap: int = 0, seed: int = 0,
                  bin_dex: float = ENVELOPE_BIN_DEX) -> Fit:
  """Hoffmann's Approach 1 on final points: N_opt, D_opt of the loss-compute envelope vs C."""

  def envelope_values(d: data_lib.ScalingData):
    env = loss_envelope(d, bin_dex)
    if len(env) < 3 or len(np.unique(d.N[env])) < 2:
      raise NotApplicable(f'Approach 1 needs >= 3 compute bins ({bin_dex} dex) on the loss '
                          f'envelope with >= 2 model sizes; found {len(env)} bins')
    return _allocation_values(d.C[env], d.N[env], d.D[env]), env

  start_time = time.time()
  values, envelope = envelope_values(data)
  samples, failures = _bootstrap(lambda index: envelope_values(data.take(index))[0], len(data),
                                 bootstrap, _rng(seed, 'approach1'))
  info = {'n_points': len(data), 'envelope_points': len(envelope), 'bin_dex': bin_dex,
          **_bootstrap_info(bootstrap, failures), 'seconds': round(time.time() - start_time, 2)}
  return Fit(name='approach1', law='N_opt = k_N C^a, D_opt = k_D C^b (loss envelope)',
             values=values, samples=samples, info=info, extra={'envelope': envelope})


def isoflop_groups(data: data_lib.ScalingData, gap_dex: float = ISOFLOP_GAP_DEX,
                   max_span_dex: float = ISOFLOP_MAX_SPAN_DEX) -> list[np.ndarray]:
  """IsoFLOP groups: index arrays of points that share a compute budget.

  Sorted by log10 C, a new group starts wherever the next point is more than `gap_dex` higher
  (0.02 dex: runs within ~5% of each other share a budget, as sweeps with a fixed budget and integer
  step counts produce). Unlike rounding log10 C to a grid, this never splits one budget across a bin
  edge. Groups spanning more than `max_span_dex`, or with fewer than 3 model sizes, are not IsoFLOP
  profiles and are left out.
  """
  log_c = np.log10(data.C)
  order = np.argsort(log_c, kind='stable')
  breaks = np.flatnonzero(np.diff(log_c[order]) > gap_dex) + 1
  groups = []
  for members in np.split(order, breaks):
    span = log_c[members].max() - log_c[members].min()
    if span <= max_span_dex and _distinct_sizes(data.N[members]) >= MIN_ISOFLOP_SIZES:
      groups.append(np.sort(members))
  return groups


def _distinct_sizes(n: np.ndarray) -> int:
  return len(np.unique(np.round(np.log(n) * 1000)))


@dataclasses.dataclass(frozen=True)
class IsoflopMinimum:
  """The vertex of one IsoFLOP parabola loss = c0 + c1 log N + c2 log^2 N."""

  C: float
  N_opt: float
  D_opt: float
  loss: float
  coeffs: tuple[float, float, float]  # (c2, c1, c0), numpy.polyfit order
  n_points: int


def isoflop_minimum(data: data_lib.ScalingData, members: np.ndarray) -> IsoflopMinimum | None:
  """Fits one group's parabola; None if it opens downwards or its vertex is outside the sizes."""
  log_n = np.log(data.N[members])
  if _distinct_sizes(data.N[members]) < MIN_ISOFLOP_SIZES:
    return None
  coeffs = np.polyfit(log_n, data.L[members], 2)
  if not coeffs[0] > 0:
    return None
  vertex = -coeffs[1] / (2 * coeffs[0])
  if not log_n.min() <= vertex <= log_n.max():
    return None
  # Tokens at the vertex from the group's own log D - log N line: C / (6 N) when C = 6 N D exactly,
  # and the sweep's real token counts when the FLOP accounting differs.
  slope, intercept = np.polyfit(log_n, np.log(data.D[members]), 1)
  return IsoflopMinimum(C=float(np.exp(np.mean(np.log(data.C[members])))),
                        N_opt=float(np.exp(vertex)),
                        D_opt=float(np.exp(intercept + slope * vertex)),
                        loss=float(np.polyval(coeffs, vertex)), coeffs=tuple(map(float, coeffs)),
                        n_points=len(members))


def _minima_values(minima: Sequence[IsoflopMinimum]) -> dict[str, float]:
  return _allocation_values(*(np.array([getattr(m, f) for m in minima])
                              for f in ('C', 'N_opt', 'D_opt')))


def fit_approach2(data: data_lib.ScalingData, *, bootstrap: int = 0, seed: int = 0,
                  gap_dex: float = ISOFLOP_GAP_DEX) -> Fit:
  """Hoffmann's Approach 2: IsoFLOP parabola minima, then N_opt = k_N C^a, D_opt = k_D C^b."""
  start_time = time.time()
  groups = isoflop_groups(data, gap_dex)
  minima = [m for m in (isoflop_minimum(data, g) for g in groups) if m is not None]
  if len(minima) < 3:
    raise NotApplicable(
        f'Approach 2 needs >= 3 IsoFLOP groups (points within {gap_dex} dex of compute, '
        f'>= {MIN_ISOFLOP_SIZES} model sizes) whose parabola has a minimum inside the sampled '
        f'sizes; found {len(groups)} groups, {len(minima)} with a minimum')
  group_of = np.full(len(data), -1)
  for k, g in enumerate(groups):
    group_of[g] = k

  def estimate(index):
    index = index[group_of[index] >= 0]
    found = [isoflop_minimum(data, index[group_of[index] == k]) for k in range(len(groups))]
    found = [m for m in found if m is not None]
    if len(found) < 3:
      raise NotApplicable('fewer than 3 IsoFLOP minima')
    return _minima_values(found)

  values = _minima_values(minima)
  samples, failures = _bootstrap(estimate, len(data), bootstrap, _rng(seed, 'approach2'))
  info = {'n_points': len(data), 'isoflop_groups': len(groups), 'isoflop_minima': len(minima),
          'gap_dex': gap_dex, **_bootstrap_info(bootstrap, failures),
          'seconds': round(time.time() - start_time, 2)}
  return Fit(name='approach2', law='N_opt = k_N C^a, D_opt = k_D C^b (IsoFLOP minima)',
             values=values, samples=samples, info=info,
             extra={'groups': groups, 'minima': minima})


# All approaches, fit.json and the table.


def fit_all(data: data_lib.ScalingData,
            approaches: Sequence[str] = APPROACHES,
            *,
            bootstrap: int = 0,
            seed: int = 0,
            log: Callable[[str], None] | None = None) -> dict[str, Fit | Skipped]:
  """Runs the named approaches ('1', '2', '3', 'kaplan'); inapplicable ones become `Skipped`."""
  log = log or (lambda _: None)
  results: dict[str, Fit | Skipped] = {}

  def attempt(name: str, run: Callable[[], Fit]):
    try:
      results[name] = fit = run()
      seconds = f', {fit.info["seconds"]:.1f} s' if 'seconds' in fit.info else ''
      log(f'{name}: fitted on {fit.info["n_points"]} points, {bootstrap} resamples{seconds}')
    except NotApplicable as e:
      results[name] = Skipped(name, str(e))
      log(f'{name}: skipped: {e}')

  kw = {'bootstrap': bootstrap, 'seed': seed}
  for approach in approaches:
    if approach == '1':
      attempt('approach1', lambda: fit_approach1(data, **kw))
    elif approach == '2':
      attempt('approach2', lambda: fit_approach2(data, **kw))
    elif approach == '3':
      attempt('approach3', lambda: fit_approach3(data, **kw))
    elif approach == 'kaplan':
      attempt('kaplan_nd', lambda: fit_kaplan_nd(data, **kw))
      joint = results['kaplan_nd']
      for which, fn in (('n', fit_kaplan_n), ('d', fit_kaplan_d)):
        if isinstance(joint, Fit):
          attempt(f'kaplan_{which}', functools.partial(fn, data, joint, **kw))
        else:
          results[f'kaplan_{which}'] = Skipped(f'kaplan_{which}', 'needs the Kaplan L(N, D) fit to '
                                               'tell which points are data- or model-unlimited')
    else:
      raise UserError(f'--approaches: unknown approach {approach!r}: expected a comma-separated '
                      f'subset of {",".join(APPROACHES)}')
  return results


def _clean(x):
  """JSON-safe: numpy scalars to floats, NaN and inf to None."""
  x = float(x)
  return x if np.isfinite(x) else None


def fit_to_json(fit: Fit | Skipped) -> dict[str, Any]:
  if isinstance(fit, Skipped):
    return {'status': 'skipped', 'reason': fit.reason}
  params = {}
  for name, value in fit.values.items():
    ci = fit.interval(name)
    params[name] = {'value': _clean(value), 'ci95': None if ci is None else [_clean(v) for v in ci]}
  out = {'status': 'ok', 'law': fit.law, 'params': params,
         'info': {k: (_clean(v) if isinstance(v, (float, np.floating)) else v)
                  for k, v in fit.info.items()}}
  if fit.name == 'approach2':
    out['isoflop_minima'] = [{'C': m.C, 'N_opt': m.N_opt, 'D_opt': m.D_opt, 'loss': m.loss,
                              'n_points': m.n_points} for m in fit.extra['minima']]
  if fit.name == 'approach1':
    out['envelope_indices'] = [int(i) for i in fit.extra['envelope']]
  out['bootstrap_samples'] = {k: [float(f'{v:.10g}') for v in s] for k, s in fit.samples.items()}
  return out


def results_to_json(data: data_lib.ScalingData, results: dict[str, Fit | Skipped], *,
                    bootstrap: int, seed: int) -> dict[str, Any]:
  return {
      'data': {'source': data.source, 'format': data.format, 'n_points': len(data),
               'dropped_highest': data.dropped_highest, 'skipped_rows': data.skipped_rows},
      'bootstrap': {'resamples': bootstrap, 'seed': seed, 'ci': CI_LEVEL,
                    'method': 'percentile, resampling points with replacement'},
      'fits': {name: fit_to_json(fit) for name, fit in results.items()},
  }


def format_table(results: dict[str, Fit | Skipped]) -> str:
  """Rows of fit / parameter / value / 95% interval, and one line per skipped approach."""
  lines = [f'{"fit":<10} {"param":<8} {"value":>11}  95% CI']
  for name, fit in results.items():
    if isinstance(fit, Skipped):
      lines.append(f'{name:<10} skipped: {fit.reason}')
      continue
    for param, value in fit.values.items():
      ci = fit.interval(param)
      ci_text = '' if ci is None else f'[{ci[0]:.4g}, {ci[1]:.4g}]'
      lines.append(f'{name:<10} {param:<8} {value:>11.4g}  {ci_text}')
  return '\n'.join(lines)


# Command line.


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.scaling_laws.fit',
      description='Fit Kaplan and Chinchilla scaling laws (Approaches 1-3) with bootstrap '
      'intervals; writes fit.json and PNGs into --out.')
  parser.add_argument('--data', required=True,
                      help='results CSV: lmforge (params,tokens,loss[,flops]) or Epoch layout')
  parser.add_argument('--out', required=True, help='output directory for fit.json and PNGs')
  parser.add_argument('--approaches', default=','.join(APPROACHES),
                      help='comma-separated subset of 1,2,3,kaplan')
  parser.add_argument('--bootstrap', type=int, default=DEFAULT_BOOTSTRAP,
                      help='bootstrap resamples for the intervals (0: none)')
  parser.add_argument('--seed', type=int, default=0, help='seed of the bootstrap resampling')
  parser.add_argument('--drop_highest', type=int, default=None,
                      help=f'drop the K highest-loss points (default {data_lib.EPOCH_DROP_HIGHEST} '
                      'for the Epoch file, as Epoch did; 0 otherwise)')
  parser.add_argument('--params_column', default='params', choices=data_lib.PARAMS_COLUMNS,
                      help='parameter count column of an lmforge CSV')
  parser.add_argument('--target', default='loss',
                      help="the column fitted as L: 'loss', a collected metric column such as "
                      "'eval/perplexity/bpb', or '1-COLUMN' (an accuracy's error rate)")
  parser.add_argument('--plots', action=argparse.BooleanOptionalAction, default=True,
                      help='write PNG plots')
  args = parser.parse_args(argv)
  if args.bootstrap < 0:
    raise UserError(f'--bootstrap={args.bootstrap}: must be >= 0')
  args.approaches = [a.strip() for a in args.approaches.split(',') if a.strip()]
  unknown = [a for a in args.approaches if a not in APPROACHES]
  if unknown or not args.approaches:
    raise UserError(f'--approaches={",".join(args.approaches)}: expected a comma-separated subset '
                    f'of {",".join(APPROACHES)}')
  return args


def load_data(path: str, drop_highest: int | None, params_column: str = 'params',
              log: Callable[[str], None] = print, target: str = 'loss') -> data_lib.ScalingData:
  """Reads --data; for the Epoch file, drops its 5 highest losses unless told otherwise."""
  label = f'--data={path}'
  data = data_lib.read_csv(path, params_column=params_column, target=target, label=label)
  if target != 'loss':
    log(f'fitting {target} as L (--target)')
  if drop_highest is None:
    drop_highest = data_lib.EPOCH_DROP_HIGHEST if data.format == data_lib.EPOCH else 0
    if drop_highest:
      log(f'Epoch layout: dropping the {drop_highest} highest-loss points as Epoch did '
          '(--drop_highest=0 keeps them)')
  return data_lib.drop_highest_loss(data, drop_highest)


def run(data_path: str, out_dir: str, *, approaches: Sequence[str] = APPROACHES,
        bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0, drop_highest: int | None = None,
        params_column: str = 'params', plots: bool = True, target: str = 'loss',
        log: Callable[[str], None] = print) -> dict[str, Fit | Skipped]:
  """Everything the command does: read, fit, write fit.json (and PNGs), print the table."""
  data = load_data(data_path, drop_highest, params_column, log, target)
  log(data.describe())
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f'--out={out_dir}: cannot create the directory ({e.strerror})') from None
  results = fit_all(data, approaches, bootstrap=bootstrap, seed=seed, log=log)
  path = os.path.join(out_dir, 'fit.json')
  with open(path, 'w') as f:
    json.dump(results_to_json(data, results, bootstrap=bootstrap, seed=seed), f, indent=1)
  log(format_table(results))
  log(f'wrote {path}')
  if plots:
    from experiments.scaling_laws import plot  # matplotlib only when plotting
    for written in plot.plot_all(data, results, out_dir):
      log(f'wrote {written}')
  return results


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
  args = _parse_args(argv)
  run(args.data, args.out, approaches=args.approaches, bootstrap=args.bootstrap, seed=args.seed,
      drop_highest=args.drop_highest, params_column=args.params_column, plots=args.plots,
      target=args.target)


if __name__ == '__main__':
  main(sys.argv[1:])
