r"""Fill-mask inference for encoder (MLM) models: the most likely pieces at every [MASK].

Example (the 400-step model of configs/encoder/shakespeare.py, still a weak predictor):

  fill_mask(model, params, tokenizer, 'My lord, I [MASK] you.')
  -> [(4, [('\n', 0.088), ("'", 0.051), (' I', 0.018), ('And', 0.017), (' you', 0.011)])]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.objectives import mlm

SPACE_PIECE = '\u2581'  # SentencePiece's word-boundary marker, '▁'


def encode_with_masks(tokenizer, text: str) -> np.ndarray:
  """Ids of `text` in which each [MASK] absorbs the space before it.

  The tokenizer encodes "be [MASK]" as '▁be', '▁', '[MASK]': a user-defined symbol never merges
  with the space before it. In training text the space is part of the next word's piece
  ('▁be', '▁not'), so a stray '▁' piece is never followed by a word there. Dropping it lets the
  mask stand for a whole space-prefixed piece, like RoBERTa's '<mask>' that absorbs its leading
  space: the candidates for "be [MASK]" are then ' not', ' so', ... rather than 'not', 'so'.
  """
  ids = list(tokenizer.encode(text))
  mask_id = tokenizer.mask_id
  space_id = tokenizer.piece_to_id(SPACE_PIECE)
  if tokenizer.id_to_piece(space_id) != SPACE_PIECE:
    space_id = None  # no lone-space piece in this vocabulary: nothing to absorb
  kept = [i for n, i in enumerate(ids)
          if not (i == space_id and n + 1 < len(ids) and ids[n + 1] == mask_id)]
  return np.asarray(kept, np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(model, params, model_state, tokens_1T):
  variables = {'params': params, **model_state}
  return jax.nn.softmax(model.apply(variables, tokens_1T)[0], axis=-1)


def fill_mask(model, params, tokenizer, text: str, *, top_k: int = 5, model_state=None
              ) -> list[tuple[int, list[tuple[str, float]]]]:
  """The `top_k` most likely pieces, with probabilities, at every [MASK] of `text`.

  Args:
    model: an `EncoderLM` (eval mode), e.g. `research.models.build_model(config)`.
    params: its parameters (unboxed).
    tokenizer: the run's `Tokenizer`; it encodes the text '[MASK]' as `mask_id`.
    text: the prompt, with one or more '[MASK]'. A space before a mask belongs to the
      prediction (see `encode_with_masks`).
    top_k: how many candidates per mask.
    model_state: the checkpoint's non-gradient collections (TrainState.model_state, e.g. the
      aux-free MoE selection bias); {} or None for models without any.

  Returns:
    One (position, candidates) per mask, in order: `position` is the mask's index in the model
    input (`encode_with_masks(tokenizer, text)`), candidates are (piece text, probability) with
    the piece decoded ('▁' as a space). Probabilities come from the softmax over the whole
    vocabulary; special ids ([MASK], eos, sentinels, ...) and ids past the tokenizer's
    vocabulary are never listed.
  """
  tokens_T = encode_with_masks(tokenizer, text)
  positions = np.flatnonzero(tokens_T == tokenizer.mask_id)
  if not len(positions):
    raise UserError(f'no [MASK] in {text!r}: write [MASK] where a piece should be predicted')
  max_len = model.cfg.max_len
  if model.cfg.position in ('learned', 'sinusoidal') and len(tokens_T) > max_len:
    raise UserError(f'the text is {len(tokens_T)} pieces, the model reads at most {max_len}')
  probs_TV = np.asarray(_probabilities(model, params, model_state or {},
                                       jnp.asarray(tokens_T)[None]))
  listable_V = np.zeros(probs_TV.shape[-1], bool)
  listable_V[mlm.ordinary_ids(tokenizer)] = True
  results = []
  for position in positions:
    probs_V = np.where(listable_V, probs_TV[position], -1.0)
    best = np.argsort(-probs_V, kind='stable')[:top_k]
    results.append((int(position), [(tokenizer.decode([int(i)]), float(probs_V[i]))
                                    for i in best]))
  return results
