"""Advantages, whitening, GRPO groups, KL estimators and PPO rewards against plain references."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.errors import ConfigError
from research.rl import advantages


def ragged_mask(rng, b, t):
  """Contiguous responses starting and ending anywhere, one row empty and one full."""
  mask = np.zeros((b, t), np.float32)
  for row in range(b):
    if row == 0:
      continue  # empty: a padding row
    start, end = (0, t) if row == 1 else sorted(rng.choice(t + 1, 2, replace=False))
    mask[row, start:end] = 1.0
  return mask


def gae_reference(rewards, values, mask, gamma, lam):
  """A_t = sum_l (gamma lam)^l delta_{t+l} over the row's response, V = 0 past its end."""
  adv = np.zeros_like(rewards, np.float64)
  for row in range(rewards.shape[0]):
    cols = np.flatnonzero(mask[row])
    r, v = rewards[row, cols].astype(np.float64), values[row, cols].astype(np.float64)
    v_next = np.append(v[1:], 0.0)
    delta = r + gamma * v_next - v
    for i, col in enumerate(cols):
      adv[row, col] = sum((gamma * lam) ** l * delta[i + l] for l in range(len(cols) - i))
  return adv


@pytest.mark.parametrize('gamma,lam', [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.5, 1.0)])
def test_gae_matches_reference_on_ragged_rows(gamma, lam):
  rng = np.random.default_rng(0)
  b, t = 6, 9
  mask = ragged_mask(rng, b, t)
  rewards = rng.normal(size=(b, t)).astype(np.float32)
  values = rng.normal(size=(b, t)).astype(np.float32)
  # Junk outside the mask must be ignored.
  rewards[mask == 0] = np.nan
  values[mask == 0] = 1e30
  fn = jax.jit(functools.partial(advantages.gae, gamma=gamma, lam=lam))
  adv, ret = fn(rewards, values, mask)
  expected = gae_reference(np.nan_to_num(rewards), values, mask, gamma, lam)
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, np.where(mask > 0, expected + values, 0.0), rtol=1e-5,
                             atol=1e-5)
  assert adv.dtype == ret.dtype == jnp.float32
  assert np.all(np.asarray(adv)[mask == 0] == 0) and np.all(np.asarray(ret)[mask == 0] == 0)
  if gamma == lam == 1.0:  # advantages are the returns-to-go minus V
    for row in range(b):
      cols = np.flatnonzero(mask[row])
      to_go = np.cumsum(rewards[row, cols][::-1])[::-1]
      np.testing.assert_allclose(adv[row, cols], to_go - values[row, cols], rtol=1e-5,
                                 atol=1e-5)


