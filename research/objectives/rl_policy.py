"""What the two RL objectives, 'grpo' and 'ppo', share: the config, the batch and the policy loss.

Neither reads a dataset: research/rl/loop.py samples rollouts and feeds their minibatches to
the trainer's train step (`research.training.trainer.make_train_step`), one optimizer step
each. A minibatch is a dict of fixed-shape arrays, B rows (train.batch_size), each one prompt
and one sampled completion:

  tokens, positions, segment_ids  [B, L] int32  the model's inputs: the prompt left-padded to
      rl.max_prompt_len = P columns, then the completion's first N - 1 tokens (N =
      rl.max_new_tokens); L = P + N - 1 = data.seq_len. Positions count from each row's first
      real token, segment ids are 0 on the padding, as research.inference.decoding's.
  targets, mask  [B, N]  the completion's N tokens and 1.0 on those up to and including the
      first eos (the actions); column j of these is predicted by input column P - 1 + j, so the
      logits are computed for the last N input columns only.
  old_logp, ref_logp  [B, N] float32  log-probabilities of the targets under the policy that
      sampled them and under the frozen reference (research/rl/rollout.py).
  advantages  [B, N] float32  0 off the mask.
  returns, old_values  [B, N] float32  PPO only: the value targets and the rollout's values.

The policy. Every log-probability (ratios, the KL to the reference, the entropy) is of
softmax(logits / rl.temperature), the distribution the rollout sampled (TRL's convention);
top-k and top-p truncations are not modelled, which makes those samples slightly off-policy.

The loss per response token is the clipped surrogate (research/rl/losses.py) plus kl_coef x
the rl.kl_estimator estimate of KL(pi || pi_ref) at the token (unless rl.kl_in_reward put it
in the reward), minus entropy_coef x the entropy, plus (PPO) vf_coef x the clipped value loss,
aggregated by rl.loss_aggregation into the trainer's (loss_sum, weight_sum). The reference's
log-probabilities come with the batch (computed at the rollout from the frozen copy in
`model_state['rl_reference']`): the train step runs the policy alone.

Logged sums (aux['metrics'], divided by weight_sum by the trainer). Each is scaled by
weight_sum / (response tokens) so that the logged number is a mean per response token whatever
the aggregation (exact with train.micro_batches=1; with more, a weighted mean of the
micro-batches' per-token means): rl/clip_fraction (tokens whose ratio was clipped: no gradient),
rl/entropy (nats per token), rl/approx_kl (k3 estimate of KL(pi_old || pi), how far the update
moved the policy), rl/kl_ref (the KL estimate to the reference at the current parameters);
rl/policy_loss and rl/value_loss are the aggregated losses themselves (their share of
train/loss before the coefficients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.errors import ConfigError, UserError

REFERENCE = 'rl_reference'
ALGORITHMS = ('grpo', 'ppo')


# ----------------------------------------------------------------------------- the config


def _positive(c, field: str) -> None:
  value = c.rl[field]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'rl.{field}', value, 'must be a positive integer')


def check_config(config) -> None:
  """Validates the rl section (what needs no devices, files or imports) and derives
  train.batch_size, train.steps and data.seq_len from it; PPO turns on model.scalar_head, its
  value head. Called by config_lib.finalize for objective.name 'grpo' and 'ppo'."""
  c = config
  rl = c.rl
  if c.model.family != 'decoder':
    raise ConfigError('model.family', c.model.family,
                      f"{c.objective.name} fine-tunes 'decoder' models (it samples "
                      'left-to-right with the KV cache)')
  for field in ('samples_per_prompt', 'prompts_per_iteration', 'max_new_tokens',
                'max_prompt_len', 'epochs', 'minibatches', 'iterations', 'eval_every'):
    _positive(c, field)
  if not isinstance(rl.stop, str):
    raise ConfigError('rl.stop', rl.stop, "give one string, e.g. '\\n' for one-line "
                      "completions, or '' to end them at eos only")
  if rl.num_eval_prompts < 0:
    raise ConfigError('rl.num_eval_prompts', rl.num_eval_prompts, 'must be >= 0 (0: no '
                      'held-out evaluation)')
  if not rl.temperature > 0:
    raise ConfigError('rl.temperature', rl.temperature, 'must be > 0: the rollouts sample '
                      '(1.0 samples the model as it is)')
  if rl.eval_temperature < 0:
    raise ConfigError('rl.eval_temperature', rl.eval_temperature, 'must be >= 0 (0 is greedy)')
  if rl.top_k < 0:
    raise ConfigError('rl.top_k', rl.top_k, 'must be >= 0 (0 keeps every token)')
  if not 0 < rl.top_p <= 1:
    raise ConfigError('rl.top_p', rl.top_p, 'must be in (0, 1] (1 keeps every token)')
  for field in ('kl_coef', 'vf_coef', 'entropy_coef', 'missing_eos_penalty'):
    if rl[field] < 0:
      raise ConfigError(f'rl.{field}', rl[field], 'must be >= 0')
  if not rl.prompts:
    raise ConfigError('rl.prompts', '', 'give a JSONL path or glob of {"prompt": ...} rows')
  if bool(rl.reward) == bool(rl.reward_model):
    raise ConfigError('rl.reward', rl.reward, "give exactly one of rl.reward (a Python "
                      "function: 'module:function' or 'path/to/file.py:function') and "
                      'rl.reward_model (a reward-model workdir)')
  if rl.reward and rl.reward.count(':') != 1:
    raise ConfigError('rl.reward', rl.reward, "write it as 'module:function' or "
                      "'path/to/file.py:function', e.g. 'my_task.rewards:exact_match'")
  rows = rl.prompts_per_iteration * rl.samples_per_prompt
  if rows % rl.minibatches:
    raise ConfigError('rl.minibatches', rl.minibatches, f'must divide the rollout batch: '
                      f'rl.prompts_per_iteration x rl.samples_per_prompt = {rows} rows')
  if c.objective.name == 'ppo':
    if 'scalar_head' not in c.model:
      raise ConfigError('objective.name', 'ppo', 'ppo needs model.scalar_head (the value '
                        'head), which this version of lmforge lacks')
    c.model.scalar_head = True  # after finetune.inherit_model copied the source's model
  c.train.batch_size = rows // rl.minibatches
  c.train.steps = rl.iterations * rl.epochs * rl.minibatches
  c.data.seq_len = rl.max_prompt_len + rl.max_new_tokens - 1


def steps_per_iteration(config) -> int:
  return config.rl.epochs * config.rl.minibatches


# ----------------------------------------------------------------------------- the objective


def load_dataset(config, workdir: str):
  """An RL run reads prompts, not examples (research/rl/loop.py): research.evaluate's default
  task, which scores a run's own validation split, has none to score."""
  del workdir
  raise UserError(f'an RL run (objective {config.objective.name}) has no validation split: its '
                  'held-out reward is eval/reward_mean in its metrics.jsonl; use research.evaluate '
                  '--task=generation, --task=perplexity or --task=few_shot')


