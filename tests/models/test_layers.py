"""Shared layers: attention variants, masks, positions, feed-forwards, norms, the decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.layers import attention, mlp, norms, positions
from tests import helpers


def _rand(*shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_grouped_query_equals_multi_head_with_repeated_kv():
  q_BTHK, k_BSGK, v_BSGK = _rand(2, 5, 4, 8), _rand(2, 5, 2, 8, seed=1), _rand(2, 5, 2, 8, seed=2)
  gqa = attention.attend_xla(q_BTHK, k_BSGK, v_BSGK, None)
  # Query head h uses kv head h // (H/G).
  mha = attention.attend_xla(q_BTHK, jnp.repeat(k_BSGK, 2, axis=2), jnp.repeat(v_BSGK, 2, axis=2),
                             None)
  np.testing.assert_allclose(gqa, mha, atol=1e-6)


def test_xla_attention_matches_jax_reference():
  q, k, v = _rand(2, 6, 4, 8), _rand(2, 6, 2, 8, seed=1), _rand(2, 6, 2, 8, seed=2)
  seg = jnp.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 0]])
  idx = jnp.broadcast_to(jnp.arange(6), (2, 6))
  mask = attention.make_mask(seg, seg, idx, idx, causal=True)
  ours = attention.attend_xla(q, k, v, mask)
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation='xla')
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_mask_blocks_other_segments_and_the_future():
  seg = jnp.array([[1, 1, 2, 2]])
  idx = jnp.arange(4)[None]
  mask = np.asarray(attention.make_mask(seg, seg, idx, idx, causal=True))[0]
  expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(mask, expected)
  prefix = jnp.array([[True, True, False, False]])
  one_seg = jnp.ones_like(seg)
  mask = np.asarray(attention.make_mask(one_seg, one_seg, idx, idx, causal=True,
                                        bidirectional_q_BT=prefix))[0]
  assert mask[0, 1] and not mask[1, 2] and mask[3, 0]


def test_rope_scores_depend_only_on_relative_position():
  q, k = _rand(1, 1, 1, 16), _rand(1, 1, 1, 16, seed=1)
  def score(i, j):
    qi = positions.apply_rope(q, jnp.array([[i]]))
    kj = positions.apply_rope(k, jnp.array([[j]]))
    return float(jnp.sum(qi * kj))
  assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_sinusoidal_table_is_bounded_and_distinct():
  table = positions.sinusoidal_table(64, 32)
  assert np.abs(table).max() <= 1.0
  assert np.min(np.linalg.norm(table[1:] - table[:-1], axis=1)) > 0.01


@pytest.mark.parametrize('activation,num_matrices', [('relu', 2), ('gelu', 2), ('swiglu', 3)])
def test_mlp_variants(activation, num_matrices):
  layer = mlp.MLP(d_ff=32, activation=activation)
  x = _rand(2, 3, 16)
  params = layer.init(jax.random.key(0), x)['params']
  assert len(params) == num_matrices
  y = layer.apply({'params': params}, x)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


def test_norms_normalise():
  x = _rand(2, 3, 16) * 5 + 3
  rms = norms.RMSNorm().apply({'params': {'scale': jnp.ones(16)}}, x)
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(rms ** 2, -1)), 1.0, rtol=1e-4)
  ln = norms.LayerNorm().apply({'params': {'scale': jnp.ones(16), 'bias': jnp.zeros(16)}}, x)
  np.testing.assert_allclose(jnp.mean(ln, -1), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.std(ln, -1), 1.0, rtol=1e-3)


@pytest.mark.parametrize('overrides', [
    {}, {'model.position': 'learned', 'model.tie_embeddings': False},
    {'model.position': 'sinusoidal', 'model.norm': 'layernorm', 'model.activation': 'gelu'},
    {'model.scan_layers': True, 'model.remat': 'full'},
])
def test_decoder_is_causal_and_segment_aware(overrides):
  config = helpers.tiny_config(**overrides)
  model = models.build_model(config)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 4, 128)
  params = model.init(jax.random.key(1), tokens)['params']
  logits = model.apply({'params': params}, tokens)
  assert logits.shape == (2, 12, 128) and logits.dtype == jnp.float32
  # Changing a later token never changes earlier logits.
  changed = tokens.at[:, 8].set((tokens[:, 8] + 1) % 128)
  np.testing.assert_allclose(model.apply({'params': params}, changed)[:, :8], logits[:, :8],
                             atol=1e-5)
  # A second packed segment sees nothing of the first: it matches running it alone.
  seg = jnp.array([[1] * 5 + [2] * 7] * 2)
  pos = jnp.array([list(range(5)) + list(range(7))] * 2)
  packed = model.apply({'params': params}, tokens, pos, seg)
  alone = model.apply({'params': params}, tokens[:, 5:])
  np.testing.assert_allclose(packed[:, 5:], alone, atol=1e-4)


def test_parameter_count_of_gpt2_small():
  from research import config_lib
  import os
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__),
                                               '../../configs/decoder/gpt2_small.py'))
  model = models.build_model(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  count = sum(x.size for x in jax.tree.leaves(shapes))
  # 124,475,904 = GPT-2's 124,439,808 + 47 padded vocabulary rows x 768.
  assert count == 124_475_904
