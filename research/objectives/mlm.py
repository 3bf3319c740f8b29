"""Masked language modelling (Devlin et al. 2019): predict chosen tokens from both sides.

Per row, `objective.mask_rate` of the eligible tokens (every token but the specials: pad, eos,
unk, bos, [MASK], sentinels) are chosen, round(rate x eligible) of them and at least one when
any is eligible. Of the chosen, `objective.mask_token_rate` become [MASK],
`objective.random_token_rate` a random ordinary token (any id that is not a special), and the
rest stay as they are, so the model cannot learn that only [MASK] positions matter (BERT's
80/10/10). Only chosen positions are scored; targets are the original tokens everywhere.

No shift: an example is `data.seq_len` tokens. Windows span document boundaries; segment ids
from the EOS tokens keep attention inside each document, as in causal LM.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.layers import moe as moe_lib
from research.objectives import causal_lm

DEFAULT_RATES = {'mask_rate': 0.15, 'mask_token_rate': 0.8, 'random_token_rate': 0.1}


def window_len(config) -> int:
  return config.data.seq_len


def init_args(batch_size: int, config):
  return (jnp.zeros((batch_size, config.data.seq_len), jnp.int32),)


def rates(config) -> tuple[float, float, float]:
  """(mask_rate, mask_token_rate, random_token_rate) from `config.objective`, validated."""
  objective = config.objective if config is not None else {}
  mask_rate, mask_token_rate, random_token_rate = (
      float(objective.get(name, default)) for name, default in DEFAULT_RATES.items())
  if not 0 < mask_rate <= 1:
    raise ConfigError('objective.mask_rate', mask_rate, 'must be in (0, 1] (BERT: 0.15)')
  for name, value in (('mask_token_rate', mask_token_rate),
                      ('random_token_rate', random_token_rate)):
    if not 0 <= value <= 1:
      raise ConfigError(f'objective.{name}', value, 'must be in [0, 1]')
  if mask_token_rate + random_token_rate > 1:
    raise ConfigError('objective.random_token_rate', random_token_rate,
                      f'plus objective.mask_token_rate={mask_token_rate} exceeds 1 (BERT: '
                      '0.1 + 0.8, the remaining 0.1 kept unchanged)')
  return mask_rate, mask_token_rate, random_token_rate


def special_ids(tokenizer) -> np.ndarray:
  """Ids that are never chosen nor drawn as random replacements."""
  ids = [tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.bos_id,
         tokenizer.mask_id]
  ids = [i for i in ids if i is not None]  # an imported tokenizer may lack bos or unk
  ids += [tokenizer.sentinel_id(i) for i in range(getattr(tokenizer, 'num_sentinels', 0))]
  return np.unique(np.asarray(ids, np.int64))


def ordinary_ids(tokenizer) -> np.ndarray:
  """The ids a random replacement is drawn from: the vocabulary minus the specials."""
  return np.setdiff1d(np.arange(tokenizer.vocab_size), special_ids(tokenizer))


def _corrupt_row(tokens_T, eligible_T, rng, *, rates_, mask_id, ordinary):
  """One row's inputs and chosen positions; all noise from this row's generator."""
  mask_rate, mask_token_rate, random_token_rate = rates_
  candidates = np.flatnonzero(eligible_T)
  num = min(len(candidates), max(1, round(mask_rate * len(candidates))))
  chosen = rng.permutation(candidates)[:num]
  action = rng.random(num)  # < mask_token_rate: [MASK]; then random; the rest unchanged
  inputs_T = tokens_T.copy()
  to_mask = chosen[action < mask_token_rate]
  to_random = chosen[(action >= mask_token_rate) &
                     (action < mask_token_rate + random_token_rate)]
  inputs_T[to_mask] = mask_id
  inputs_T[to_random] = ordinary[rng.integers(len(ordinary), size=len(to_random))]
  chosen_T = np.zeros(tokens_T.shape, bool)
  chosen_T[chosen] = True
  return inputs_T, chosen_T


def make_batch(window_BT: np.ndarray, *, tokenizer, config=None, rngs=None
               ) -> dict[str, np.ndarray]:
  """[B, T] token windows -> corrupted inputs, original targets, weights on chosen positions,
  segment ids and positions [B, T]."""
  if rngs is None or len(rngs) != len(window_BT):
    raise ValueError('mlm.make_batch needs one np.random.Generator per row (rngs)')
  rates_ = rates(config)
  targets_BT = window_BT.astype(np.int32)
  eligible_BT = ~np.isin(targets_BT, special_ids(tokenizer))
  ordinary = ordinary_ids(tokenizer)
  rows = [_corrupt_row(tokens_T, eligible_T, rng, rates_=rates_, mask_id=tokenizer.mask_id,
                       ordinary=ordinary)
          for tokens_T, eligible_T, rng in zip(targets_BT, eligible_BT, rngs)]
  inputs_BT = np.stack([inputs for inputs, _ in rows]).astype(np.int32)
  weights_BT = np.stack([chosen for _, chosen in rows]).astype(np.float32)
  segment_ids_BT, positions_BT = causal_lm.segments_from_eos(targets_BT, tokenizer.eos_id)
  # Padding (if a source pads) is segment 0: attended by nothing else.
  segment_ids_BT = np.where(targets_BT == tokenizer.pad_id, 0, segment_ids_BT).astype(np.int32)
  return dict(inputs=inputs_BT, targets=targets_BT, weights=weights_BT,
              segment_ids=segment_ids_BT, positions=positions_BT)


def loss_fn(model, params, batch, *, rngs=None, model_state=None):
  """Cross-entropy and accuracy over the chosen positions only; (loss_sum, aux) as summed."""
  logits_BTV, moe = moe_lib.apply_model(
      model, {'params': params, **(model_state or {})}, batch['inputs'], batch['positions'],
      batch['segment_ids'], batch.get('token_types'), rngs=rngs)
  loss_sum, weight_sum, correct = causal_lm.cross_entropy(logits_BTV, batch['targets'],
                                                          batch['weights'])
  return moe_lib.add_to_loss(
      loss_sum, dict(loss_sum=loss_sum, weight_sum=weight_sum, correct=correct), moe)