def window_len(config) -> int:
  return config.data.seq_len + 1


def init_args(batch_size: int, config):
  return (jnp.zeros((batch_size, config.data.seq_len), jnp.int32),)


def init_model_state(params) -> dict:
  """The frozen reference: a copy of the parameters the run starts from (PPO's value head
  included, which the reference never reads)."""
  return {REFERENCE: jax.tree.map(lambda x: x, params)}


def make_batch(rows, *, tokenizer=None, config=None, rngs=None):
  del tokenizer, config, rngs
  return dict(rows)


def common_loss_kwargs(config) -> dict:
  rl = config.rl
  return {'temperature': float(rl.temperature), 'clip_low': float(rl.clip_low),
          'clip_high': float(rl.clip_high),
          'kl_coef': 0.0 if rl.kl_in_reward else float(rl.kl_coef),
          'kl_estimator': rl.kl_estimator, 'entropy_coef': float(rl.entropy_coef),
          'aggregation': rl.loss_aggregation, 'max_len': int(rl.max_new_tokens)}


def _response_outputs(module, tokens_BL, positions_BL, segment_ids_BL, n: int, values: bool):
  """One pass over the inputs; the last `n` columns (those that predict the completion) go to
  the unembedding (float32 logits) and, for PPO, to the value head (float32 values)."""
  x_BND = module.hidden(tokens_BL, positions_BL, segment_ids_BL)[:, -n:]
  return module.logits(x_BND), module.scalar_readout(x_BND) if values else None