def test_gae_hand_computed():
  # Row 0: prompt at column 0, response at 1-2. Row 1: response at 0-1, padding at 2.
  # gamma = lam = 0.5, so gamma lam = 0.25.
  # Row 0: t=2: delta = 2 - 1 = 1, A = 1; t=1: delta = 1 + 0.5 * 1 - 0.5 = 1, A = 1 + 0.25 = 1.25.
  # Row 1: t=1: delta = 1 - 2 = -1, A = -1; t=0: delta = 1 + 0.5 * 2 - 0 = 2, A = 2 - 0.25.
  rewards = [[9.0, 1.0, 2.0], [1.0, 1.0, 5.0]]
  values = [[7.0, 0.5, 1.0], [0.0, 2.0, 9.0]]
  mask = [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
  adv, ret = advantages.gae(jnp.array(rewards), jnp.array(values), jnp.array(mask), gamma=0.5,
                            lam=0.5)
  np.testing.assert_allclose(adv, [[0.0, 1.25, 1.0], [1.75, -1.0, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[0.0, 1.75, 2.0], [1.75, 1.0, 0.0]], rtol=1e-6)


def test_gae_rejects_bad_discounts():
  ones = jnp.ones((2, 3))
  with pytest.raises(ConfigError, match='rl.gamma'):
    advantages.gae(ones, ones, ones, gamma=1.5, lam=1.0)
  with pytest.raises(ConfigError, match='rl.lam'):
    advantages.gae(ones, ones, ones, gamma=1.0, lam=-0.1)


def test_whiten_mean_zero_std_one_on_mask():
  rng = np.random.default_rng(1)
  mask = ragged_mask(rng, 5, 11)
  x = (3.0 + 2.5 * rng.normal(size=mask.shape)).astype(np.float32)
  x[mask == 0] = np.nan
  out = np.asarray(jax.jit(advantages.whiten)(x, mask))
  on = out[mask > 0]
  assert abs(on.mean()) < 1e-5
  assert abs(on.std() - 1.0) < 1e-5
  assert np.all(out[mask == 0] == 0)
  np.testing.assert_allclose(on, (x[mask > 0] - x[mask > 0].mean()) / x[mask > 0].std(),
                             rtol=1e-4, atol=1e-5)
  # shift_mean=False scales without centring: x / std.
  scaled = np.asarray(advantages.whiten(x, mask, shift_mean=False))
  np.testing.assert_allclose(scaled[mask > 0], x[mask > 0] / x[mask > 0].std(), rtol=1e-5)
  assert np.all(scaled[mask == 0] == 0)


def test_whiten_constant_is_zero_not_nan():
  out = advantages.whiten(jnp.full((2, 3), 4.0), jnp.ones((2, 3)))
  np.testing.assert_array_equal(out, np.zeros((2, 3)))


def group_reference(rewards, g, normalization, eps=1e-6):
  out = np.zeros_like(rewards, np.float64)
  for start in range(0, len(rewards), g):
    group = rewards[start:start + g].astype(np.float64)
    adv = group - group.mean()
    if normalization == 'std':
      adv = adv / (np.sqrt(np.mean((group - group.mean()) ** 2)) + eps)
    out[start:start + g] = adv
  return out


@pytest.mark.parametrize('normalization', ['std', 'none'])
def test_group_advantages_match_reference(normalization):
  rng = np.random.default_rng(2)
  g = 4
  rewards = rng.normal(size=(5 * g,)).astype(np.float32)
  rewards[:g] = 0.7  # a group whose samples all scored the same
  rewards[g:2 * g] = [1.0, 0.0, 0.0, 0.0]  # a verifier's 0/1 scores
  fn = jax.jit(functools.partial(advantages.group_advantages, group_size=g,
                                 normalization=normalization))
  adv = np.asarray(fn(rewards))
  np.testing.assert_allclose(adv, group_reference(rewards, g, normalization), rtol=1e-5,
                             atol=1e-6)
  assert np.all(adv[:g] == 0)
  if normalization == 'std':  # population std: 1 -> (1 - 0.25) / sqrt(3/16) = sqrt(3)
    np.testing.assert_allclose(adv[g:2 * g], [np.sqrt(3), -1 / np.sqrt(3), -1 / np.sqrt(3),
                                              -1 / np.sqrt(3)], rtol=1e-5)
  else:
    np.testing.assert_allclose(adv[g:2 * g], [0.75, -0.25, -0.25, -0.25], rtol=1e-6)


def test_group_advantages_rejects_bad_arguments():
  rewards = jnp.zeros((6,))
  with pytest.raises(ConfigError, match='rl.samples_per_prompt'):
    advantages.group_advantages(rewards, 4)
  with pytest.raises(ConfigError, match='rl.samples_per_prompt'):
    advantages.group_advantages(rewards, 0)
  with pytest.raises(ConfigError, match='rl.advantage_normalization'):
    advantages.group_advantages(rewards, 3, normalization='mad')


def test_kl_estimators_match_formulas():
  rng = np.random.default_rng(3)
  logp = np.log(rng.uniform(0.01, 1.0, (4, 7))).astype(np.float32)
  ref = np.log(rng.uniform(0.01, 1.0, (4, 7))).astype(np.float32)
  d = ref.astype(np.float64) - logp
  np.testing.assert_allclose(advantages.kl_estimate(logp, ref, 'k1'), -d, rtol=1e-5)
  np.testing.assert_allclose(advantages.kl_estimate(logp, ref, 'k2'), 0.5 * d ** 2, rtol=1e-5)
  k3 = np.asarray(advantages.kl_estimate(logp, ref, 'k3'))
  np.testing.assert_allclose(k3, np.exp(d) - d - 1, rtol=1e-5, atol=1e-7)
  assert np.all(k3 >= 0)
  # Tiny differences: exp(d) - 1 - d in float32 would be 0 or noise; k3 ~ d^2 / 2.
  tiny = advantages.kl_estimate(jnp.zeros(3), jnp.array([1e-3, -1e-3, 2e-4]), 'k3')
  np.testing.assert_allclose(tiny, [5e-7, 5e-7, 2e-8], rtol=1e-3)
  with pytest.raises(ConfigError, match='rl.kl_estimator'):
    advantages.kl_estimate(logp, ref, 'k4')


def test_k1_and_k3_are_unbiased_for_sampled_tokens():
  pi = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
  ref = np.array([0.1, 0.3, 0.2, 0.2, 0.2])
  exact = float(np.sum(pi * np.log(pi / ref)))
  tokens = np.random.default_rng(4).choice(len(pi), size=(200, 1000), p=pi)
  logp, ref_logp = np.log(pi)[tokens], np.log(ref)[tokens]
  for kind in ('k1', 'k3'):
    mean = float(jnp.mean(advantages.kl_estimate(logp, ref_logp, kind)))
    assert abs(mean - exact) < 0.02 * exact + 0.005, (kind, mean, exact)
  # k2 is biased: a check that the Monte Carlo test above can tell (here k2 is off by > 10 %).
  k2 = float(jnp.mean(advantages.kl_estimate(logp, ref_logp, 'k2')))
  assert abs(k2 - exact) > 0.1 * exact


def test_token_rewards_score_on_last_token_of_ragged_rows():
  mask = np.array([[0, 1, 1, 1, 0],   # ends early
                   [0, 0, 1, 1, 1],   # ends at the last column
                   [1, 0, 0, 0, 0],   # one token
                   [0, 0, 0, 0, 0]],  # no response
                  np.float32)
  rng = np.random.default_rng(5)
  logp = np.log(rng.uniform(0.05, 1.0, mask.shape)).astype(np.float32)
  ref = np.log(rng.uniform(0.05, 1.0, mask.shape)).astype(np.float32)
  logp[mask == 0] = -np.inf  # padding junk must not leak
  scores = np.array([1.0, -2.0, 3.0, 4.0], np.float32)
  kl_coef = 0.1
  fn = jax.jit(functools.partial(advantages.token_rewards, kl_coef=kl_coef, kl_kind='k1'))
  rewards = np.asarray(fn(scores, logp, ref, mask))
  expected = np.where(mask > 0, -kl_coef * (np.where(mask > 0, logp, 0.0) - ref), 0.0)
  for row, col in ((0, 3), (1, 4), (2, 0)):
    expected[row, col] += scores[row]
  np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-6)
  assert np.all(rewards[3] == 0)
  np.testing.assert_array_equal(advantages.last_token_mask(mask),
                                [[0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0],
                                 [0, 0, 0, 0, 0]])
  # k3 in the reward.
  k3 = advantages.token_rewards(scores, logp, ref, mask, kl_coef=kl_coef, kl_kind='k3')
  d = np.where(mask > 0, ref - logp, 0.0)
  expected = np.where(mask > 0, -kl_coef * (np.exp(d) - d - 1), 0.0)
  for row, col in ((0, 3), (1, 4), (2, 0)):
    expected[row, col] += scores[row]
  np.testing.assert_allclose(k3, expected, rtol=1e-5, atol=1e-6)
