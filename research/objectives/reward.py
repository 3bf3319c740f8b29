"""Reward models: a scalar head on a decoder or encoder, trained on preference pairs.

Each example is a pair (prompt + chosen, prompt + rejected), the same JSONL rows as DPO's
(research/data/sft.py: `encode(prompt) + encode(response) + [eos]`, bos first where the
tokenizer adds one). The model is its backbone plus `model.scalar_head` (a Dense(D -> 1) with
bias on the final-normed hidden states, research/layers/embeddings.py), which config_lib.finalize
turns on for this objective; init_from restores the backbone and the head starts fresh
(configs/finetune/reward.py's finetune.restore).

The score. r(prompt, response) is the head's value at the response's eos, the last token of the
example (`last_token_scores`): a decoder's eos has attended to the whole prompt and response
(causal), an encoder's every position sees the whole example (bidirectional, within its
segment), so the same position serves both. The eos must be an input for that, so an example
may take at most data.seq_len tokens (DPO's take data.seq_len + 1: its eos is only a target);
longer ones are counted as too long and dropped, as everywhere in sft.py.

The loss (Bradley-Terry; Ouyang et al. 2022, with Llama 2's margin, Touvron et al. 2023):
-log sigmoid(r(chosen) - r(rejected) - m) per pair, m = the row's "margin" number when it has
one, else `reward.margin` (default 0: plain Bradley-Terry). A margin m > 0 keeps pushing until
chosen leads by about m, for pairs whose annotators said "much better".

The unembedding stays in the parameter tree, untouched by this loss (zero gradient; with the
config's weight_decay 0 it stays as loaded), so a reward workdir is still its backbone's
language model; scoring never reads it.

Logged per pair: train/loss, train/accuracy (= reward/accuracy: pairs with r(chosen) >
r(rejected)), reward/chosen and reward/rejected (mean scores) and reward/margin (mean
r(chosen) - r(rejected): the learned gap, not the loss margin). Evaluation (eval_metrics; the
trainer's eval lines and research.evaluate) reports eval/loss, eval/accuracy (the held-out
preference accuracy), eval/pairs and the same reward/ metrics; no perplexity.

research.load(workdir).rewards(prompts, responses) scores texts exactly as the loss does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.layers import moe as moe_lib
from research.objectives import dpo

FAMILIES = ('decoder', 'encoder')
SIDES = ('chosen', 'rejected')


def check_config(config) -> None:
  """The family (a ConfigError naming model.family otherwise) and the head: sets
  model.scalar_head, which a reward model needs (config_lib.finalize calls this)."""
  family = config.model.family
  if family not in FAMILIES:
    raise ConfigError('model.family', family, "a reward model is a 'decoder' or 'encoder' with a "
                      'scalar head: init_from one of those')
  config.model.scalar_head = True


def load_dataset(config, workdir: str):
  from research.data import sft  # pylint: disable=g-import-not-at-top
  check_config(config)
  return sft.load_preferences(config, sft.tokenizer_for(config, workdir), 'reward',
                              max_tokens=config.data.seq_len, margin=float(config.reward.margin))


def window_len(config) -> int:
  return config.data.seq_len + 1


def init_args(batch_size: int, config):
  return (jnp.zeros((batch_size, config.data.seq_len), jnp.int32),)


def loss_kwargs(config) -> dict:
  return {'margin': float(config.reward.margin)}


def make_batch(rows, *, tokenizer=None, config=None, rngs=None):
  del tokenizer, config, rngs
  return dict(rows)


def last_index(segment_ids_BT):
  """[B] index of each row's last real token (its eos): rows hold one example from column 0."""
  return jnp.maximum(jnp.sum(segment_ids_BT > 0, axis=-1) - 1, 0)


def last_token_scores(model, variables, tokens_BT, positions_BT, segment_ids_BT, *, rngs=None):
  """(float32 scores_B, moe): the scalar head at each row's last real token. `moe` as
  research.layers.moe.apply_model (None for dense models)."""
  values_BT, moe = moe_lib.apply_model(model, variables, tokens_BT, positions_BT, segment_ids_BT,
                                       rngs=rngs, method='scalars')
  index_B = last_index(segment_ids_BT)
  return jnp.take_along_axis(values_BT, index_B[:, None], axis=1)[:, 0], moe


def pair_scores(model, params, batch, *, rngs=None, model_state=None):
  """(r_chosen_B, r_rejected_B, moe): both sides in one forward pass of [B x 2] rows, pair b's
  two rows adjacent (a reshape that keeps the batch sharding)."""
  b, t = batch['chosen_inputs'].shape
  stacked = {name: jnp.stack([batch[f'chosen_{name}'], batch[f'rejected_{name}']], axis=1
                             ).reshape(2 * b, t) for name in ('inputs', 'positions', 'segment_ids')}
  scores, moe = last_token_scores(model, {'params': params, **(model_state or {})},
                                  stacked['inputs'], stacked['positions'],
                                  stacked['segment_ids'], rngs=rngs)
  scores_B2 = scores.reshape(b, 2)
  return scores_B2[:, 0], scores_B2[:, 1], moe


# The summary over held-out pairs is DPO's: loss, preference accuracy and the objective's own
# metrics per pair, no perplexity.
eval_metrics = dpo.eval_metrics


def loss_fn(model, params, batch, *, rngs=None, model_state=None, margin: float = 0.0):
  """(summed Bradley-Terry loss, aux) over the batch's pairs; weight_sum counts the real pairs.
  The batch's `margin` column ([B, 1], research/data/sft.py) gives each pair's margin; without
  one, every pair takes `margin`."""
  pair_B = (jnp.sum(batch['chosen_segment_ids'], -1) > 0).astype(jnp.float32)
  chosen_B, rejected_B, moe = pair_scores(model, params, batch, rngs=rngs,
                                          model_state=model_state)
  margin_B = batch['margin'][:, 0] if 'margin' in batch else jnp.full_like(chosen_B, margin)
  gap_B = chosen_B - rejected_B
  loss_sum = jnp.sum(-jax.nn.log_sigmoid(gap_B - margin_B) * pair_B)
  total = lambda x_B: jnp.sum(x_B * pair_B)
  correct = total((gap_B > 0).astype(jnp.float32))
  metrics = {'reward/accuracy': correct, 'reward/chosen': total(chosen_B),
             'reward/rejected': total(rejected_B), 'reward/margin': total(gap_B)}
  aux = dict(loss_sum=loss_sum, weight_sum=jnp.sum(pair_B), correct=correct, metrics=metrics)
  return moe_lib.add_to_loss(loss_sum, aux, moe)
