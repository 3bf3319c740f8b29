"""Direct preference optimisation (Rafailov et al. 2023) for decoders.

Each example is a pair (prompt + chosen, prompt + rejected) (research/data/sft.py). With the
policy pi and the frozen reference pi_ref, the implicit reward of a response y is
r(y) = beta (log pi(y | x) - log pi_ref(y | x)), summed over y's tokens (and its eos), and the
loss is -log sigmoid(r(chosen) - r(rejected)), beta = `dpo.beta`.

The reference. Its log-probabilities are computed on the fly, from a frozen copy of the initial
parameters kept in the train state (`model_state['dpo_reference']`, made by `init_model_state`
from the init_from model): it is sharded like the policy, needs no separate pass over the data
or stored log-probs, stays right when the data or seq_len change, and a resumed run finds it in
its own checkpoint. The cost is one extra forward pass per step (no backward) and one more copy
of the parameters; the optimizer holds no state for it.

Evaluation (eval_metrics) reports eval/loss (the DPO loss, per pair), eval/accuracy (= the
preference accuracy, dpo/accuracy), the same dpo/ metrics and eval/pairs; no perplexity, which
would be exp of a per-pair loss and mean nothing.

Logged (per pair): train/loss, train/accuracy (= dpo/accuracy: pairs with r(chosen) >
r(rejected)), dpo/reward_margin, dpo/chosen_reward, dpo/rejected_reward, and the preference
accuracy of each model by itself, dpo/policy_accuracy and dpo/reference_accuracy (pairs where
log pi(chosen) > log pi(rejected)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.errors import ConfigError

REFERENCE = 'dpo_reference'


def load_dataset(config, workdir: str):
  from research.data import sft  # pylint: disable=g-import-not-at-top
  if config.model.family != 'decoder':
    raise ConfigError('model.family', config.model.family, "dpo fine-tunes 'decoder' models")
  return sft.load_preferences(config, sft.tokenizer_for(config, workdir))


def window_len(config) -> int:
  return config.data.seq_len + 1


def init_args(batch_size: int, config):
  return (jnp.zeros((batch_size, config.data.seq_len), jnp.int32),)


def init_model_state(params) -> dict:
  """The frozen reference: a copy of the parameters the run starts from."""
  return {REFERENCE: jax.tree.map(lambda x: x, params)}


def loss_kwargs(config) -> dict:
  return {'beta': float(config.dpo.beta)}


def make_batch(rows, *, tokenizer=None, config=None, rngs=None):
  del tokenizer, config, rngs
  return dict(rows)


def sequence_logprobs(model, params, batch, side: str, *, rngs=None):
  """Summed log-probabilities of the weighted (response) tokens of each row: [B]."""
  logits_BTV = model.apply({'params': params}, batch[f'{side}_inputs'],
                           batch[f'{side}_positions'], batch[f'{side}_segment_ids'],
                           rngs=rngs).astype(jnp.float32)
  logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
  target_BT = jnp.take_along_axis(logp_BTV, batch[f'{side}_targets'][..., None], axis=-1)[..., 0]
  return jnp.sum(target_BT * batch[f'{side}_weights'], axis=-1)


def eval_metrics(totals, prefix: str = 'eval/') -> dict[str, float]:
  """The evaluation summary of summed `loss_fn` aux over held-out pairs (trainer.evaluate)."""
  pairs = max(float(totals['weight_sum']), 1.0)
  out = {f'{prefix}loss': float(totals['loss_sum']) / pairs,
         f'{prefix}accuracy': float(totals['correct']) / pairs,
         f'{prefix}pairs': float(totals['weight_sum'])}
  out.update({f'{prefix}{k}': float(v) / pairs for k, v in totals['metrics'].items()})
  return out


def loss_fn(model, params, batch, *, rngs=None, model_state=None, beta: float = 0.1):
  """(summed DPO loss, aux) over the batch's pairs; weight_sum counts the real pairs."""
  if not model_state or REFERENCE not in model_state:
    raise ValueError('dpo needs the reference parameters in model_state (init_model_state)')
  reference = jax.lax.stop_gradient(model_state[REFERENCE])
  pair_B = (jnp.sum(batch['chosen_weights'], -1) > 0).astype(jnp.float32)
  logp = {s: sequence_logprobs(model, params, batch, s, rngs=rngs) for s in ('chosen', 'rejected')}
  ref = {s: sequence_logprobs(model, reference, batch, s) for s in ('chosen', 'rejected')}
  chosen_B = beta * (logp['chosen'] - ref['chosen'])
  rejected_B = beta * (logp['rejected'] - ref['rejected'])
  margin_B = chosen_B - rejected_B
  loss_sum = jnp.sum(-jax.nn.log_sigmoid(margin_B) * pair_B)
  total = lambda x_B: jnp.sum(x_B * pair_B)
  metrics = {
      'dpo/reward_margin': total(margin_B),
      'dpo/chosen_reward': total(chosen_B),
      'dpo/rejected_reward': total(rejected_B),
      'dpo/accuracy': total((margin_B > 0).astype(jnp.float32)),
      'dpo/policy_accuracy': total((logp['chosen'] > logp['rejected']).astype(jnp.float32)),
      'dpo/reference_accuracy': total((ref['chosen'] > ref['rejected']).astype(jnp.float32)),
  }
  aux = dict(loss_sum=loss_sum, weight_sum=jnp.sum(pair_B),
             correct=total((margin_B > 0).astype(jnp.float32)), metrics=metrics)
  return loss_sum, aux
