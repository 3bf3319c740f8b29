"""The pieces compose into working optimisers: GRPO and PPO solve a multi-armed bandit.

The bandit: 8 arms with Bernoulli rewards, one arm best by 0.2. The policy is a tabular softmax
over the arms (8 logits, the parameters), starting uniform. An episode is a row of two
columns: a prompt token (mask 0) and the arm pulled (mask 1), so every function runs with a
mask that excludes something. The frozen reference is the uniform policy. Each run is a single
jitted scan over 60 rollouts of 64 pulls, 8 Adam updates (epochs) on each: 480 updates, the
later epochs of a rollout far enough from its policy for the clipping to act.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.rl import advantages, losses

ARM_MEANS = np.array([0.3, 0.5, 0.1, 0.6, 0.4, 0.8, 0.2, 0.0], np.float32)
BEST_ARM = 5
PROMPTS, GROUP = 8, 8  # GRPO: 8 prompts (all the same bandit) x 8 samples; PPO: 64 rows
ROWS = PROMPTS * GROUP
MASK_BT = np.tile(np.array([[0.0, 1.0]], np.float32), (ROWS, 1))
CLIP_LOW, CLIP_HIGH = 0.2, 0.28


def rollout(logits_A, key):
  """Pulled arms [B], their Bernoulli rewards [B], and log pi(arm) per token [B, T]."""
  arm_key, reward_key = jax.random.split(key)
  arms_B = jax.random.categorical(arm_key, logits_A, shape=(ROWS,))
  scores_B = jax.random.bernoulli(reward_key, jnp.asarray(ARM_MEANS)[arms_B]).astype(jnp.float32)
  return arms_B, scores_B, token_logp(logits_A, arms_B)


def token_logp(logits_A, arms_B):
  """[B, 2]: 0 in the prompt column (ignored under the mask), log pi(arm) in the response
  column."""
  logp_B = jax.nn.log_softmax(logits_A)[arms_B]
  return jnp.stack([jnp.zeros_like(logp_B), logp_B], axis=1)


REF_LOGP_BT = np.full((ROWS, 2), -np.log(8.0), np.float32)


def grpo_loss(params, batch, *, kl_coef):
  """GRPO: clipped surrogate (clip-higher) with the group advantage on every token, plus
  kl_coef * k3 KL to the reference in the loss; DAPO's token mean. (loss, clip fraction)."""
  logp_BT = token_logp(params['logits'], batch['arms'])
  pg_BT, clipped_BT = losses.clipped_policy_loss(
      logp_BT, batch['old_logp'], batch['advantages'][:, None], MASK_BT, clip_low=CLIP_LOW,
      clip_high=CLIP_HIGH)
  kl_BT = advantages.kl_estimate(logp_BT, REF_LOGP_BT, 'k3')  # KL in the loss, as GRPO
  loss_sum, weight = losses.aggregate(pg_BT + kl_coef * kl_BT, MASK_BT, 'token')
  return loss_sum / weight, jnp.sum(clipped_BT) / jnp.sum(MASK_BT)


def grpo_batch(params, key):
  """A rollout with GROUP samples per prompt and their group-normalised advantages."""
  arms_B, scores_B, logp_BT = rollout(params['logits'], key)
  adv_B = advantages.group_advantages(scores_B, GROUP, normalization='std')
  return {'arms': arms_B, 'old_logp': logp_BT, 'advantages': adv_B}, scores_B


def ppo_loss(params, batch, *, kl_coef):
  """PPO: clipped surrogate plus half the clipped value loss of the scalar value, each
  averaged per sequence. (loss, clip fraction)."""
  del kl_coef  # PPO's KL is in the rewards
  logp_BT = token_logp(params['logits'], batch['arms'])
  pg_BT, clipped_BT = losses.clipped_policy_loss(
      logp_BT, batch['old_logp'], batch['advantages'], MASK_BT, clip_low=CLIP_LOW,
      clip_high=CLIP_LOW)
  values_BT = jnp.broadcast_to(params['value'], MASK_BT.shape)
  vf_BT = losses.clipped_value_loss(values_BT, batch['old_values'], batch['returns'], MASK_BT,
                                    clip=0.2)
  pg_sum, weight = losses.aggregate(pg_BT, MASK_BT, 'sequence')
  vf_sum, _ = losses.aggregate(vf_BT, MASK_BT, 'sequence')
  return (pg_sum + 0.5 * vf_sum) / weight, jnp.sum(clipped_BT) / jnp.sum(MASK_BT)