def response_outputs(model, params, batch, *, temperature: float, values: bool = False,
                     rngs=None):
  """(logp_BN of the targets, entropy_BN, values_BN or None): log-probabilities and entropy of
  softmax(logits / temperature); values (PPO, model.scalar_head) of the state before each
  completion token, from the same forward pass."""
  from research.rl import losses  # pylint: disable=g-import-not-at-top
  n = batch['targets'].shape[1]
  logits_BNV, values_BN = model.apply({'params': params}, batch['tokens'], batch['positions'],
                                      batch['segment_ids'], n, values,
                                      method=_response_outputs, rngs=rngs)
  logits_BNV = logits_BNV.astype(jnp.float32) / temperature
  logp_BNV = jax.nn.log_softmax(logits_BNV, axis=-1)
  logp_BN = jnp.take_along_axis(logp_BNV, batch['targets'][..., None], axis=-1)[..., 0]
  return logp_BN, losses.entropy(logits_BNV), values_BN


def response_logprobs(model, params, batch, *, temperature: float, rngs=None):
  """(logp_BN of the targets, entropy_BN) of softmax(logits / temperature)."""
  logp_BN, entropy_BN, _ = response_outputs(model, params, batch, temperature=temperature,
                                            rngs=rngs)
  return logp_BN, entropy_BN


def policy_terms(model, params, batch, *, rngs=None, values: bool = False,
                 temperature: float, clip_low: float, clip_high: float, kl_coef: float,
                 kl_estimator: str, entropy_coef: float, aggregation: str, max_len: int):
  """The policy part of both losses: (loss_BN per token, aux) with aux's weight_sum, correct
  (0: RL has no labels to be right about), per-token metric sums, the mask and (values=True,
  PPO) the value head's values_BN from the same forward pass."""
  from research.rl import advantages as adv_lib, losses  # pylint: disable=g-import-not-at-top
  mask_BN = batch['mask'].astype(jnp.float32)
  logp_BN, entropy_BN, values_BN = response_outputs(model, params, batch,
                                                    temperature=temperature, values=values,
                                                    rngs=rngs)
  pg_BN, clipped_BN = losses.clipped_policy_loss(logp_BN, batch['old_logp'],
                                                 batch['advantages'], mask_BN,
                                                 clip_low=clip_low, clip_high=clip_high)
  on_BN = mask_BN > 0  # zeroed off the mask: junk there must not reach exp or the gradient
  kl_BN = adv_lib.kl_estimate(jnp.where(on_BN, logp_BN, 0.0),
                              jnp.where(on_BN, batch['ref_logp'], 0.0), kl_estimator)
  loss_BN = pg_BN - entropy_coef * entropy_BN
  if kl_coef:
    loss_BN = loss_BN + kl_coef * kl_BN
  pg_sum, weight_sum = losses.aggregate(pg_BN, mask_BN, aggregation, max_len=max_len)
  approx_sum, _ = losses.approx_kl(logp_BN, batch['old_logp'], mask_BN)
  per_token = weight_sum / jnp.maximum(jnp.sum(mask_BN), 1.0)
  token_sum = lambda x_BN: jnp.sum(x_BN * mask_BN) * per_token
  metrics = {
      'rl/policy_loss': pg_sum,
      'rl/clip_fraction': token_sum(clipped_BN.astype(jnp.float32)),
      'rl/entropy': token_sum(entropy_BN),
      'rl/kl_ref': token_sum(kl_BN),
      'rl/approx_kl': approx_sum * per_token,
  }
  aux = dict(weight_sum=weight_sum, correct=jnp.zeros((), jnp.float32), metrics=metrics,
             mask=mask_BN, values=values_BN)
  return loss_BN, aux


def finish(loss_BN, aux, *, aggregation: str, max_len: int):
  """(loss_sum, aux) from the per-token total loss, in the trainer's convention."""
  from research.rl import losses  # pylint: disable=g-import-not-at-top
  mask_BN = aux.pop('mask')
  aux.pop('values')
  loss_sum, _ = losses.aggregate(loss_BN, mask_BN, aggregation, max_len=max_len)
  aux['loss_sum'] = loss_sum
  return loss_sum, aux
