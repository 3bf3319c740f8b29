"""Prompts of different lengths in one left-padded batch decode as each prompt does alone, and
as the full forward pass (no cache, no left padding) predicts; stop strings; one program per
prompt bucket."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from research import loading, models
from research.errors import UserError
from research.inference import decoding
from tests.helpers import tiny_config
from tests.inference.test_decoding import init_params

N = 10
LENGTHS = (3, 12, 7)  # with N = 10 every row outlives the window (5) and a chunk (6)
CASES = {
    # GPT-2's shape: learned positions, LayerNorm and biases, multi-head attention.
    'gpt2': {'model.position': 'learned', 'model.norm': 'layernorm', 'model.activation': 'gelu',
             'model.use_bias': True, 'model.num_kv_heads': 4},
    # RoPE, grouped-query heads, a sliding-window and a chunked layer: both keep rolling caches
    # shorter than prompt + continuation, and chunk boundaries count from each row's start.
    'rope_gqa_rolling': {'model.position': 'rope', 'model.num_kv_heads': 1,
                         'model.attention.pattern': 'sliding,chunked',
                         'model.attention.window': 5, 'model.attention.chunk': 6},
    # Dropless mixture of experts with Gemma 2's options: soft-capped scores and logits,
    # sandwich norms, scaled embeddings.
    'moe_gemma': {'model.moe.num_experts': 4, 'model.moe.router': 'dropless',
                  'model.moe.top_k': 2, 'model.attention_softcap': 8.0,
                  'model.final_softcap': 12.0, 'model.norm_position': 'sandwich',
                  'model.embed_scale': True},
}


def build(case):
  config = tiny_config(**{'model.d_model': 32, 'model.d_ff': 64, 'data.seq_len': 64,
                          'model.dtype': 'float32', **CASES[case]})
  model = models.build_model(config)
  return model, init_params(model), config


def prompts_of(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, 128, n).tolist() for n in lengths]


@pytest.fixture(scope='module')
def gpt2():
  return build('gpt2')


@pytest.mark.parametrize('case', list(CASES))
def test_a_padded_batch_decodes_each_prompt_as_alone(case, gpt2):
  model, params, _ = gpt2 if case == 'gpt2' else build(case)
  prompts = prompts_of(LENGTHS)
  prompt_BP, lengths_B = decoding.left_pad(prompts)
  assert prompt_BP.shape == (3, 12) and prompt_BP[0, :9].tolist() == [0] * 9
  greedy = dict(max_new_tokens=N, temperature=0.0)
  tokens_BN, logits_BNV = decoding.generate_with_logits(
      model, params, prompt_BP, jax.random.key(0), prompt_lengths_B=lengths_B, **greedy)
  tokens_BN, logits_BNV = np.asarray(tokens_BN), np.asarray(logits_BNV)
  for b, prompt in enumerate(prompts):
    alone_N, alone_NV = decoding.generate_with_logits(
        model, params, np.asarray([prompt]), jax.random.key(0), **greedy)
    np.testing.assert_array_equal(tokens_BN[b], np.asarray(alone_N)[0])
    np.testing.assert_allclose(logits_BNV[b], np.asarray(alone_NV)[0], atol=1e-5, rtol=1e-5)
  # The independent reference: one full forward pass over each row's prompt + continuation,
  # right-padded (causal attention keeps the padding after a row's text invisible to it).
  width = max(LENGTHS) + N
  sequence_BT = np.zeros((3, width), np.int32)
  for b, prompt in enumerate(prompts):
    sequence_BT[b, :LENGTHS[b] + N] = prompt + tokens_BN[b].tolist()
  full_BTV = np.asarray(jax.jit(model.apply)({'params': params}, sequence_BT))
  for b, length in enumerate(LENGTHS):
    np.testing.assert_allclose(logits_BNV[b], full_BTV[b, length - 1:length - 1 + N],
                               atol=1e-4, rtol=1e-4)
  assert len(set(tokens_BN.ravel().tolist())) > 3  # not one token repeated everywhere


def test_one_program_per_bucket_and_batching_does_not_change_greedy_tokens(gpt2):
  model, params, _ = gpt2
  prompts = prompts_of(LENGTHS + (30,), seed=1)
  decoding._compiled_decode.cache_clear()  # pylint: disable=protected-access
  settings = dict(max_new_tokens=6, temperature=0.0)
  by_2 = decoding.generate_rows(model, params, prompts, jax.random.key(0), batch_size=2,
                                **settings)
  # Two batches of 2 ([3, 7] and [12, 30] tokens), both in the 32-token bucket: one program.
  compiled = decoding._compiled_decode  # pylint: disable=protected-access
  program = compiled(model, 6, 0.0, 0, 1.0, False, False)  # the jit of these settings
  assert program._cache_size() == 1  # pylint: disable=protected-access
  longer = decoding.generate_rows(model, params, prompts + prompts_of((40,), seed=2),
                                  jax.random.key(0), batch_size=2, **settings)
  assert program._cache_size() == 2  # the 64-token bucket  # pylint: disable=protected-access
  assert longer[:4] == by_2
  for prompt, got in zip(prompts, by_2):
    alone = decoding.generate(model, params, np.asarray([prompt]), jax.random.key(0), **settings)
    assert got == np.asarray(alone)[0].tolist()
  with pytest.raises(UserError, match='prompt 1 is empty'):
    decoding.generate_rows(model, params, [[5], []], jax.random.key(0), **settings)
  with pytest.raises(UserError, match=r'each prompt length must be in 1\.\.3'):
    decoding.generate(model, params, np.ones((2, 3), np.int32), jax.random.key(0),
                      prompt_lengths_B=[0, 3], **settings)


def test_cut_at_stop_and_eos():
  assert decoding.cut_at_stop('ab.cd\nef', ('\n', '.')) == ('ab', True)  # the earliest
  assert decoding.cut_at_stop('abc', ('\n',)) == ('abc', False)
  assert decoding.cut_at_eos([4, 5, 1, 6, 1], 1) == ([4, 5], True)
  assert decoding.cut_at_eos([4, 5], None) == ([4, 5], False)
  decode = lambda ids: ''.join(CharTokenizer.CHARS[i] for i in ids)
  ids = [CharTokenizer.CHARS.index(c) for c in 'ab cd. ef']
  # Token ids keep the shortest prefix whose text holds a stop string (the stop included).
  assert decoding.cut_ids_at_stop(ids, decode, ('. ', 'f')) == (ids[:7], True)
  assert decoding.cut_ids_at_stop(ids, decode, ('x',)) == (ids, False)
  assert decoding.check_stop('\n') == ('\n',)
  with pytest.raises(UserError, match="stop=.*non-empty strings"):
    decoding.check_stop(('\n', ''))


class CharTokenizer:
  """One character per token id (0 is eos, never emitted by these prompts' continuations
  unless the model picks it; outputs are compared with and without stop strings alike)."""
  CHARS = '\x00' + ''.join(chr(c) for c in range(32, 32 + 127))
  eos_id, adds_bos = 0, False

  def encode(self, text, add_bos=False):
    del add_bos
    return [self.CHARS.index(c) for c in text]

  def decode(self, ids):
    return ''.join(self.CHARS[i] for i in ids)


def test_generate_stops_rows_at_stop_strings(gpt2):
  model, params, config = gpt2
  lm = loading.LanguageModel(config=config, run=types.SimpleNamespace(eval_model=model),
                             params=params, model_state={}, step=0, tokenizer=CharTokenizer(),
                             workdir='memory')
  prompts = ['abc', 'Hello, world', 'xyz!?']
  free = lm.generate(prompts, max_new_tokens=N)
  assert all(len(text) == N for text in free), free  # no eos: every row runs N tokens
  # Row 0's character that appears last for the first time, and two characters of row 1.
  stop = (max(set(free[0]), key=free[0].find), free[1][-3:-1])
  got = lm.generate(prompts, max_new_tokens=N, stop=stop)
  for text, full in zip(got, free):
    starts = [full.find(s) for s in stop if s in full]
    assert text == full[:min(starts, default=len(full))]
  assert 0 < len(got[0]) < N and len(got[1]) <= N - 3
  ids = lm.generate([lm.tokenizer.encode(p) for p in prompts], max_new_tokens=N, stop=stop)
  for row, full in zip(ids, free):
    ends = [full.find(s) + len(s) for s in stop if s in full]
    assert lm.tokenizer.decode(row) == full[:min(ends, default=len(full))]
  with pytest.raises(UserError, match='has no tokenizer'):
    loading.LanguageModel(config=config, run=lm.run, params=params, model_state={}, step=0,
                          tokenizer=None, workdir='memory').generate([[5, 6]], stop='\n')
