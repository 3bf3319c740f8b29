"""The compute-optimal frontier: closed forms, brute force along C = 6 N D, intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.scaling_laws import laws
from experiments.scaling_laws import optimal
from research.errors import UserError

BUDGETS = np.array([1e18, 3.7e20, 5.76e23, 1e26])


def _random_chinchillas(count: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    yield {'E': rng.uniform(1, 2.5), 'A': 10**rng.uniform(1.5, 4), 'B': 10**rng.uniform(2, 4.5),
           'alpha': rng.uniform(0.2, 0.6), 'beta': rng.uniform(0.2, 0.6)}


@pytest.mark.parametrize('values', list(_random_chinchillas(6)))
def test_chinchilla_frontier_matches_closed_form_and_brute_force(values):
  alpha, beta, big_a, big_b = values['alpha'], values['beta'], values['A'], values['B']
  g = (alpha * big_a / (beta * big_b))**(1 / (alpha + beta))
  closed_n = g * (BUDGETS / 6)**(beta / (alpha + beta))
  got = optimal.allocation('approach3', values, BUDGETS)
  np.testing.assert_allclose(got.N_opt, closed_n, rtol=1e-12)
  np.testing.assert_allclose(got.D_opt, BUDGETS / (6 * closed_n), rtol=1e-12)
  np.testing.assert_allclose(got.tokens_per_param, got.D_opt / got.N_opt)
  law = laws.Chinchilla.from_mapping(values)
  for c, n_opt, d_opt, loss in zip(BUDGETS, got.N_opt, got.D_opt, got.loss):
    n, d, brute_loss = optimal.minimize_along_budget(law.loss, c)
    assert n == pytest.approx(n_opt, rel=1e-5)
    assert d == pytest.approx(d_opt, rel=1e-5)
    assert loss == pytest.approx(brute_loss, rel=1e-12)
    assert loss == pytest.approx(law.loss(n_opt, d_opt), rel=1e-12)


def test_kaplan_frontier_matches_brute_force():
  rng = np.random.default_rng(1)
  for _ in range(5):
    values = {'Nc': 10**rng.uniform(12, 15), 'Dc': 10**rng.uniform(12, 15),
              'alpha_N': rng.uniform(0.05, 0.12), 'alpha_D': rng.uniform(0.05, 0.12)}
    got = optimal.allocation('kaplan_nd', values, BUDGETS)
    law = laws.Kaplan.from_mapping(values)
    a, _ = law.optimal_exponents()
    np.testing.assert_allclose(np.diff(np.log(got.N_opt)) / np.diff(np.log(BUDGETS)), a, rtol=1e-10)
    for c, n_opt in zip(BUDGETS, got.N_opt):
      n, _, _ = optimal.minimize_along_budget(law.loss, c)
      assert n == pytest.approx(n_opt, rel=1e-5)


def test_power_law_frontiers():
  values = {'a': 0.5, 'b': 0.5, 'k_N': 0.1, 'k_D': 1.7}
  got = optimal.allocation('approach2', values, BUDGETS)
  np.testing.assert_allclose(got.N_opt, 0.1 * BUDGETS**0.5)
  np.testing.assert_allclose(got.D_opt, 1.7 * BUDGETS**0.5)
  assert np.all(np.isnan(got.loss))


def test_frontier_intervals_come_from_bootstrap_samples():
  rng = np.random.default_rng(2)
  centre = {'E': 1.8, 'A': 480.0, 'B': 2100.0, 'alpha': 0.35, 'beta': 0.37}
  samples = {k: v * np.exp(0.02 * rng.standard_normal(300)) for k, v in centre.items()}
  spec = optimal.FitSpec('approach3', centre, samples)
  f = optimal.frontier(spec, BUDGETS)
  assert f.n_samples == 300
  per_sample = [optimal.allocation('approach3', {k: s[i] for k, s in samples.items()}, BUDGETS)
                for i in range(300)]
  n_samples = np.array([p.N_opt for p in per_sample])
  np.testing.assert_allclose(f.lower.N_opt, np.percentile(n_samples, 2.5, axis=0), rtol=1e-12)
  np.testing.assert_allclose(f.upper.N_opt, np.percentile(n_samples, 97.5, axis=0), rtol=1e-12)
  assert np.all(f.lower.N_opt < f.estimate.N_opt) and np.all(f.estimate.N_opt < f.upper.N_opt)
  assert np.all(f.lower.loss < f.estimate.loss) and np.all(f.estimate.loss < f.upper.loss)
  assert optimal.frontier(optimal.FitSpec('approach3', centre), BUDGETS).lower is None


def test_load_fits_keeps_successful_frontier_fits(tmp_path):
  path = tmp_path / 'fit.json'
  path.write_text(json.dumps({'fits': {
      'approach3': {'status': 'ok', 'law': 'L', 'params': {k: {'value': v} for k, v in
                    {'E': 1.8, 'A': 480.0, 'B': 2100.0, 'alpha': 0.35, 'beta': 0.37}.items()}},
      'approach2': {'status': 'skipped', 'reason': 'no groups'},
      'kaplan_n': {'status': 'ok', 'params': {'Nc': {'value': 1e13},
                                              'alpha_N': {'value': 0.07}}}}}))
  specs = optimal.load_fits(str(path))
  assert list(specs) == ['approach3'] and specs['approach3'].values['beta'] == 0.37
  with pytest.raises(UserError, match='no such file'):
    optimal.load_fits(str(tmp_path / 'missing.json'))
  with pytest.raises(UserError, match=r'--flops=5e23,x: expected comma-separated positive'):
    optimal.parse_flops('5e23,x')
