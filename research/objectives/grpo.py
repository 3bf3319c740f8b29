"""GRPO (Shao et al. 2024, "DeepSeekMath"): group-relative policy optimisation, no value model.

The loop (research/rl/loop.py) samples rl.samples_per_prompt = G completions of each prompt;
a completion's advantage is its reward minus its group's mean, divided by the group's standard
deviation (rl.advantage_normalization='std'; 'none' is Dr. GRPO, Liu et al. 2025), the same for
every token of it (research/rl/advantages.py, group_advantages). The loss per response token is
the clipped surrogate plus rl.kl_coef x the rl.kl_estimator (k3 by default) estimate of the KL
to the frozen reference, as a loss term (rl.kl_in_reward=True instead subtracts kl_coef x the
completion's summed KL from its reward before the group normalisation).

Variants through the rl fields: DAPO (Yu et al. 2025) is clip_high=0.28 with
loss_aggregation='token' (the default) and kl_coef=0; Dr. GRPO is
advantage_normalization='none' with loss_aggregation='constant'; the original GRPO is
loss_aggregation='sequence'. research/objectives/rl_policy.py has the batch layout, the loss
and what is logged.
"""

from __future__ import annotations

from research.objectives import rl_policy
from research.objectives.rl_policy import (REFERENCE, init_args, init_model_state, load_dataset,
                                           make_batch, window_len)

__all__ = ['REFERENCE', 'init_args', 'init_model_state', 'load_dataset', 'loss_fn',
           'loss_kwargs', 'make_batch', 'window_len']


def loss_kwargs(config) -> dict:
  return rl_policy.common_loss_kwargs(config)


def loss_fn(model, params, batch, *, rngs=None, model_state=None, **kwargs):
  """(summed loss, aux) over a rollout minibatch (rl_policy's layout)."""
  del model_state  # the reference's log-probabilities come with the batch
  loss_BN, aux = rl_policy.policy_terms(model, params, batch, rngs=rngs, **kwargs)
  return rl_policy.finish(loss_BN, aux, aggregation=kwargs['aggregation'],
                          max_len=kwargs['max_len'])
