"""Scaling-law forms: Kaplan et al. 2020 and Hoffmann et al. 2022 (Chinchilla).

Units throughout: N parameters, D training tokens, C training FLOP, loss in nats/token.

Each law appears twice:

* in natural units with numpy (`chinchilla_loss`, `kaplan_loss_nd`, ...), for predictions, the
  frontier and plots;
* in log space with jax.numpy (`chinchilla_log_loss`, `kaplan_log_loss_nd`), for fitting. Fitting
  log loss with log-sum-exp keeps every term positive without constraints and is Epoch's exact
  parameterisation of Approach 3 (Besiroglu et al. 2024).

Parameter vectors used for fitting (their order is part of fit.json's bootstrap samples):

* Chinchilla: `theta = (a, b, e, alpha, beta)` with A = exp(a), B = exp(b), E = exp(e).
* Kaplan L(N, D): `theta = (n, d, p, alpha_d)` with Nc = exp(n), Dc = exp(d), alpha_n = p * alpha_d.
  Fitting the ratio p = alpha_n / alpha_d instead of alpha_n avoids dividing by alpha_d, which a
  line search may drive through zero.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# The FLOP model that links the three budgets: C = 6 N D (forward 2ND plus backward 4ND).
FLOPS_PER_PARAM_TOKEN = 6.0


def tokens_for_budget(n, c):
  """D = C / (6 N): the tokens that compute budget `c` buys a model with `n` parameters."""
  return np.asarray(c, dtype=np.float64) / (FLOPS_PER_PARAM_TOKEN * np.asarray(n, dtype=np.float64))


def huber(r, delta: float):
  """Huber penalty: quadratic within `delta` of zero, linear outside (jax)."""
  abs_r = jnp.abs(r)
  return jnp.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


# Chinchilla (Hoffmann et al. 2022, Approach 3): L(N, D) = E + A / N^alpha + B / D^beta.


@dataclasses.dataclass(frozen=True)
class Chinchilla:
  """Coefficients of L(N, D) = E + A / N^alpha + B / D^beta."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float

  @classmethod
  def from_theta(cls, theta) -> Chinchilla:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return cls(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)

  @classmethod
  def from_mapping(cls, values: Mapping[str, float]) -> Chinchilla:
    return cls(**{f.name: float(values[f.name]) for f in dataclasses.fields(cls)})

  def theta(self) -> np.ndarray:
    return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])

  def loss(self, n, d):
    return chinchilla_loss(n, d, self)

  def optimal_exponents(self) -> tuple[float, float]:
    """(a, b) with N_opt ∝ C^a and D_opt ∝ C^b along C = 6 N D."""
    total = self.alpha + self.beta
    return self.beta / total, self.alpha / total

  def optimal_n(self, c):
    """N_opt(C) = G (C / 6)^(beta / (alpha + beta)), G = (alpha A / (beta B))^(1 / (alpha + beta)).

    Setting dL/dN = 0 along D = C / (6 N) gives alpha A / N^alpha = beta B / D^beta.
    """
    total = self.alpha + self.beta
    g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / total)
    return g * (np.asarray(c, dtype=np.float64) / FLOPS_PER_PARAM_TOKEN) ** (self.beta / total)


def chinchilla_loss(n, d, p: Chinchilla):
  n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
  return p.E + p.A / n**p.alpha + p.B / d**p.beta


def chinchilla_log_loss(theta, log_n, log_d):
  """log L = logsumexp(a - alpha log N, b - beta log D, e), Epoch's form (jax)."""
  a, b, e, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
  terms = jnp.stack([a - alpha * log_n, b - beta * log_d, jnp.broadcast_to(e, log_n.shape)])
  return jax.nn.logsumexp(terms, axis=0)


# Kaplan et al. 2020: L(N) = (Nc / N)^alpha_n, L(D) = (Dc / D)^alpha_d and
# L(N, D) = [(Nc / N)^(alpha_n / alpha_d) + Dc / D]^alpha_d.


@dataclasses.dataclass(frozen=True)
class Kaplan:
  """Coefficients of Kaplan's L(N, D) = [(Nc / N)^(alpha_N / alpha_D) + Dc / D]^alpha_D."""

  Nc: float
  Dc: float
  alpha_N: float
  alpha_D: float

  @classmethod
  def from_theta(cls, theta) -> Kaplan:
    n, d, p, alpha_d = (float(v) for v in theta)
    return cls(Nc=np.exp(n), Dc=np.exp(d), alpha_N=p * alpha_d, alpha_D=alpha_d)

  @classmethod
  def from_mapping(cls, values: Mapping[str, float]) -> Kaplan:
    return cls(**{f.name: float(values[f.name]) for f in dataclasses.fields(cls)})

  def theta(self) -> np.ndarray:
    return np.array([np.log(self.Nc), np.log(self.Dc), self.alpha_N / self.alpha_D, self.alpha_D])

  def loss(self, n, d):
    return kaplan_loss_nd(n, d, self)

  def optimal_exponents(self) -> tuple[float, float]:
    """(a, b) for the minimum of L(N, D) along C = 6 N D: a = alpha_D / (alpha_N + alpha_D).

    This is the frontier of the fitted L(N, D), not Kaplan's early-stopping frontier (their
    N_opt ∝ C^0.73 came from L(N, S), which this module does not fit).
    """
    total = self.alpha_N + self.alpha_D
    return self.alpha_D / total, self.alpha_N / total

  def optimal_n(self, c):
    """N_opt(C) = [p Nc^p C / (6 Dc)]^(1 / (1 + p)) with p = alpha_N / alpha_D.

    The bracket [(Nc / N)^p + 6 Dc N / C] is minimal where p Nc^p N^-(p+1) = 6 Dc / C.
    """
    p = self.alpha_N / self.alpha_D
    c = np.asarray(c, dtype=np.float64)
    # Logs keep Nc^p (Nc is often ~1e14) inside float range.
    log_n = (np.log(p) + p * np.log(self.Nc) + np.log(c) - np.log(FLOPS_PER_PARAM_TOKEN * self.Dc))
    return np.exp(log_n / (1.0 + p))


def kaplan_loss_n(n, nc: float, alpha_n: float):
  return (nc / np.asarray(n, dtype=np.float64)) ** alpha_n


def kaplan_loss_d(d, dc: float, alpha_d: float):
  return (dc / np.asarray(d, dtype=np.float64)) ** alpha_d


def kaplan_loss_nd(n, d, p: Kaplan):
  n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
  log_n_term = (p.alpha_N / p.alpha_D) * (np.log(p.Nc) - np.log(n))
  return np.exp(p.alpha_D * np.logaddexp(log_n_term, np.log(p.Dc) - np.log(d)))


def kaplan_log_loss_nd(theta, log_n, log_d):
  """log L = alpha_d * logaddexp(p (n - log N), d - log D) (jax)."""
  n, d, p, alpha_d = theta[0], theta[1], theta[2], theta[3]
  return alpha_d * jnp.logaddexp(p * (n - log_n), d - log_d)


# Power laws for the compute-optimal allocation (Approaches 1 and 2): y = k C^exponent.


def fit_power_law(c, y) -> tuple[float, float]:
  """Least squares of log y on log C; returns (k, exponent) with y ≈ k C^exponent."""
  exponent, log_k = np.polyfit(np.log(c), np.log(y), 1)
  return float(np.exp(log_k)), float(exponent)


def power_law(c, k: float, exponent: float):
  return k * np.asarray(c, dtype=np.float64) ** exponent
