"""Policy and value losses for RL from feedback (PPO, GRPO, DAPO, Dr. GRPO).

Per-token losses over [B, T] rows whose `mask_BT` is 1.0 on the response tokens (the actions
the policy sampled; research/rl/advantages.py describes the layout); every loss is 0 outside
the mask.

The policy loss is PPO's clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization
Algorithms"). With ratio = pi(a) / pi_old(a), pi_old the policy that sampled the rollout,

  loss = -min(ratio A, clip(ratio, 1 - clip_low, 1 + clip_high) A),

which stops the gradient of a token once the policy has moved far enough in the direction its
advantage asks for (ratio > 1 + clip_high with A > 0, ratio < 1 - clip_low with A < 0). PPO and
GRPO clip symmetrically (clip_low = clip_high, 0.2 usually); DAPO's clip-higher (Yu et al. 2025,
"DAPO: An Open-Source LLM Reinforcement Learning System at Scale") raises clip_high (0.28) so
that unlikely tokens with positive advantages can grow more, against entropy collapse.

Aggregation: how per-token losses become one number changes which responses weigh most.
- 'token' (DAPO): the mean over every response token of the batch. Each token weighs the same,
  so long responses weigh more than short ones, in proportion to their length.
- 'sequence' (GRPO as in Shao et al. 2024, and many PPO implementations): the mean over each
  row's tokens, then over the rows. Each response weighs the same, so a token of a long
  response weighs less: Liu et al. 2025 ("Understanding R1-Zero-Like Training", Dr. GRPO) show
  this biases the policy towards long wrong answers (their negative advantage is spread thin)
  and short right ones.
- 'constant' (Dr. GRPO): the sum over each row's tokens divided by a constant, the generation
  budget max_len, then the mean over the rows: no length bias, and the same scale whatever the
  lengths.
Following the trainer's convention, `aggregate` returns (loss_sum, weight_sum): the trainer adds
both over micro-batches (and hosts) and divides once, which gives exactly the batch's mean for
every mode.

The value loss is PPO's clipped one (from OpenAI baselines' PPO2; Engstrom et al. 2020 and
Andrychowicz et al. 2021 found the clipping does not help and can hurt; set a large clip to
turn it off).

All functions are jittable and compute in float32.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.rl import advantages as advantages_lib

AGGREGATIONS = ('token', 'sequence', 'constant')


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _is_number(x) -> bool:
  # Traced values (a schedule inside jit) cannot be checked; Python numbers from a config can.
  return isinstance(x, numbers.Real)


def clipped_policy_loss(logp_BT, old_logp_BT, advantages_BT, mask_BT, *, clip_low: float,
                        clip_high: float):
  """PPO's clipped surrogate per token: (loss_BT, clipped_BT), both 0 outside the mask.

  loss = -min(ratio A, clip(ratio, 1 - clip_low, 1 + clip_high) A), ratio = exp(logp -
  old_logp). clipped_BT is 1.0 where the clipped term is the smaller one and differs from the
  unclipped one (the token gets no gradient): its masked mean is PPO's clip fraction.
  advantages_BT is [B, T], or [B, 1] for a sequence-level advantage (GRPO). old_logp_BT is
  data (the rollout's); only logp_BT carries the gradient.
  """
  if _is_number(clip_low) and not 0.0 <= clip_low < 1.0:
    raise ConfigError('rl.clip_low', clip_low, 'must be in [0, 1): the ratio is clipped below '
                      'at 1 - clip_low (0.2 usually)')
  if _is_number(clip_high) and not clip_high >= 0.0:
    raise ConfigError('rl.clip_high', clip_high, 'must be >= 0: the ratio is clipped above at '
                      '1 + clip_high (0.2 usually; DAPO: 0.28)')
  on_BT = _f32(mask_BT) > 0
  # Zeroed before exp: padding's log-probs may be anything, and exp of junk overflows.
  log_ratio_BT = jnp.where(on_BT, _f32(logp_BT) - _f32(old_logp_BT), 0.0)
  ratio_BT = jnp.exp(log_ratio_BT)
  adv_BT = _f32(advantages_BT)
  unclipped_BT = ratio_BT * adv_BT
  clipped_term_BT = jnp.clip(ratio_BT, 1.0 - clip_low, 1.0 + clip_high) * adv_BT
  is_clipped_BT = clipped_term_BT < unclipped_BT
  # where rather than jnp.minimum: on a tie (ratio inside the range, or on its edge)
  # jnp.minimum and jnp.clip split the gradient between their arguments, and on an edge the
  # halves do not add back up to the unclipped gradient.
  objective_BT = jnp.where(is_clipped_BT, clipped_term_BT, unclipped_BT)
  loss_BT = jnp.where(on_BT, -objective_BT, 0.0)
  clipped_BT = (is_clipped_BT & on_BT).astype(jnp.float32)
  return loss_BT, clipped_BT


def aggregate(loss_BT, mask_BT, mode: str, *, max_len: int | None = None):
  """(loss_sum, weight_sum) of per-token losses; loss_sum / weight_sum is the batch's loss.

  'token': (sum of loss over the mask, number of response tokens).
  'sequence': (sum over rows of the row's mean loss, number of rows with a response token).
  'constant': (sum of loss over the mask / max_len, number of rows with a response token).
  Rows with no response token (padding rows) weigh nothing in every mode.
  """
  if mode not in AGGREGATIONS:
    raise ConfigError('rl.loss_aggregation', mode, f"must be one of {AGGREGATIONS}: 'token' "
                      "(DAPO), 'sequence' (GRPO), 'constant' (Dr. GRPO)")
  m_BT = (_f32(mask_BT) > 0).astype(jnp.float32)
  masked_BT = jnp.where(m_BT > 0, _f32(loss_BT), 0.0)
  len_B = jnp.sum(m_BT, axis=1)
  rows = jnp.sum((len_B > 0).astype(jnp.float32))
  if mode == 'token':
    return jnp.sum(masked_BT), jnp.sum(m_BT)
  if mode == 'sequence':
    return jnp.sum(jnp.sum(masked_BT, axis=1) / jnp.maximum(len_B, 1.0)), rows
  if max_len is None or not _is_number(max_len) or max_len <= 0:
    raise ConfigError('rl.loss_aggregation', mode, f"'constant' divides by the generation "
                      f'budget: pass max_len (the most tokens a response may have), got '
                      f'{max_len!r}')
  return jnp.sum(masked_BT) / max_len, rows


def clipped_value_loss(values_BT, old_values_BT, returns_BT, mask_BT, *, clip: float):
  """PPO's clipped value loss per token: 0.5 max((v - R)^2, (v_clipped - R)^2); 0 off the mask.

  v_clipped = old_v + clip(v - old_v, -clip, clip), old_v the rollout's values: the larger
  (more pessimistic) of the two errors, so the value cannot gain by moving more than `clip`
  from where it was.
  """
  if _is_number(clip) and not clip > 0:
    raise ConfigError('rl.value_clip', clip, 'must be > 0 (0.2 usually; a large value turns '
                      'the clipping off)')
  on_BT = _f32(mask_BT) > 0
  v_BT = jnp.where(on_BT, _f32(values_BT), 0.0)
  old_BT = jnp.where(on_BT, _f32(old_values_BT), 0.0)
  ret_BT = jnp.where(on_BT, _f32(returns_BT), 0.0)
  v_clipped_BT = old_BT + jnp.clip(v_BT - old_BT, -clip, clip)
  unclipped_sq_BT = jnp.square(v_BT - ret_BT)
  clipped_sq_BT = jnp.square(v_clipped_BT - ret_BT)
  # where rather than jnp.maximum, for the same reason as in clipped_policy_loss.
  loss_BT = 0.5 * jnp.where(clipped_sq_BT > unclipped_sq_BT, clipped_sq_BT, unclipped_sq_BT)
  return jnp.where(on_BT, loss_BT, 0.0)


def entropy(logits_BTV):
  """Entropy of softmax(logits) at each position: [B, T], float32.

  From log_softmax, so large logits do not overflow; logits of -inf (tokens ruled out) add 0,
  not NaN, to the value and to its gradient.
  """
  logp_BTV = jax.nn.log_softmax(_f32(logits_BTV), axis=-1)
  p_BTV = jnp.exp(logp_BTV)
  return -jnp.sum(p_BTV * jnp.where(p_BTV > 0, logp_BTV, 0.0), axis=-1)


def explained_variance(values_BT, returns_BT, mask_BT):
  """1 - Var(R - V) / Var(R) over the masked entries: a scalar for logging.

  1: the values predict the returns exactly; 0: no better than the returns' mean; < 0: worse.
  Returns 0 when the returns do not vary (Var(R) = 0: nothing to explain, say every response
  of the batch scored the same) or the mask is empty, rather than NaN or inf.
  """
  on_BT = _f32(mask_BT) > 0
  count = jnp.maximum(jnp.sum(on_BT), 1).astype(jnp.float32)

  def var(x_BT):
    x_BT = jnp.where(on_BT, x_BT, 0.0)
    mean = jnp.sum(x_BT) / count
    return jnp.sum(jnp.where(on_BT, x_BT - mean, 0.0) ** 2) / count

  ret_BT = _f32(returns_BT)
  var_returns = var(ret_BT)
  var_error = var(ret_BT - _f32(values_BT))
  safe = var_returns > 0
  return jnp.where(safe, 1.0 - var_error / jnp.where(safe, var_returns, 1.0), 0.0)


def approx_kl(logp_BT, old_logp_BT, mask_BT):
  """(sum, count) of the per-token k3 estimate of KL(pi_old || pi) over the mask, for logging.

  The tokens were sampled from pi_old, so k3 = ratio - 1 - log ratio with ratio = pi / pi_old
  (kl_estimate(old_logp, logp, 'k3')); sum / count is the mean, adding up over micro-batches
  like the losses.
  """
  on_BT = _f32(mask_BT) > 0
  old_BT = jnp.where(on_BT, _f32(old_logp_BT), 0.0)
  new_BT = jnp.where(on_BT, _f32(logp_BT), 0.0)
  kl_BT = advantages_lib.kl_estimate(old_BT, new_BT, 'k3')
  return jnp.sum(jnp.where(on_BT, kl_BT, 0.0)), jnp.sum(on_BT.astype(jnp.float32))
