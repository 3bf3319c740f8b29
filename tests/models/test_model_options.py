"""The architecture options of today's open models (Llama 3, Qwen2/3, Gemma 2/3): RoPE scaling
against transformers' own frequencies, soft-capping on both attention paths, and a decoder with
every option on that decodes with its cache exactly as its full forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.errors import ConfigError
from research.inference import decoding
from research.layers import attention, blockwise, positions
from research.layers import patterns as P
from tests.inference import test_decoding as decoding_tests

GEMMA_LIKE = {'norm': 'rmsnorm_plus_one', 'norm_position': 'sandwich', 'qk_norm': True,
              'qkv_bias': True, 'embed_scale': True, 'attention_softcap': 5.0,
              'final_softcap': 3.0, 'activation': 'geglu', 'rope_theta': 1e6,
              'rope_local_theta': 1e4, 'attention_scale': 0.3}


def _config(**fields):
  c = decoding_tests.tiny_config(**fields)
  c.model.attention.pattern = 'sliding,full'
  c.model.attention.window = 5
  c.model.rope_scaling.kind = 'linear'
  c.model.rope_scaling.factor = 4.0
  return c


@pytest.mark.hf
@pytest.mark.parametrize('rope_scaling', [
    {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
     'original_max_position_embeddings': 8192},
    {'rope_type': 'linear', 'factor': 8.0},
])
def test_rope_frequencies_equal_transformers(rope_scaling):
  pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # pylint: disable=g-import-not-at-top
  hf = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=16, rope_theta=500000.0,
                                rope_scaling=rope_scaling, max_position_embeddings=131072)
  expected, attention_factor = ROPE_INIT_FUNCTIONS[rope_scaling['rope_type']](hf, 'cpu')
  assert attention_factor == 1.0
  ours = positions.Rope(
      theta=500000.0, scaling=rope_scaling['rope_type'], factor=8.0,
      low_freq_factor=rope_scaling.get('low_freq_factor', 1.0),
      high_freq_factor=rope_scaling.get('high_freq_factor', 4.0),
      original_max_len=rope_scaling.get('original_max_position_embeddings', 8192))
  np.testing.assert_allclose(ours.inv_freq(128), expected.numpy(), rtol=1e-6)
  assert not np.allclose(ours.inv_freq(128), positions.Rope(theta=500000.0).inv_freq(128))


@pytest.mark.parametrize('pattern', [P.Pattern('sliding', window=10, block_size=16),
                                     P.Pattern('full', block_size=16)])
def test_softcapped_blockwise_equals_the_reference(pattern):
  ks = jax.random.split(jax.random.key(0), 3)
  q = 4 * jax.random.normal(ks[0], (2, 40, 4, 8))
  k = 4 * jax.random.normal(ks[1], (2, 40, 2, 8))
  v = jax.random.normal(ks[2], (2, 40, 2, 8))
  spec = attention.MaskSpec.self_attention(jnp.ones((2, 40), jnp.int32), causal=True)
  reference = attention.attend_xla(q, k, v, spec.dense(pattern), softcap=2.0)
  got = blockwise.attend_blockwise(q, k, v, pattern,
                                   segment_ids_BT=spec.q_segment_ids_BT,
                                   causal=True, softcap=2.0)
  np.testing.assert_allclose(got, reference, atol=1e-5)
  uncapped = attention.attend_xla(q, k, v, spec.dense(pattern))
  assert not np.allclose(uncapped, reference, atol=1e-3)  # the cap matters at these scores


def test_softcap_never_picks_a_kernel_that_cannot_cap():
  sliding = P.Pattern('sliding', window=8)
  assert attention.resolve_implementation('auto', jnp.bfloat16, sliding, softcap=True,
                                          backend='gpu') == 'blockwise'
  assert attention.resolve_implementation('auto', jnp.bfloat16, None, softcap=True,
                                          backend='gpu') == 'xla'
  with pytest.raises(ConfigError, match='soft-capped'):
    attention.resolve_implementation('cudnn', jnp.bfloat16, sliding, softcap=True)


def test_every_option_on_decodes_like_the_full_forward():
  model = models.build_model(_config(**GEMMA_LIKE))
  params = decoding_tests.init_params(model)
  layer = params['stack']['layer_0']
  assert {'attn_post_norm', 'mlp_post_norm'} <= set(layer)
  assert {'query_norm', 'key_norm', 'query_bias', 'key_bias', 'value_bias'} <= set(layer['attn'])
  assert 'out_bias' not in layer['attn']  # qkv_bias: the output projection has none
  prompt_BP = decoding_tests.PROMPT_BP
  tokens_BN, logits_BNV = decoding.generate_with_logits(model, params, prompt_BP,
                                                        jax.random.key(0), **decoding_tests.SAMPLED)
  full_BNV = decoding_tests.check_against_full_forward(model, params, prompt_BP, tokens_BN,
                                                       logits_BNV)
  assert np.abs(full_BNV).max() < 3.0  # the final soft-cap bounds the logits


@pytest.mark.parametrize('field,value,match', [
    ('attention_softcap', -1.0, 'model.attention_softcap'),
    ('norm_position', 'middle', 'model.norm_position'),
])
def test_bad_options_name_the_field(field, value, match):
  with pytest.raises(ConfigError, match=match):
    models.build_model(_config(**{field: value}))


def test_decoder_only_options_refuse_other_families():
  c = _config(embed_scale=True)
  c.model.family = 'encoder'
  with pytest.raises(ConfigError, match='model.embed_scale'):
    models.build_model(c)
