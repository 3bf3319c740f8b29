"""Synthetic sweeps drawn from known scaling laws with seeded noise, for recovery tests."""

from __future__ import annotations

import numpy as np

from experiments.scaling_laws import data as data_lib
from experiments.scaling_laws import laws

# Close to Epoch's refit of Chinchilla, so the synthetic sweeps look like real ones.
CHINCHILLA = laws.Chinchilla(E=1.8, A=400.0, B=2000.0, alpha=0.34, beta=0.37)
# Kaplan et al. 2020's published L(N, D) coefficients (their Table 2).
KAPLAN = laws.Kaplan(Nc=8.8e13, Dc=5.4e13, alpha_N=0.076, alpha_D=0.095)


def _noisy(loss, sigma, rng):
  """Multiplicative (log-normal) noise: seed-to-seed spread of final losses."""
  return loss * np.exp(sigma * rng.standard_normal(np.shape(loss)))


def chinchilla_scatter(seed: int, n: int = 150, sigma: float = 0.01) -> data_lib.ScalingData:
  """Runs at log-uniform N in [3e7, 1e10] and D in [1e9, 3e11] (the Approach 3 design)."""
  rng = np.random.default_rng(seed)
  n_params = 10**rng.uniform(7.5, 10, n)
  tokens = 10**rng.uniform(9, 11.5, n)
  loss = _noisy(CHINCHILLA.loss(n_params, tokens), sigma, rng)
  return data_lib.from_arrays(n_params, tokens, loss)


def chinchilla_isoflops(seed: int, sigma: float = 0.003) -> data_lib.ScalingData:
  """7 budgets 1e18..1e21 FLOP, 11 sizes each spanning +-0.6 dex around the true N_opt."""
  rng = np.random.default_rng(seed)
  budgets = np.repeat(np.geomspace(1e18, 1e21, 7), 11)
  n_params = CHINCHILLA.optimal_n(budgets) * np.tile(np.geomspace(10**-0.6, 10**0.6, 11), 7)
  tokens = laws.tokens_for_budget(n_params, budgets)
  return data_lib.from_arrays(n_params, tokens,
                              _noisy(CHINCHILLA.loss(n_params, tokens), sigma, rng), budgets)


def chinchilla_compute_scatter(seed: int, n: int = 1500,
                               sigma: float = 0.002) -> data_lib.ScalingData:
  """Runs at log-uniform C in [1e18, 1e21] and N within +-1 dex of N_opt(C) (Approach 1 design)."""
  rng = np.random.default_rng(seed)
  budgets = 10**rng.uniform(18, 21, n)
  n_params = CHINCHILLA.optimal_n(budgets) * 10**rng.uniform(-1, 1, n)
  tokens = laws.tokens_for_budget(n_params, budgets)
  return data_lib.from_arrays(n_params, tokens,
                              _noisy(CHINCHILLA.loss(n_params, tokens), sigma, rng), budgets)


def kaplan_sweep(seed: int, sigma: float = 0.005) -> data_lib.ScalingData:
  """Kaplan's design: 17 sizes x 8 token counts (long runs give L(N)), plus one 1e12-parameter
  model on 13 data subsets (gives L(D))."""
  rng = np.random.default_rng(seed)
  n_grid, d_grid = np.meshgrid(np.logspace(6, 10, 17), np.logspace(8.5, 12, 8))
  n_params = np.concatenate([n_grid.ravel(), np.full(13, 1e12)])
  tokens = np.concatenate([d_grid.ravel(), np.logspace(7, 10, 13)])
  return data_lib.from_arrays(n_params, tokens, _noisy(KAPLAN.loss(n_params, tokens), sigma, rng))


def chinchilla_allocation_truth() -> dict[str, float]:
  """True a, b, k_N, k_D of N_opt = k_N C^a, D_opt = k_D C^b for CHINCHILLA."""
  a, b = CHINCHILLA.optimal_exponents()
  g = CHINCHILLA.optimal_n(laws.FLOPS_PER_PARAM_TOKEN)  # G, since (C / 6)^a = 1 at C = 6
  return {'a': a, 'b': b, 'k_N': g * laws.FLOPS_PER_PARAM_TOKEN**-a,
          'k_D': laws.FLOPS_PER_PARAM_TOKEN**(a - 1) / g}
