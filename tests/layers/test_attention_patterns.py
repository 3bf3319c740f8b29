"""Attention patterns: config parsing and validation, per-layer choice, attended-key counts, FLOPs."""

import dataclasses

import pytest

from research import config_lib, models
from research.errors import ConfigError
from research.layers import patterns as P
from research.models.transformer import TransformerConfig
from research.training import flops
from tests import helpers


def test_interleave_is_cyclic_per_layer():
  assert P.parse_pattern('sliding*5,full') == ('sliding',) * 5 + ('full',)
  assert P.parse_pattern(' sliding * 2 , chunked ') == ('sliding', 'sliding', 'chunked')
  att = P.AttentionConfig(pattern=P.parse_pattern('sliding*2,full'), window=8)
  kinds = [att.layer_pattern(i).kind for i in range(7)]
  assert kinds == ['sliding', 'sliding', 'full', 'sliding', 'sliding', 'full', 'sliding']
  assert P.describe_layers(att, 3) == 'sliding W=8 x2, full'


@pytest.mark.parametrize('overrides,field,match', [
    ({'model.attention.pattern': 'sliding*5,global'}, 'model.attention.pattern',
     "unknown pattern 'global'"),
    ({'model.attention.pattern': 'sliding*0'}, 'model.attention.pattern', 'COUNT >= 1'),
    ({'model.attention.pattern': 'sliding'}, 'model.attention.window', 'needs a window'),
    ({'model.attention.pattern': 'longformer', 'model.attention.window': 4},
     'model.attention.global_tokens', 'needs >= 1 global'),
    ({'model.attention.pattern': 'chunked'}, 'model.attention.chunk', 'chunk >= 1'),
    ({'model.attention.pattern': 'bigbird', 'model.attention.window': 100},
     'model.attention.window', 'multiple of model.attention.block_size=64'),
    ({'model.attention.block_size': 0}, 'model.attention.block_size', 'positive'),
    ({'model.attention.implementation': 'flash'}, 'model.attention.implementation',
     'choose one of'),
    ({'model.attention.pattern': 'sliding*3,full', 'model.attention.window': 4,
      'model.scan_layers': True}, 'model.attention.pattern', 'scan_layers'),
    ({'model.attention.pattern': 'longformer', 'model.attention.window': 4,
      'model.attention.global_tokens': 2, 'model.attention.implementation': 'cudnn'},
     'model.attention.implementation', 'cannot compute the longformer'),
    ({'model.attention.pattern': 'bigbird', 'model.attention.implementation': 'splash'},
     'model.attention.implementation', 'cannot compute the bigbird'),
])
def test_bad_attention_configs_name_the_field(overrides, field, match):
  with pytest.raises(ConfigError, match=match) as error:
    helpers.tiny_config(**overrides)
  assert error.value.field == field


def test_cudnn_sliding_is_causal_only():
  helpers.tiny_config(**{'model.attention.pattern': 'sliding', 'model.attention.window': 8,
                         'model.attention.implementation': 'cudnn'})  # a decoder: fine
  with pytest.raises(ConfigError, match='bidirectional stack'):
    helpers.tiny_config(**{'model.family': 'encoder', 'objective.name': 'mlm',
                           'model.attention.pattern': 'sliding', 'model.attention.window': 8,
                           'model.attention.implementation': 'cudnn'})


def test_command_line_overrides_reach_the_model():
  config = config_lib.load_config('configs/decoder/shakespeare.py:tiny', [
      ('model.attention.pattern', 'sliding*1,full'), ('model.attention.window', '16')])
  cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  assert cfg.attention.pattern == ('sliding', 'full') and cfg.attention.window == 16
  assert cfg.attention_impl == 'auto'
  with pytest.raises(ConfigError, match="unknown key 'patern'"):
    config_lib.load_config('configs/decoder/shakespeare.py:tiny',
                           [('model.attention.patern', 'sliding')])


def test_legacy_flat_attention_impl_still_works():
  config = config_lib.base_config()
  config.model.vocab_size = 512
  config.model.attention_impl = 'xla'  # a config (or saved config.json) from before
  cfg = models.transformer_config(config.model, seq_len=64)
  assert cfg.attention.implementation == 'xla' and cfg.attention_impl == 'xla'
  config.model.attention.implementation = 'blockwise'
  with pytest.raises(ConfigError, match='keep only the latter'):
    models.transformer_config(config.model, seq_len=64)
  del config.model['attention']  # older still: no section at all
  config.model.attention_impl = 'auto'
  assert models.transformer_config(config.model, seq_len=64).attention == P.AttentionConfig()


# ---------------------------------------------------------------------------------- counting


