"""Inference reads the checkpoint's non-gradient state: an aux-free MoE model decodes (KV cache),
fills masks and runs seq2seq with its trained selection bias, not with 0."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from research import models
from research.inference import decoding, fill_mask, seq2seq
from research.layers import moe
from tests import helpers


def _aux_free(**overrides):
  config = helpers.tiny_config(**{
      'model.moe.num_experts': 4, 'model.moe.balance': 'aux_free', 'model.moe.top_k': 1,
      'model.moe.capacity_factor': 4.0, 'model.dtype': 'float32', 'model.d_model': 32,
      'model.moe.d_ff': 32, **overrides})
  return models.build_model(config)


def _biased_state(variables, expert=0):
  """The init's moe_state with every layer's bias pushing all tokens to `expert`."""
  def push(b):
    return np.asarray(b).copy() + 10.0 * (np.arange(b.shape[-1]) == expert)
  return {moe.STATE_COLLECTION: jax.tree.map(push, variables[moe.STATE_COLLECTION])}


def test_cached_decoding_uses_the_model_state():
  model = _aux_free()
  prompt = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
  variables = model.init(jax.random.key(0), prompt)
  params, state = nn.meta.unbox(variables['params']), _biased_state(variables)
  tokens, logits = decoding.generate_with_logits(model, params, prompt, jax.random.key(1),
                                                 max_new_tokens=4, temperature=1.0,
                                                 model_state=state)
  sequence = np.concatenate([prompt, tokens], axis=1)
  full = jax.jit(model.apply)({'params': params, **state}, sequence)
  np.testing.assert_allclose(logits, full[:, 3:-1], atol=1e-4, rtol=1e-4)
  unbiased = jax.jit(model.apply)({'params': params}, sequence)
  assert np.abs(np.asarray(unbiased - full)).max() > 1e-3  # the bias matters here
  same = decoding.generate(model, params, prompt, jax.random.key(1), max_new_tokens=4,
                           temperature=1.0, model_state=state)
  np.testing.assert_array_equal(same, tokens)


def test_fill_mask_and_seq2seq_use_the_model_state():
  class Tokenizer:
    pad_id, eos_id, unk_id, bos_id, mask_id, vocab_size = 0, 1, 2, 3, 4, 128

    def encode(self, text):
      del text
      return [7, 4, 9]

    def piece_to_id(self, piece):
      del piece
      return 0

    def id_to_piece(self, i):
      return f'p{i}'

    def decode(self, ids):
      return ' '.join(map(str, ids))

  encoder = _aux_free(**{'model.family': 'encoder', 'objective.name': 'mlm'})
  tokens = np.array([[7, 4, 9]], np.int32)
  variables = encoder.init(jax.random.key(0), tokens)
  params, state = nn.meta.unbox(variables['params']), _biased_state(variables)
  with_state = fill_mask.fill_mask(encoder, params, Tokenizer(), 'a [MASK] b', top_k=3,
                                   model_state=state)
  without = fill_mask.fill_mask(encoder, params, Tokenizer(), 'a [MASK] b', top_k=3)
  assert with_state != without

  model = _aux_free(**{'model.family': 'encoder_decoder', 'objective.name': 'span_corruption'})
  source = np.array([[5, 6, 7, 1]], np.int32)
  variables = model.init(jax.random.key(0), source, source)
  params, state = nn.meta.unbox(variables['params']), _biased_state(variables)
  _, logits = seq2seq.generate_with_logits(model, params, source, jax.random.key(0),
                                           max_new_tokens=3, model_state=state)
  _, unbiased = seq2seq.generate_with_logits(model, params, source, jax.random.key(0),
                                             max_new_tokens=3)
  assert np.abs(np.asarray(logits - unbiased)).max() > 1e-5  # float32 noise: ~1e-7
  beams, _ = seq2seq.beam_search(model, params, source, beam_size=2, max_new_tokens=3,
                                 model_state=state)
  assert beams.shape == (1, 2, 3)
