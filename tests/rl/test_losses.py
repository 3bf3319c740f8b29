"""PPO/GRPO losses: gradients at ratio 1 and under clipping, aggregation, value loss, logging."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.errors import ConfigError
from research.rl import losses

B, T, V = 3, 5, 7
MASK = np.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], np.float32)


def _policy(seed):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(B, T, V)), jnp.float32)
  actions = jnp.asarray(rng.integers(0, V, (B, T)))
  return logits, actions


def _logp(logits_BTV, actions_BT):
  logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
  return jnp.take_along_axis(logp_BTV, actions_BT[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize('clip_low,clip_high', [(0.2, 0.2), (0.2, 0.28), (0.0, 0.1)])
@pytest.mark.parametrize('sequence_level', [False, True])
def test_gradient_at_ratio_one_is_the_vanilla_policy_gradient(clip_low, clip_high,
                                                              sequence_level):
  logits, actions = _policy(0)
  rng = np.random.default_rng(1)
  adv = jnp.asarray(rng.normal(size=(B, 1) if sequence_level else (B, T)), jnp.float32)

  def clipped(logits_BTV):
    logp_BT = _logp(logits_BTV, actions)
    loss_BT, clipped_BT = losses.clipped_policy_loss(
        logp_BT, jax.lax.stop_gradient(logp_BT), adv, MASK, clip_low=clip_low,
        clip_high=clip_high)
    return jnp.sum(loss_BT), clipped_BT

  def vanilla(logits_BTV):
    return -jnp.sum(adv * _logp(logits_BTV, actions) * MASK)

  (value, clipped_BT), grad = jax.value_and_grad(clipped, has_aux=True)(logits)
  np.testing.assert_allclose(value, -jnp.sum(adv * MASK), rtol=1e-6)  # -ratio A, ratio 1
  np.testing.assert_allclose(grad, jax.grad(vanilla)(logits), rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(grad).sum()) > 0  # a real gradient, not two zeros agreeing
  np.testing.assert_array_equal(clipped_BT, np.zeros((B, T)))


def _grad_wrt_logp(ratio, adv, clip_low=0.2, clip_high=0.28):
  """(d loss / d logp, loss, clipped) for one token at the given ratio and advantage."""
  old = jnp.log(jnp.array([[0.3]]))
  mask = jnp.ones((1, 1))

  def loss(logp):
    loss_BT, clipped_BT = losses.clipped_policy_loss(logp, old, jnp.array([[adv]]), mask,
                                                     clip_low=clip_low, clip_high=clip_high)
    return loss_BT.sum(), (loss_BT, clipped_BT)

  grad, (loss_BT, clipped_BT) = jax.grad(loss, has_aux=True)(old + jnp.log(ratio))
  return float(grad[0, 0]), float(loss_BT[0, 0]), float(clipped_BT[0, 0])


def test_clipping_stops_the_gradient_only_where_the_advantage_pushes_past_the_range():
  # A > 0 and the ratio above 1 + clip_high (1.28): clipped, no gradient, loss -1.28 A.
  grad, loss, clipped = _grad_wrt_logp(1.5, 2.0)
  assert (grad, clipped) == (0.0, 1.0)
  np.testing.assert_allclose(loss, -1.28 * 2.0, rtol=1e-6)
  # A < 0 and the ratio below 1 - clip_low (0.8): clipped, loss -0.8 A.
  grad, loss, clipped = _grad_wrt_logp(0.5, -2.0)
  assert (grad, clipped) == (0.0, 1.0)
  np.testing.assert_allclose(loss, 0.8 * 2.0, rtol=1e-6)
  # Asymmetric clip-higher: 1.25 is past 1 + 0.2 but inside 1 + 0.28.
  grad, _, clipped = _grad_wrt_logp(1.25, 2.0)
  assert clipped == 0.0
  np.testing.assert_allclose(grad, -1.25 * 2.0, rtol=1e-5)
  # The other sides are not clipped: the gradient is -ratio A (d ratio / d logp = ratio).
  for ratio, adv in ((0.5, 2.0), (1.5, -2.0), (1.1, 2.0), (0.9, -2.0)):
    grad, loss, clipped = _grad_wrt_logp(ratio, adv)
    assert clipped == 0.0
    np.testing.assert_allclose(grad, -ratio * adv, rtol=1e-5)
    np.testing.assert_allclose(loss, -ratio * adv, rtol=1e-5)


def test_policy_loss_ignores_padding_and_rejects_bad_clips():
  logp = np.zeros((B, T), np.float32)
  old = np.where(MASK > 0, 0.0, 200.0).astype(np.float32)  # exp(-200 - ...) junk off the mask
  logp[MASK == 0] = -np.inf
  loss_BT, clipped_BT = jax.jit(functools.partial(
      losses.clipped_policy_loss, clip_low=0.2, clip_high=0.2))(logp, old, np.ones((B, T)), MASK)
  np.testing.assert_array_equal(loss_BT, -MASK)
  np.testing.assert_array_equal(clipped_BT, np.zeros((B, T)))
  with pytest.raises(ConfigError, match='rl.clip_low'):
    losses.clipped_policy_loss(logp, old, logp, MASK, clip_low=1.0, clip_high=0.2)
  with pytest.raises(ConfigError, match='rl.clip_high'):
    losses.clipped_policy_loss(logp, old, logp, MASK, clip_low=0.2, clip_high=-0.1)


LOSS = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15], [9, 9, 9, 9, 9]],
                np.float32)
RAGGED = np.array([[0, 1, 1, 0, 0],   # 2 tokens: 2 + 3 = 5
                   [1, 1, 1, 1, 1],   # 5 tokens: 40
                   [0, 0, 0, 0, 1],   # 1 token: 15
                   [0, 0, 0, 0, 0]],  # a padding row
                  np.float32)


@pytest.mark.parametrize('mode,expected', [
    ('token', (5 + 40 + 15, 8)),
    ('sequence', (5 / 2 + 40 / 5 + 15 / 1, 3)),
    ('constant', ((5 + 40 + 15) / 10, 3)),
])
def test_aggregate_modes_by_hand(mode, expected):
  fn = jax.jit(functools.partial(losses.aggregate, mode=mode, max_len=10))
  loss_sum, weight_sum = fn(LOSS, RAGGED)
  np.testing.assert_allclose((loss_sum, weight_sum), expected, rtol=1e-6)
  # Micro-batches add sums and weights, then divide once: the same loss as the whole batch.
  parts = [fn(LOSS[rows], RAGGED[rows]) for rows in (slice(0, 1), slice(1, 4))]
  np.testing.assert_allclose(sum(p[0] for p in parts) / sum(p[1] for p in parts),
                             expected[0] / expected[1], rtol=1e-6)


def test_aggregate_rejects_bad_arguments():
  with pytest.raises(ConfigError, match='rl.loss_aggregation'):
    losses.aggregate(LOSS, RAGGED, 'batch')
  with pytest.raises(ConfigError, match='rl.loss_aggregation'):
    losses.aggregate(LOSS, RAGGED, 'constant')


def value_loss_reference(v, old, ret, mask, clip):
  v_clipped = old + np.clip(v - old, -clip, clip)
  return np.where(mask > 0, 0.5 * np.maximum((v - ret) ** 2, (v_clipped - ret) ** 2), 0.0)


def test_clipped_value_loss_matches_formula():
  rng = np.random.default_rng(2)
  v, old, ret = (rng.normal(size=(B, T)).astype(np.float32) for _ in range(3))
  fn = jax.jit(functools.partial(losses.clipped_value_loss, clip=0.2))
  np.testing.assert_allclose(fn(v, old, ret, MASK), value_loss_reference(v, old, ret, MASK, 0.2),
                             rtol=1e-5, atol=1e-6)
  # old 0 -> v 1 with clip 0.2 (v_clipped = 0.2). Return 2: the clipped error (1.8^2) is the
  # larger and the value gets no gradient. Return 0: the unclipped error (1^2) is, and it does.
  one = jnp.ones((1, 1))

  def loss_and_grad(ret):
    fn = lambda v: losses.clipped_value_loss(v, 0 * one, ret * one, one, clip=0.2).sum()
    return float(fn(one)), float(jax.grad(fn)(one)[0, 0])

  np.testing.assert_allclose(loss_and_grad(2.0), (0.5 * 1.8 ** 2, 0.0), rtol=1e-6)
  np.testing.assert_allclose(loss_and_grad(0.0), (0.5, 1.0), rtol=1e-6)
  with pytest.raises(ConfigError, match='rl.value_clip'):
    losses.clipped_value_loss(v, old, ret, MASK, clip=0.0)


def test_entropy():
  np.testing.assert_allclose(losses.entropy(jnp.full((2, 3, 11), 5.0)), np.full((2, 3),
                                                                                 np.log(11)),
                             rtol=1e-6)
  logits = np.random.default_rng(3).normal(size=(2, 3, 11)).astype(np.float32) * 3
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(losses.entropy(logits), -np.sum(p * np.log(p), -1), rtol=1e-5)
  # Huge and ruled-out (-inf) logits: finite value and gradient.
  big = jnp.array([[[1e4, 1e4, -jnp.inf, 0.0]]])
  np.testing.assert_allclose(losses.entropy(big), [[np.log(2)]], rtol=1e-6)
  assert np.all(np.isfinite(jax.grad(lambda x: losses.entropy(x).sum())(big)))
  assert losses.entropy(jnp.zeros((1, 1, 3), jnp.bfloat16)).dtype == jnp.float32


def test_explained_variance():
  rng = np.random.default_rng(4)
  ret = rng.normal(size=(B, T)).astype(np.float32)
  junk = np.where(MASK > 0, 0.0, 1e6).astype(np.float32)  # off the mask: ignored
  ev = jax.jit(losses.explained_variance)
  np.testing.assert_allclose(ev(ret + junk, ret, MASK), 1.0, atol=1e-6)
  mean = ret[MASK > 0].mean()
  np.testing.assert_allclose(ev(np.full((B, T), mean) + junk, ret, MASK), 0.0, atol=1e-5)
  noisy = ret + rng.normal(size=(B, T)).astype(np.float32)
  on = MASK > 0
  expected = 1 - np.var((ret - noisy)[on]) / np.var(ret[on])
  np.testing.assert_allclose(ev(noisy, ret, MASK), expected, rtol=1e-5)
  # Constant returns and an empty mask: 0, not NaN.
  assert float(ev(noisy, np.ones((B, T)), MASK)) == 0.0
  assert float(ev(noisy, ret, np.zeros((B, T)))) == 0.0


def test_approx_kl_is_k3_of_old_to_new():
  rng = np.random.default_rng(5)
  logp = np.log(rng.uniform(0.05, 1, (B, T))).astype(np.float32)
  old = np.log(rng.uniform(0.05, 1, (B, T))).astype(np.float32)
  logp[MASK == 0] = -np.inf
  total, count = jax.jit(losses.approx_kl)(logp, old, MASK)
  on = MASK > 0
  log_ratio = logp[on].astype(np.float64) - old[on]
  np.testing.assert_allclose(total, np.sum(np.exp(log_ratio) - 1 - log_ratio), rtol=1e-5)
  assert float(count) == MASK.sum()
  total, _ = losses.approx_kl(old, old, MASK)
  assert float(total) == 0.0