CASES = [P.Pattern('full'), P.Pattern('sliding', window=7),
         P.Pattern('longformer', window=5, global_tokens=3),
         P.Pattern('longformer', window=30, global_tokens=50),
         P.Pattern('bigbird', block_size=8, window=8, global_tokens=16, random_blocks=2, seed=1),
         P.Pattern('bigbird', block_size=8, window=0, global_tokens=0, random_blocks=1),
         P.Pattern('chunked', chunk=16), P.Pattern('chunked', chunk=200)]


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('pattern', CASES, ids=lambda p: p.describe())
@pytest.mark.parametrize('length', [61, 96])
def test_visible_keys_equal_the_dense_mask(pattern, causal, length):
  assert P.visible_keys(pattern, length, causal=causal) == pytest.approx(
      P.count_dense(pattern, length, causal=causal))


def test_visible_keys_by_hand():
  # Causal window of 16 over 128: the first 16 queries see 1..16 keys, the rest 16.
  assert P.visible_keys(P.Pattern('sliding', window=16), 128, causal=True) == pytest.approx(
      (16 * 17 / 2 + 112 * 16) / 128)
  # Bidirectional window of 3 over 10 (|i - j| < 3): 3, 4, 5 x 6, 4, 3 keys.
  assert P.visible_keys(P.Pattern('sliding', window=3), 10, causal=False) == pytest.approx(
      (3 + 4 + 5 * 6 + 4 + 3) / 10)
  # Chunks of 4 over 10, causal: 1+2+3+4, 1+2+3+4, 1+2.
  assert P.visible_keys(P.Pattern('chunked', chunk=4), 10, causal=True) == pytest.approx(23 / 10)
  # Longformer, causal, window 2, 1 global token over 5: 1, 2, 2+1, 2+1, 2+1 (sink j=0).
  assert P.visible_keys(P.Pattern('longformer', window=2, global_tokens=1), 5,
                        causal=True) == pytest.approx(12 / 5)


def _cfg(**kw):
  base = dict(vocab_size=1000, d_model=64, num_layers=4, num_heads=4, num_kv_heads=4,
              head_dim=16, d_ff=256, activation='gelu')
  base.update(kw)
  return TransformerConfig(**base)


def test_flops_per_token_sums_the_layers_patterns():
  att = P.AttentionConfig(pattern=('sliding', 'sliding', 'sliding', 'full'), window=16)
  cfg = _cfg(attention=att)
  n = flops.matmul_params(cfg)
  window = (16 * 17 / 2 + 112 * 16) / 128
  assert flops.flops_per_token(cfg, 128) == pytest.approx(
      6 * n + 12 * 64 * (3 * window + 64.5))
  # Full attention everywhere: the old formula exactly.
  assert flops.flops_per_token(_cfg(), 128) == 6 * n + 12 * 4 * 64 * 64.5
  # An explicit window overrides the patterns (all layers).
  assert flops.flops_per_token(cfg, 128, window=16) == pytest.approx(6 * n + 12 * 4 * 64 * window)
  assert flops.layer_contexts(cfg, 128) == pytest.approx([window] * 3 + [64.5])


def test_flops_per_step_and_encoder_decoder_use_the_patterns():
  dec = helpers.tiny_config(**{'model.attention.pattern': 'chunked', 'model.attention.chunk': 8})
  cfg = models.transformer_config(dec.model, seq_len=32)
  tokens = dec.train.batch_size * 32
  n = flops.matmul_params(cfg)
  chunked = (8 * 9 / 2) / 8  # 4.5 keys per causal query in chunks of 8
  assert flops.flops_per_step(cfg, dec) == pytest.approx(
      tokens * (6 * n + 12 * 64 * 2 * chunked))
  att = P.AttentionConfig(pattern=('sliding',), window=3)
  cfg = _cfg(encoder_layers=2, decoder_layers=1, attention=att)
  attn, mlp = 4 * 64 * 64, 2 * 64 * 256
  matmuls = 10 * 2 * (attn + mlp) + 4 * (1 * (2 * attn + mlp) + 1000 * 64)
  encoder = 2 * (3 + 4 + 5 * 6 + 4 + 3)  # 2 layers, bidirectional window 3 over S=10
  decoder = 1 + 2 + 3 + 3 + 4 * 10  # causal window 3 over T=4, then cross-attention to all S
  assert flops.encoder_decoder_flops(cfg, 10, 4) == pytest.approx(
      6 * matmuls + 12 * 64 * (encoder + decoder))


def test_dataclasses_are_hashable_module_attributes():
  hash(P.AttentionConfig())
  hash(dataclasses.replace(CASES[4], seed=9))
