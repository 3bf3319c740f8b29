"""Law forms: log-space fitting forms agree with the natural forms; Huber penalty values."""

from __future__ import annotations

import jax
import numpy as np

from experiments.scaling_laws import laws


def test_chinchilla_log_form_matches_natural_form():
  rng = np.random.default_rng(0)
  p = laws.Chinchilla(E=1.7, A=350.0, B=900.0, alpha=0.31, beta=0.29)
  n, d = 10**rng.uniform(6, 12, 50), 10**rng.uniform(8, 13, 50)
  with jax.enable_x64(True):
    log_loss = np.asarray(laws.chinchilla_log_loss(p.theta(), np.log(n), np.log(d)))
  np.testing.assert_allclose(log_loss, np.log(p.E + p.A / n**p.alpha + p.B / d**p.beta), rtol=1e-12)
  back = laws.Chinchilla.from_theta(p.theta())
  np.testing.assert_allclose([back.E, back.A, back.B, back.alpha, back.beta],
                             [1.7, 350.0, 900.0, 0.31, 0.29], rtol=1e-12)
  np.testing.assert_allclose(p.optimal_exponents(), [0.29 / 0.6, 0.31 / 0.6], rtol=1e-12)


def test_kaplan_log_form_matches_natural_form():
  rng = np.random.default_rng(1)
  p = laws.Kaplan(Nc=8.8e13, Dc=5.4e13, alpha_N=0.076, alpha_D=0.095)
  n, d = 10**rng.uniform(6, 12, 50), 10**rng.uniform(8, 13, 50)
  with jax.enable_x64(True):
    log_loss = np.asarray(laws.kaplan_log_loss_nd(p.theta(), np.log(n), np.log(d)))
  natural = ((p.Nc / n)**(p.alpha_N / p.alpha_D) + p.Dc / d)**p.alpha_D
  np.testing.assert_allclose(log_loss, np.log(natural), rtol=1e-12)
  np.testing.assert_allclose(laws.kaplan_loss_nd(n, d, p), natural, rtol=1e-12)
  np.testing.assert_allclose(laws.Kaplan.from_theta(p.theta()).theta(), p.theta(), rtol=1e-12)
  # The limits: with D -> infinity L(N, D) -> L(N), with N -> infinity -> L(D).
  np.testing.assert_allclose(laws.kaplan_loss_nd(1e8, 1e40, p),
                             laws.kaplan_loss_n(1e8, p.Nc, p.alpha_N), rtol=1e-9)
  np.testing.assert_allclose(laws.kaplan_loss_nd(1e60, 1e9, p),
                             laws.kaplan_loss_d(1e9, p.Dc, p.alpha_D), rtol=1e-9)


def test_huber_is_quadratic_inside_delta_and_linear_outside():
  r = np.array([-0.5e-3, 0.0, 1e-3, 3e-3, -5e-3])
  with jax.enable_x64(True):
    h = np.asarray(laws.huber(r, 1e-3))
  expected = [0.125e-6, 0.0, 0.5e-6, 1e-3 * (3e-3 - 0.5e-3), 1e-3 * (5e-3 - 0.5e-3)]
  np.testing.assert_allclose(h, expected, rtol=1e-12)


def test_power_law_fit_recovers_exact_power_law():
  c = np.geomspace(1e18, 1e22, 9)
  k, exponent = laws.fit_power_law(c, laws.power_law(c, 0.13, 0.47))
  np.testing.assert_allclose([k, exponent], [0.13, 0.47], rtol=1e-9)
