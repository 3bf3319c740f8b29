"""Sparse attention kernels against the dense reference, linear memory, models, rolling caches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.inference import decoding
from research.layers import attention, blockwise
from research.layers import patterns as P
from tests import helpers

B, T, H, G, K = 2, 72, 4, 2, 8  # T is not a multiple of the 16-token blocks
SEGMENTS = np.array([[1] * 40 + [2] * 32, [1] * 60 + [0] * 12], np.int32)
PREFIX = np.array([[True] * 13 + [False] * 59, [True] * 30 + [False] * 42])

PATTERNS = {
    'full': P.Pattern('full', block_size=16),
    'sliding': P.Pattern('sliding', window=10, block_size=16),
    'longformer': P.Pattern('longformer', window=6, global_tokens=5, block_size=16),
    'bigbird': P.Pattern('bigbird', window=16, global_tokens=16, random_blocks=1, block_size=16,
                         seed=3),
    'chunked': P.Pattern('chunked', chunk=20, block_size=16),
}
MODES = {'causal': (True, False), 'prefix': (True, True), 'bidirectional': (False, False)}


def _qkv(t=T, seed=0, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(ks[0], (B, t, H, K), dtype),
          jax.random.normal(ks[1], (B, t, G, K), dtype),
          jax.random.normal(ks[2], (B, t, G, K), dtype),
          jax.random.normal(ks[3], (B, t, H, K), dtype))


def _spec(causal, prefix, segments=SEGMENTS):
  return attention.MaskSpec.self_attention(
      jnp.asarray(segments), causal=causal, prefix_BT=jnp.asarray(PREFIX) if prefix else None)


def _reference(q, k, v, pattern, spec):
  return attention.attend_xla(q, k, v, spec.dense(pattern))


def _value_and_grads(fn, q, k, v, cotangent):
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v) * cotangent)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize('mode', list(MODES))
@pytest.mark.parametrize('name', list(PATTERNS))
def test_blockwise_matches_reference_forward_and_gradients(name, mode):
  causal, prefix = MODES[mode]
  pattern, spec = PATTERNS[name], _spec(causal, prefix)
  q, k, v, cot = _qkv()
  ref = _value_and_grads(lambda q, k, v: _reference(q, k, v, pattern, spec), q, k, v, cot)
  ours = _value_and_grads(lambda q, k, v: blockwise.attend_blockwise(
      q, k, v, pattern, segment_ids_BT=spec.q_segment_ids_BT, causal=spec.causal,
      prefix_BT=spec.prefix_BT), q, k, v, cot)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-4)
  for g_ours, g_ref in zip(ours[1], ref[1]):
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=2e-5)
  if name != 'full':  # the pattern really is sparse here
    assert int(spec.dense(pattern).sum()) < int(spec.dense().sum())


def test_blockwise_with_relative_bias_and_gqa_heads():
  pattern, spec = PATTERNS['sliding'], _spec(True, False)
  q, k, v, _ = _qkv(seed=1)
  bias_HTS = jax.random.normal(jax.random.key(7), (H, T, T))
  ref = attention.attend_xla(q, k, v, spec.dense(pattern), bias_HTS)
  ours = blockwise.attend_blockwise(q, k, v, pattern, segment_ids_BT=spec.q_segment_ids_BT,
                                    causal=True, bias_HTS=bias_HTS)
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_bigbird_random_blocks_are_seeded_and_causal():
  pattern = PATTERNS['bigbird']
  a = P.random_blocks(pattern, 12, True)
  assert a == P.random_blocks(pattern, 12, True)
  assert a != P.random_blocks(dataclasses.replace(pattern, seed=4), 12, True)
  for qb, blocks in enumerate(a):
    assert len(blocks) == min(1, max(0, qb - 2))
    assert all(1 <= kb < qb - 1 for kb in blocks)  # after the global block, before the window
  # A causal row's blocks do not depend on the length (so decoding sees training's pattern).
  assert P.random_blocks(pattern, 30, True)[:12] == a


def test_block_table_width_is_constant_in_length():
  sliding = P.Pattern('sliding', window=512, block_size=64)
  widths = [P.block_table(sliding, n, forward=False, causal=True)[0].shape[1]
            for n in (16, 64, 256)]
  assert widths == [9, 9, 9]  # ceil(511 / 64) + 1 blocks, whatever the length
  bigbird = P.Pattern('bigbird', window=64, global_tokens=128, random_blocks=3, block_size=64)
  widths = [P.block_table(bigbird, n, forward=True, causal=False)[0].shape[1]
            for n in (16, 64, 256)]
  assert widths == [8, 8, 8]  # 3 window + 2 global + 3 random


@pytest.mark.parametrize('name,causal', [('sliding', True), ('longformer', False),
                                         ('chunked', True), ('full', True)])
def test_splash_matches_reference_in_the_pallas_interpreter(name, causal):
  t = 256  # splash tiles of 128
  pattern = dataclasses.replace(PATTERNS[name], window=40, global_tokens=7, chunk=96)
  segments = np.concatenate([np.full((B, 150), 1), np.full((B, 106), 2)], axis=1)
  spec = _spec(causal, False, segments)
  q, k, v, cot = _qkv(t=t)
  ref = _reference(q, k, v, pattern, spec)
  ours = attention.attend_splash(q, k, v, pattern, segment_ids_BT=spec.q_segment_ids_BT,
                                 causal=causal, interpret=True)
  np.testing.assert_allclose(ours, ref, atol=2e-5)
  if name == 'sliding':
    g_ref = jax.grad(lambda q: jnp.sum(_reference(q, k, v, pattern, spec) * cot))(q)
    g_ours = jax.grad(lambda q: jnp.sum(attention.attend_splash(
        q, k, v, pattern, segment_ids_BT=spec.q_segment_ids_BT, causal=True,
        interpret=True) * cot))(q)
    np.testing.assert_allclose(g_ours, g_ref, atol=5e-5)


def test_cudnn_sliding_window_arguments_mean_our_window():
  # jax's XLA version of the exact call the cuDNN path makes (no cuDNN here).
  pattern, spec = PATTERNS['sliding'], _spec(True, False)
  q, k, v, _ = _qkv()
  ours = attention.attend_cudnn_window(q, k, v, pattern.window,
                                       segment_ids_BT=spec.q_segment_ids_BT, implementation='xla')
  np.testing.assert_allclose(ours, _reference(q, k, v, pattern, spec), atol=1e-5)


def _temp_bytes(fn, t):
  q, k, v, _ = _qkv(t=t)
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))
  return grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_memory_grows_linearly_and_dense_quadratically():
  pattern = P.Pattern('sliding', window=128, block_size=64)
  spec = lambda t: attention.MaskSpec.self_attention(jnp.ones((B, t), jnp.int32), causal=True)
  sparse = [_temp_bytes(lambda q, k, v: attention.attend('blockwise', q, k, v, spec(q.shape[1]),
                                                         pattern), t) for t in (1024, 2048)]
  dense = [_temp_bytes(lambda q, k, v: attention.attend('xla', q, k, v, spec(q.shape[1]),
                                                        pattern), t) for t in (1024, 2048)]
  assert sparse[1] / sparse[0] < 2.5, sparse
  assert dense[1] / dense[0] > 3.5, dense
  assert sparse[1] < dense[1] / 4


def test_auto_picks_per_backend_and_never_a_gpu_or_tpu_kernel_on_cpu(monkeypatch):
  sliding, bigbird = PATTERNS['sliding'], PATTERNS['bigbird']
  bf16, f32 = jnp.bfloat16, jnp.float32
  resolve = attention.resolve_implementation
  assert resolve('auto', f32, sliding) == 'blockwise'  # this CPU
  assert resolve('auto', f32) == 'xla'
  for backend, dtype, pattern, kw, expected in [
      ('gpu', bf16, None, {}, 'cudnn'), ('gpu', f32, None, {}, 'xla'),
      ('gpu', bf16, sliding, {}, 'cudnn'), ('gpu', f32, sliding, {}, 'blockwise'),
      ('gpu', bf16, sliding, {'causal': False}, 'blockwise'),
      ('gpu', bf16, sliding, {'prefix': True}, 'blockwise'),
      ('gpu', bf16, bigbird, {}, 'blockwise'), ('tpu', bf16, None, {}, 'xla'),
      ('tpu', bf16, sliding, {}, 'splash'), ('tpu', bf16, bigbird, {}, 'blockwise'),
      ('tpu', bf16, sliding, {'prefix': True}, 'blockwise'),
      ('cpu', bf16, sliding, {}, 'blockwise'), ('cpu', bf16, None, {}, 'xla')]:
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert resolve('auto', dtype, pattern, **kw) == expected, (backend, dtype, pattern, kw)
  monkeypatch.undo()
  with pytest.raises(attention.ConfigError, match='model.attention.implementation'):
    resolve('cudnn', bf16, bigbird)
  with pytest.raises(attention.ConfigError, match="choose one of"):
    resolve('flash', bf16)


# ---------------------------------------------------------------------------------- models


def _model_config(**overrides):
  base = {'model.attention.pattern': 'sliding,full', 'model.attention.window': 5,
          'model.attention.block_size': 8, 'model.position': 'rope', 'data.seq_len': 24}
  return helpers.tiny_config(**{**base, **overrides})


def _logits(config, *args, method=None):
  model = models.build_model(config)
  params = model.init(jax.random.key(0), *args)['params']
  return model.apply({'params': params}, *args, method=method)


@pytest.mark.parametrize('family,pattern', [
    ('decoder', 'sliding,full'), ('decoder', 'longformer'), ('decoder', 'bigbird'),
    ('encoder', 'sliding*2'), ('encoder', 'bigbird'), ('encoder_decoder', 'sliding')])
def test_models_blockwise_equals_dense_reference(family, pattern):
  overrides = {'model.family': family, 'model.attention.pattern': pattern,
               'model.attention.global_tokens': 8, 'model.attention.random_blocks': 1}
  if family == 'encoder':
    overrides['objective.name'] = 'mlm'
  if family == 'encoder_decoder':
    overrides.update({'objective.name': 'span_corruption', 'model.position': 'relative'})
  if pattern == 'bigbird':  # 6 blocks of 4: the window and one global block (random: above)
    overrides.update({'model.attention.window': 4, 'model.attention.block_size': 4,
                      'model.attention.global_tokens': 4, 'model.attention.random_blocks': 0})
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, 100, (2, 24)), jnp.int32)
  segments = jnp.asarray(np.repeat([[1] * 14 + [2] * 10], 2, axis=0), jnp.int32)
  if family == 'encoder_decoder':
    args = (tokens, tokens[:, :12], segments, segments[:, :12])
  else:
    args = (tokens, None, segments)
  outs = {}
  for impl in ('xla', 'blockwise'):
    config = _model_config(**overrides, **{'model.attention.implementation': impl})
    outs[impl] = _logits(config, *args)
  np.testing.assert_allclose(outs['blockwise'], outs['xla'], atol=2e-5)
  full = _logits(_model_config(**{**overrides, 'model.attention.pattern': 'full'}), *args)
  assert not np.allclose(full, outs['xla'], atol=1e-4)  # the pattern matters


def test_prefix_lm_and_scanned_stack_with_a_pattern():
  tokens = jnp.asarray(np.random.default_rng(1).integers(4, 100, (2, 24)), jnp.int32)
  prefix = jnp.asarray(np.arange(24)[None, :] < np.array([[9], [15]]))
  outs = {}
  for impl in ('xla', 'blockwise'):
    config = _model_config(**{'model.attention.pattern': 'sliding', 'model.scan_layers': True,
                              'model.attention.implementation': impl})
    model = models.build_model(config)
    params = model.init(jax.random.key(0), tokens)['params']
    outs[impl] = model.apply({'params': params}, tokens, None, None, prefix)
  np.testing.assert_allclose(outs['blockwise'], outs['xla'], atol=2e-5)


@pytest.mark.parametrize('pattern,overrides', [
    ('sliding', {'model.attention.window': 6}),
    ('sliding*2,full', {'model.attention.window': 4}),
    ('chunked', {'model.attention.chunk': 7})])
def test_rolling_cache_greedy_tokens_equal_full_cache_and_forward(pattern, overrides, monkeypatch):
  config = _model_config(**{'model.attention.pattern': pattern, 'model.num_layers': 3,
                            'model.position': 'rope', **overrides})
  model = models.build_model(config)
  prompt = jnp.asarray(np.random.default_rng(2).integers(4, 128, (2, 9)), jnp.int32)
  params = model.init(jax.random.key(1), prompt)['params']
  n = 14  # prompt + continuation (23) is longer than the window: the slots roll over
  rolling, rolling_logits = decoding.generate_with_logits(
      model, params, prompt, jax.random.key(0), max_new_tokens=n, temperature=0.0)
  cache = decoding.init_cache(model.clone(decode=True), 2, 9 + n)
  span = attention.rolling_span(model.cfg.attention.layer_pattern(0))
  key_slots = {tuple(x.shape)[1] for path, x in jax.tree_util.tree_leaves_with_path(cache)
               if 'key' in jax.tree_util.keystr(path)}
  assert min(key_slots) == span < 9 + n  # rolling layers keep span slots
  # The full cache (one slot per position), masked by the pattern.
  decoding._compiled_decode.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(attention, 'rolling_span', lambda pattern: 0)
  full, full_logits = decoding.generate_with_logits(
      model, params, prompt, jax.random.key(0), max_new_tokens=n, temperature=0.0)
  decoding._compiled_decode.cache_clear()  # pylint: disable=protected-access
  np.testing.assert_allclose(rolling_logits, full_logits, atol=1e-5)
  np.testing.assert_array_equal(rolling, full)
  # And the full forward pass over prompt + continuation predicts the same tokens.
  sequence = jnp.concatenate([prompt, rolling], axis=1)
  logits = model.apply({'params': params}, sequence)
  np.testing.assert_allclose(logits[:, 8:-1], rolling_logits, atol=1e-5)
  np.testing.assert_array_equal(jnp.argmax(logits[:, 8:-1], -1), rolling)


@pytest.mark.slow
def test_encoder_decoder_rolling_cache_matches_the_teacher_forced_decoder():
  from research.inference import seq2seq  # pylint: disable=g-import-not-at-top
  config = _model_config(**{'model.family': 'encoder_decoder', 'objective.name': 'span_corruption',
                            'model.attention.pattern': 'sliding', 'model.attention.window': 3})
  model = models.build_model(config)
  encoder_tokens = jnp.asarray(np.random.default_rng(3).integers(4, 128, (2, 12)), jnp.int32)
  params = model.init(jax.random.key(2), encoder_tokens, encoder_tokens[:, :4])['params']
  tokens, logits = seq2seq.generate_with_logits(model, params, encoder_tokens, jax.random.key(0),
                                                max_new_tokens=10)
  # The decoder's window of 3 rolled over 10 steps; teacher forcing sees the same inputs.
  decoder_inputs = jnp.concatenate([jnp.zeros((2, 1), jnp.int32), tokens[:, :-1]], axis=1)
  forced = model.apply({'params': params}, encoder_tokens, decoder_inputs)
  np.testing.assert_allclose(forced, logits, atol=1e-5)
  beams, scores = seq2seq.beam_search(model, params, encoder_tokens, beam_size=2,
                                      max_new_tokens=10)  # the rolling cache follows its beams
  assert beams.shape == (2, 2, 10) and np.all(np.isfinite(scores))
