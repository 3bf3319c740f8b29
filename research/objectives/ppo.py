"""PPO for language models (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022),
with the value head on the policy's own backbone (model.scalar_head, as TRL's value-head
model).

The loop (research/rl/loop.py) gives every response token the reward -rl.kl_coef x the
rl.kl_estimator estimate of KL(pi || pi_ref) at it (rl.kl_in_reward=True, this objective's
usual setting; False puts the KL in the loss instead, as GRPO), the last one also the
completion's score; generalised advantage estimation (rl.gamma, rl.lam) over the rollout's
values gives advantages and returns; advantages are whitened over the batch
(rl.whiten_advantages). The loss per response token is the clipped surrogate plus rl.vf_coef x
the clipped value loss (rl.value_clip) (research/rl/losses.py), aggregated as rl.loss_aggregation
says; the value head shares the backbone, so its loss trains it too.

Logged besides rl_policy's metrics: rl/value_loss (the aggregated clipped value loss) and
rl/value_clip_fraction (response tokens where the clipped value loss is the larger); the loop adds
rl/explained_variance of the rollout's values against the returns.
"""

from __future__ import annotations

import jax.numpy as jnp

from research.objectives import rl_policy
from research.objectives.rl_policy import (REFERENCE, init_args, init_model_state, load_dataset,
                                           make_batch, window_len)

__all__ = ['REFERENCE', 'init_args', 'init_model_state', 'load_dataset', 'loss_fn',
           'loss_kwargs', 'make_batch', 'window_len']


def loss_kwargs(config) -> dict:
  return {**rl_policy.common_loss_kwargs(config), 'vf_coef': float(config.rl.vf_coef),
          'value_clip': float(config.rl.value_clip)}


def loss_fn(model, params, batch, *, rngs=None, model_state=None, vf_coef: float = 0.1,
            value_clip: float = 0.2, **kwargs):
  """(summed loss, aux) over a rollout minibatch (rl_policy's layout, with returns and
  old_values)."""
  from research.rl import losses  # pylint: disable=g-import-not-at-top
  del model_state
  loss_BN, aux = rl_policy.policy_terms(model, params, batch, rngs=rngs, values=True, **kwargs)
  mask_BN, values_BN = aux['mask'], aux['values']
  value_BN = losses.clipped_value_loss(values_BN, batch['old_values'], batch['returns'], mask_BN,
                                       clip=value_clip)
  value_sum, weight_sum = losses.aggregate(value_BN, mask_BN, kwargs['aggregation'],
                                           max_len=kwargs['max_len'])
  # Tokens whose clipped value loss is the larger of the two (TRL's vf_clipfrac): no gradient.
  clipped_BN = batch['old_values'] + jnp.clip(values_BN - batch['old_values'], -value_clip,
                                              value_clip)
  moved_BN = ((clipped_BN - batch['returns']) ** 2 > (values_BN - batch['returns']) ** 2)
  per_token = weight_sum / jnp.maximum(jnp.sum(mask_BN), 1.0)
  aux['metrics']['rl/value_loss'] = value_sum
  aux['metrics']['rl/value_clip_fraction'] = jnp.sum(moved_BN * mask_BN) * per_token
  return rl_policy.finish(loss_BN + vf_coef * value_BN, aux, aggregation=kwargs['aggregation'],
                          max_len=kwargs['max_len'])
