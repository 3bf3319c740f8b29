"""Advantages, rewards and KL estimates for RL from feedback on language models.

Rows are episodes: row b of a [B, T] array holds a prompt and the response the policy sampled
for it, and `mask_BT` is 1.0 on the response tokens (the actions), 0 on the prompt and padding.
The response is contiguous within a row and may start and end at different columns in
different rows (left-padded prompts, responses that stop early). A row's episode ends after its
last response token: nothing is bootstrapped past it.

PPO's advantages (Schulman et al. 2017, as used for LMs by Ziegler et al. 2019 and Ouyang et
al. 2022). Each response token is an action. `token_rewards` gives every action the penalty
-kl_coef * KL(pi || pi_ref) estimated at that token, and the last action of a row also gets the
sequence's score from the reward model or verifier. `gae` turns rewards and the value model's
predictions into generalised advantage estimates (Schulman et al. 2016, "High-Dimensional
Continuous Control Using Generalized Advantage Estimation"):

  delta_t = r_t + gamma V_{t+1} - V_t,    A_t = sum_l (gamma lam)^l delta_{t+l},

with V = 0 after the episode's last token; the value targets are the returns A_t + V_t.
`whiten` normalises advantages over the batch's response tokens before the policy loss.

GRPO's advantages (Shao et al. 2024, "DeepSeekMath"). No value model: the policy samples G
responses per prompt, and each response's advantage is its score minus the mean score of its
group, divided by the group's standard deviation; every token of the response shares it.
Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective") drops
the division by the standard deviation, which weighs prompts that are nearly always or nearly
never solved (small std) more than the others: `normalization='none'`.

KL estimates (J. Schulman, "Approximating KL Divergence", 2020, joschu.net/blog/kl-approx.html).
With samples x ~ pi and log r = log pi_ref(x) - log pi(x): k1 = -log r (unbiased, high variance,
can be negative), k2 = (log r)^2 / 2 (biased, low variance; its gradient is that of the KL to
first order), k3 = (r - 1) - log r (unbiased and always >= 0, low variance).

All functions are jittable and compute in float32. String and integer options (`kind`,
`normalization`, `group_size`) are Python values fixed at trace time; they raise
`research.errors.ConfigError`, naming the `rl.*` config field, when they cannot work.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from research.errors import ConfigError

KL_ESTIMATORS = ('k1', 'k2', 'k3')
NORMALIZATIONS = ('std', 'none')


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _check_unit_interval(field: str, value) -> None:
  # Traced values (a schedule inside jit) cannot be checked; Python numbers from a config can.
  if isinstance(value, numbers.Real) and not 0.0 <= value <= 1.0:
    raise ConfigError(field, value, 'must be in [0, 1]')


def gae(rewards_BT, values_BT, mask_BT, *, gamma: float, lam: float):
  """Generalised advantage estimates and returns: (advantages_BT, returns_BT).

  Over each row's response tokens, with the value after the row's last response token taken as
  0 (the episode ends there). Rewards and values outside the mask are ignored (they may hold
  anything, NaN included); advantages and returns are 0 there. returns = advantages + values.

  The recursion runs backwards over the columns, masked so that rows ending at different
  columns need no shifting: delta_t = r_t + gamma V_{t+1} m_{t+1} - V_t and
  A_t = (delta_t + gamma lam m_{t+1} A_{t+1}) m_t. It assumes each row's response is
  contiguous: a gap in the mask would end the episode at the gap. gamma = lam = 1 gives the
  undiscounted returns-to-go minus V (what sequence-level scores usually use).
  """
  _check_unit_interval('rl.gamma', gamma)
  _check_unit_interval('rl.lam', lam)
  on_BT = _f32(mask_BT) > 0
  # where, not multiplication: 0 * NaN would leak padding's junk into the recursion.
  r_BT = jnp.where(on_BT, _f32(rewards_BT), 0.0)
  v_BT = jnp.where(on_BT, _f32(values_BT), 0.0)
  m_BT = on_BT.astype(jnp.float32)

  def step(carry, x):
    adv_next_B, value_next_B, mask_next_B = carry
    r_B, v_B, m_B = x
    delta_B = r_B + gamma * value_next_B * mask_next_B - v_B
    adv_B = (delta_B + gamma * lam * mask_next_B * adv_next_B) * m_B
    return (adv_B, v_B, m_B), adv_B

  zeros_B = jnp.zeros(r_BT.shape[:1], jnp.float32)
  _, adv_TB = jax.lax.scan(step, (zeros_B, zeros_B, zeros_B), (r_BT.T, v_BT.T, m_BT.T),
                           reverse=True)
  adv_BT = adv_TB.T
  return adv_BT, (adv_BT + v_BT) * m_BT


def whiten(x_BT, mask_BT, *, shift_mean: bool = True, eps: float = 1e-8):
  """x normalised over the masked entries of the whole batch; 0 outside the mask.

  shift_mean=True: (x - mean) / std, mean 0 and std 1 over the mask. shift_mean=False: x / std,
  the scale normalised and the sign of every entry kept (unlike TRL's whiten, which adds the
  mean back after scaling, mixing the two scales). std is the population standard deviation of
  the masked entries (divided by their count, not count - 1), so the result has std exactly 1
  (up to eps) however few they are; eps is added to the variance.
  """
  on_BT = _f32(mask_BT) > 0
  x_BT = jnp.where(on_BT, _f32(x_BT), 0.0)
  count = jnp.maximum(jnp.sum(on_BT), 1).astype(jnp.float32)
  mean = jnp.sum(x_BT) / count
  var = jnp.sum(jnp.where(on_BT, x_BT - mean, 0.0) ** 2) / count
  scale = jax.lax.rsqrt(var + eps)
  out_BT = (x_BT - mean) * scale if shift_mean else x_BT * scale
  return jnp.where(on_BT, out_BT, 0.0)


def group_advantages(rewards_B, group_size: int, *, normalization: str = 'std',
                     eps: float = 1e-6):
  """GRPO's advantages: [B], rows [g G, (g + 1) G) being the G samples of prompt g.

  advantage = reward - its group's mean, divided by (the group's std + eps) when
  normalization='std' (GRPO), not divided when 'none' (Dr. GRPO). The std is the population
  one (divide by G, not G - 1; TRL uses G - 1): a group's advantages then have std 1, and
  G = 2 gives +-1. A group whose rewards are all equal has advantages 0: it carries no signal.
  """
  if not isinstance(group_size, numbers.Integral) or group_size < 1:
    raise ConfigError('rl.samples_per_prompt', group_size, 'must be an integer >= 1')
  if normalization not in NORMALIZATIONS:
    raise ConfigError('rl.advantage_normalization', normalization,
                      f"must be one of {NORMALIZATIONS}: 'std' for GRPO, 'none' for Dr. GRPO")
  rewards_B = _f32(rewards_B)
  batch = rewards_B.shape[0]
  if batch % group_size:
    raise ConfigError('rl.samples_per_prompt', group_size, f'must divide the number of rows '
                      f'({batch}): each prompt brings exactly its {group_size} samples')
  group_size = int(group_size)
  r_NG = rewards_B.reshape(batch // group_size, group_size)
  adv_NG = r_NG - jnp.mean(r_NG, axis=1, keepdims=True)
  if normalization == 'std':
    adv_NG = adv_NG / (jnp.std(r_NG, axis=1, keepdims=True) + eps)
  return adv_NG.reshape(batch)


def kl_estimate(logp_BT, ref_logp_BT, kind: str = 'k3'):
  """Per-token estimates of KL(pi || pi_ref) from tokens sampled from pi: same shape as logp.

  logp: log pi of the sampled tokens, ref_logp: log pi_ref of the same tokens. k1 = logp -
  ref_logp, k2 = (logp - ref_logp)^2 / 2, k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1.
  No mask: mask the result (its value on padding is whatever the log-probs there give).
  """
  if kind not in KL_ESTIMATORS:
    raise ConfigError('rl.kl_estimator', kind, f'must be one of {KL_ESTIMATORS} (Schulman '
                      "2020): 'k1' unbiased, 'k2' low variance, 'k3' unbiased and >= 0")
  log_ratio = _f32(ref_logp_BT) - _f32(logp_BT)  # log pi_ref / pi
  if kind == 'k1':
    return -log_ratio
  if kind == 'k2':
    return 0.5 * jnp.square(log_ratio)
  # expm1: exp(x) - 1 - x loses every digit for small x, which is where the policy usually is.
  return jnp.expm1(log_ratio) - log_ratio


def last_token_mask(mask_BT):
  """1.0 at each row's last response token, 0 elsewhere (and everywhere in empty rows)."""
  on_BT = _f32(mask_BT) > 0
  width = on_BT.shape[1]
  last_B = width - 1 - jnp.argmax(on_BT[:, ::-1], axis=1)
  is_last_BT = jnp.arange(width)[None, :] == last_B[:, None]
  return (is_last_BT & jnp.any(on_BT, axis=1, keepdims=True)).astype(jnp.float32)


def token_rewards(scores_B, logp_BT, ref_logp_BT, mask_BT, *, kl_coef: float,
                  kl_kind: str = 'k1'):
  """PPO's per-token rewards with the KL penalty inside the reward: rewards_BT.

  r_t = -kl_coef * kl_t on every response token (kl_t = kl_estimate(logp, ref_logp, kl_kind)),
  plus scores_B on each row's last response token (Ziegler et al. 2019; Ouyang et al. 2022);
  0 outside the mask. The log-probs are the rollout's: the rewards are data for `gae`, not
  something to differentiate. A row without response tokens gets no score.
  """
  on_BT = _f32(mask_BT) > 0
  kl_BT = kl_estimate(jnp.where(on_BT, logp_BT, 0.0), jnp.where(on_BT, ref_logp_BT, 0.0),
                      kl_kind)
  rewards_BT = -kl_coef * kl_BT + _f32(scores_B)[:, None] * last_token_mask(mask_BT)
  return jnp.where(on_BT, rewards_BT, 0.0)