def ppo_batch(params, key, *, kl_coef):
  """A rollout with the KL penalty in the rewards, GAE (gamma = lam = 1: the episode is one
  step, so A = return - V) against the current value, whitened advantages."""
  arms_B, scores_B, logp_BT = rollout(params['logits'], key)
  values_BT = jnp.where(MASK_BT > 0, params['value'], 123.0)  # junk in the prompt column
  rewards_BT = advantages.token_rewards(scores_B, logp_BT, REF_LOGP_BT, MASK_BT,
                                        kl_coef=kl_coef, kl_kind='k1')
  adv_BT, returns_BT = advantages.gae(rewards_BT, values_BT, MASK_BT, gamma=1.0, lam=1.0)
  batch = {'arms': arms_B, 'old_logp': logp_BT, 'advantages': advantages.whiten(adv_BT, MASK_BT),
           'old_values': values_BT, 'returns': returns_BT}
  return batch, scores_B


def train_bandit(make_batch, loss_fn, *, iterations, epochs, lr, kl_coef, seed):
  """Rollout, then `epochs` Adam steps on it, `iterations` times: (final params, history)."""
  params = {'logits': jnp.zeros(8), 'value': jnp.zeros(())}
  optimizer = optax.adam(lr)

  def iteration(carry, key):
    params, opt_state = carry
    batch, scores_B = make_batch(jax.lax.stop_gradient(params), key)
    batch = jax.lax.stop_gradient(batch)

    def epoch(carry, _):
      params, opt_state = carry
      (_, clip_fraction), grads = jax.value_and_grad(
          functools.partial(loss_fn, kl_coef=kl_coef), has_aux=True)(params, batch)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), clip_fraction

    (params, opt_state), clip_fractions = jax.lax.scan(epoch, (params, opt_state), None,
                                                       length=epochs)
    return (params, opt_state), {'score': jnp.mean(scores_B), 'clip_fraction': clip_fractions}

  @jax.jit
  def run(params):
    keys = jax.random.split(jax.random.key(seed), iterations)
    (params, _), history = jax.lax.scan(iteration, (params, optimizer.init(params)), keys)
    return params, history

  return run(params)


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('algorithm', ['grpo', 'ppo'])
def test_bandit_learns_the_best_arm(algorithm, seed):
  kl_coef = 0.01
  make_batch = grpo_batch if algorithm == 'grpo' else functools.partial(ppo_batch,
                                                                         kl_coef=kl_coef)
  loss_fn = grpo_loss if algorithm == 'grpo' else ppo_loss
  params, history = train_bandit(make_batch, loss_fn, iterations=60, epochs=8, lr=0.1,
                                 kl_coef=kl_coef, seed=seed)
  probs = np.asarray(jax.nn.softmax(params['logits']))
  assert probs[BEST_ARM] > 0.9, probs
  scores = np.asarray(history['score'])
  assert scores[0] < 0.5 and scores[-10:].mean() > 0.7, scores  # uniform: 0.3625; best: 0.8
  clip_fraction = np.asarray(history['clip_fraction'])
  # The first epoch on a rollout is at ratio 1 and never clips; later ones did.
  assert np.all(clip_fraction[:, 0] == 0) and clip_fraction.max() > 0.3
  if algorithm == 'ppo':  # the value (from 0) follows the mean return, about the mean score
    np.testing.assert_allclose(params['value'], scores[-10:].mean(), atol=0.25)
