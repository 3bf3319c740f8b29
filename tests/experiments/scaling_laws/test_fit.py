"""Fits: Epoch's Chinchilla reproduction, recovery of known laws, skipped approaches."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments.scaling_laws import data as data_lib
from experiments.scaling_laws import fit
from experiments.scaling_laws import laws
from tests.experiments.scaling_laws import synthetic

# Besiroglu et al. 2024 (Epoch), 95% intervals of their refit on 240 points.
EPOCH_INTERVALS = {'E': (1.77, 1.87), 'A': (285, 744), 'B': (1042, 5810), 'alpha': (0.317, 0.373),
                   'beta': (0.331, 0.415)}
EPOCH_ESTIMATES = {'E': 1.82, 'A': 482, 'B': 2085, 'alpha': 0.348, 'beta': 0.366, 'a': 0.513}
HOFFMANN = laws.Chinchilla(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@pytest.fixture(scope='module')
def epoch_points(epoch_csv):
  return data_lib.read_csv(epoch_csv, drop_highest=5)


@pytest.fixture(scope='module')
def epoch_fit(epoch_points):
  return fit.fit_approach3(epoch_points)


def test_epoch_approach3_lands_inside_epochs_intervals(epoch_points, epoch_fit):
  assert len(epoch_points) == 240
  assert epoch_fit.info['converged'] and epoch_fit.info['grad_norm'] < 1e-6
  for name, (lo, hi) in EPOCH_INTERVALS.items():
    assert lo <= epoch_fit.values[name] <= hi, (name, epoch_fit.values[name])
  # Closer than the intervals: Epoch's point estimates to their printed precision (B and A are
  # poorly determined along a ridge, hence the looser relative tolerance).
  for name, tol in (('E', 0.01), ('alpha', 0.003), ('beta', 0.003), ('a', 0.003)):
    assert abs(epoch_fit.values[name] - EPOCH_ESTIMATES[name]) < tol, name
  for name in ('A', 'B'):
    assert epoch_fit.values[name] == pytest.approx(EPOCH_ESTIMATES[name], rel=0.05), name


def test_epoch_fit_does_not_stall_at_hoffmanns_published_optimum(epoch_points, epoch_fit):
  ours = fit.approach3_objective(epoch_points, laws.Chinchilla.from_mapping(epoch_fit.values))
  hoffmann = fit.approach3_objective(epoch_points, HOFFMANN)
  assert ours == pytest.approx(epoch_fit.info['objective'], rel=1e-9)
  assert ours < 0.5 * hoffmann
  assert abs(epoch_fit.values['beta'] - 0.28) > 0.03
  # Started at Hoffmann's point itself, BFGS must leave it for the same optimum.
  with jax.enable_x64(True):
    objective = fit.Objective(fit.approach3_objective_fn(epoch_points), len(epoch_points))
    from_hoffmann = objective.minimize(HOFFMANN.theta())
  assert from_hoffmann.converged
  assert from_hoffmann.value == pytest.approx(ours, rel=1e-6)
  np.testing.assert_allclose(from_hoffmann.theta, epoch_fit.extra['theta'], atol=1e-3)


def _assert_inside_own_intervals(result: fit.Fit, truth: dict[str, float]):
  checked = [name for name in truth if name in result.values]
  assert checked
  for name in checked:
    lo, hi = result.interval(name)
    assert lo <= truth[name] <= hi, (result.name, name, truth[name], (lo, hi), result.values[name])
    assert lo <= result.values[name] <= hi, (result.name, name)


def test_approach3_recovers_a_known_law():
  result = fit.fit_approach3(synthetic.chinchilla_scatter(seed=0), bootstrap=40, seed=0)
  truth = {'E': 1.8, 'A': 400.0, 'B': 2000.0, 'alpha': 0.34, 'beta': 0.37}
  truth['a'], truth['b'] = synthetic.CHINCHILLA.optimal_exponents()
  assert result.info['bootstrap_failures'] == 0 and len(result.samples['a']) == 40
  _assert_inside_own_intervals(result, truth)
  # Intervals that contain the truth by being huge would be useless.
  lo, hi = result.interval('a')
  assert hi - lo < 0.12


def test_approach2_recovers_the_allocation_of_a_known_law():
  result = fit.fit_approach2(synthetic.chinchilla_isoflops(seed=0), bootstrap=200, seed=0)
  assert result.info['isoflop_groups'] == 7 and result.info['isoflop_minima'] == 7
  _assert_inside_own_intervals(result, synthetic.chinchilla_allocation_truth())
  lo, hi = result.interval('a')
  assert hi - lo < 0.05


def test_approach1_recovers_the_allocation_of_a_known_law():
  result = fit.fit_approach1(synthetic.chinchilla_compute_scatter(seed=0), bootstrap=200, seed=0)
  assert result.info['envelope_points'] >= 25
  _assert_inside_own_intervals(result, synthetic.chinchilla_allocation_truth())
  lo, hi = result.interval('a')
  assert hi - lo < 0.1


def test_kaplan_recovers_joint_and_limit_laws():
  sweep = synthetic.kaplan_sweep(seed=0)
  k = synthetic.KAPLAN
  a, b = k.optimal_exponents()
  truth = {'Nc': k.Nc, 'Dc': k.Dc, 'alpha_N': k.alpha_N, 'alpha_D': k.alpha_D, 'a': a, 'b': b}
  joint = fit.fit_kaplan_nd(sweep, bootstrap=50, seed=0)
  assert joint.info['converged']
  _assert_inside_own_intervals(joint, truth)
  for limit in (fit.fit_kaplan_n(sweep, joint, bootstrap=200, seed=0),
                fit.fit_kaplan_d(sweep, joint, bootstrap=200, seed=0)):
    _assert_inside_own_intervals(limit, truth)
  # L(N) uses the longest run of each of the 17 sizes; L(D) the 1e12-parameter model's 13 runs.
  n_limit = fit.fit_kaplan_n(sweep, joint)
  d_limit = fit.fit_kaplan_d(sweep, joint)
  assert n_limit.info['n_points'] == 17 and np.all(sweep.D[n_limit.extra['used']] == 1e12)
  assert d_limit.info['n_points'] == 13 and np.all(sweep.N[d_limit.extra['used']] == 1e12)


def test_bootstrap_is_seeded():
  sweep = synthetic.chinchilla_isoflops(seed=1)
  first = fit.fit_approach2(sweep, bootstrap=20, seed=3)
  again = fit.fit_approach2(sweep, bootstrap=20, seed=3)
  other = fit.fit_approach2(sweep, bootstrap=20, seed=4)
  np.testing.assert_array_equal(first.samples['a'], again.samples['a'])
  assert not np.array_equal(first.samples['a'], other.samples['a'])


def test_inapplicable_approaches_are_skipped_with_reasons():
  # Every run at its own budget, 0.05 dex apart: no IsoFLOP groups.
  rng = np.random.default_rng(0)
  c = np.geomspace(1e18, 1e21, 61)
  n = synthetic.CHINCHILLA.optimal_n(c) * 10**rng.uniform(-1, 1, c.size)
  spread = data_lib.from_arrays(n, c / (6 * n), synthetic.CHINCHILLA.loss(n, c / (6 * n)), c)
  results = fit.fit_all(spread, ['2', '1'])
  assert isinstance(results['approach2'], fit.Skipped)
  assert 'found 0 groups' in results['approach2'].reason
  assert isinstance(results['approach1'], fit.Fit)  # the envelope needs no budgets

  # Kaplan data without long runs: no data-unlimited points, so no L(N).

  n_grid, d_grid = np.meshgrid(np.logspace(8, 10, 6), np.logspace(7, 9, 6))
  n, d = n_grid.ravel(), d_grid.ravel()
  loss = synthetic.KAPLAN.loss(n, d) * np.exp(0.003 * rng.standard_normal(n.size))
  short_runs = data_lib.from_arrays(n, d, loss)
  messages = []
  results = fit.fit_all(short_runs, ['kaplan'], log=messages.append)
  assert isinstance(results['kaplan_nd'], fit.Fit)
  assert isinstance(results['kaplan_n'], fit.Skipped)
  assert 'data-unlimited' in results['kaplan_n'].reason
  assert any(m.startswith('kaplan_n: skipped: Kaplan L(N) needs data-unlimited') for m in messages)
  table = fit.format_table(results)
  assert 'kaplan_n   skipped:' in table


def test_isoflop_groups_share_a_budget_across_rounding_edges():
  # 3e19 FLOP sits at log10 C = 19.477: rounding to 0.1 dex would split runs at +-3% around it.
  n = np.array([1e8, 2e8, 4e8, 8e8, 1e8, 2e8, 4e8, 1e8, 3e8])
  c = np.array([2.9e19, 3.0e19, 3.05e19, 2.95e19, 1e20, 1.01e20, 0.99e20, 3e21, 3e21])
  d = data_lib.from_arrays(n, c / (6 * n), np.full(n.size, 3.0), c)
  groups = fit.isoflop_groups(d)
  assert [list(g) for g in groups] == [[0, 1, 2, 3], [4, 5, 6]]  # the 3e21 pair has 2 sizes


def test_loss_envelope_keeps_only_improving_bins():
  c = np.array([1.0e18, 1.1e18, 2e18, 4e18, 8e18, 1.6e19])
  loss = np.array([3.0, 2.9, 3.1, 2.7, 2.8, 2.5])
  d = data_lib.from_arrays(np.full(6, 1e8), c / 6e8, loss, c)
  # Bin 18.0-18.1 -> point 1 (2.9); 18.3 -> 3.1 is worse: out; 18.6 -> 2.7; 18.9 -> 2.8 worse; 19.2.
  np.testing.assert_array_equal(fit.loss_envelope(d), [1, 3, 5])
