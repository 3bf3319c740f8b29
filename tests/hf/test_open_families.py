"""Qwen2 (q/k/v biases), Qwen3 (QK-norm), Llama with llama3 RoPE scaling, Gemma 2 (soft-caps
that bind, local:global layers) and Gemma 3 (QK-norm, its own local RoPE base, linear scaling on
global layers, a window shorter than the sequence): tiny random transformers models import to
its float32 logits and greedy generations (lmforge's KV cache), export back bit for bit, and
load in transformers with no missing keys and the same logits. Older config.json spellings,
unsupported options and the export's choice of family need no model."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from research import models
from research.errors import UserError
from research.layers import positions
from research.models import hf
from research.models.hf import gemma, mapping
from research.models.transformer import transformer_config
from tests.hf import parity

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

pytestmark = pytest.mark.hf

VOCAB = 128
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
             bos_token_id=None, eos_token_id=None, pad_token_id=None)
# original_max_position_embeddings 64 with factors 2 and 8 puts head_dim 16's frequencies in
# all three llama3 bands at theta 500: kept, interpolated and divided by the factor.
LLAMA3 = dict(rope_type='llama3', rope_theta=500.0, factor=4.0, low_freq_factor=2.0,
              high_freq_factor=8.0, original_max_position_embeddings=64)
LLAMA_INIT = dict(std=0.15)
# Gemma's tied embeddings, x sqrt(d_model), would make every token predict itself: small
# embeddings and a large final norm let the other weights decide.
GEMMA_INIT = dict(std=0.3, norm_offset=0.0, embed_std=0.03, final_norm=8.0)
GEMMA3_ROPE = {'full_attention': dict(rope_type='linear', factor=8.0, rope_theta=1000.0),
               'sliding_attention': dict(rope_type='default', rope_theta=10.0)}


@dataclasses.dataclass(frozen=True)
class Case:
  config: type
  fields: dict
  init: dict
  architecture: str  # what export picks from the imported config alone
  expected: dict  # lmforge config fields of the import


CASES = {
    'qwen2': Case(transformers.Qwen2Config,
                  dict(num_hidden_layers=2, rope_theta=500.0, tie_word_embeddings=False),
                  LLAMA_INIT, 'Qwen2ForCausalLM',
                  {'model.qkv_bias': True, 'model.qk_norm': False, 'model.tie_embeddings': False,
                   'model.rope_theta': 500.0}),
    'qwen3': Case(transformers.Qwen3Config,
                  dict(num_hidden_layers=2, head_dim=24, rope_theta=500.0,
                       tie_word_embeddings=True),
                  LLAMA_INIT, 'Qwen3ForCausalLM',
                  {'model.qk_norm': True, 'model.qkv_bias': False, 'model.head_dim': 24,
                   'model.tie_embeddings': True}),
    'llama3': Case(transformers.LlamaConfig,
                   dict(num_hidden_layers=2, rope_parameters=LLAMA3),
                   LLAMA_INIT, 'LlamaForCausalLM',
                   {'model.rope_scaling.kind': 'llama3', 'model.rope_scaling.factor': 4.0,
                    'model.rope_scaling.low_freq_factor': 2.0,
                    'model.rope_scaling.high_freq_factor': 8.0,
                    'model.rope_scaling.original_max_len': 64, 'model.rope_theta': 500.0}),
    'gemma2': Case(transformers.Gemma2Config,
                   dict(num_hidden_layers=2, head_dim=16, query_pre_attn_scalar=24,
                        sliding_window=4, attn_logit_softcapping=5.0,
                        final_logit_softcapping=3.0, rope_theta=100.0),
                   GEMMA_INIT, 'Gemma2ForCausalLM',
                   {'model.attention.pattern': 'sliding,full', 'model.attention.window': 4,
                    'model.attention_softcap': 5.0, 'model.final_softcap': 3.0,
                    'model.attention_scale': 24 ** -0.5, 'model.norm': 'rmsnorm_plus_one',
                    'model.norm_position': 'sandwich', 'model.activation': 'geglu',
                    'model.embed_scale': True, 'model.qk_norm': False,
                    'model.rope_local_theta': 0.0, 'model.tie_embeddings': True}),
    # Four layers of sliding_window_pattern 3: a cycle, then the start of the next.
    'gemma3': Case(transformers.Gemma3TextConfig,
                   dict(num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=24,
                        sliding_window=4, sliding_window_pattern=3, rope_parameters=GEMMA3_ROPE),
                   GEMMA_INIT, 'Gemma3ForCausalLM',
                   {'model.attention.pattern': 'sliding*2,full', 'model.attention.window': 4,
                    'model.qk_norm': True, 'model.rope_local_theta': 10.0,
                    'model.rope_theta': 1000.0, 'model.rope_scaling.kind': 'linear',
                    'model.rope_scaling.factor': 8.0, 'model.attention_softcap': 0.0,
                    'model.final_softcap': 0.0, 'model.norm_position': 'sandwich'}),
}
TOKENS_BT = np.random.default_rng(0).integers(0, VOCAB, (2, 20))  # 20 > the windows of 4
PROMPT_BP = TOKENS_BT[:, :8]
NEW_TOKENS = 32


def _reference(name: str):
  """The random transformers model of CASES[name] (eager attention: the soft-caps)."""
  case = CASES[name]
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
      case.config(**SHAPE, **case.fields), attn_implementation='eager')
  return parity.randomise(model, **case.init)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """name -> (the random transformers model, its save_pretrained directory)."""
  return parity.save_references(CASES, _reference, tmp_path_factory)


@pytest.fixture(scope='module')
def imported(saved):
  """name -> (config, host params) of the import."""
  return parity.import_all(saved, dtype='float32')


@pytest.fixture(scope='module')
def exported(imported, tmp_path_factory):
  """name -> (the family export picks, the directory it wrote)."""
  out = {}
  for name, (config, params) in imported.items():
    family = hf.export_family(config)
    path = str(tmp_path_factory.mktemp(f'{name}_export'))
    assert parity.write_export(family, config, params, path) == ['model.safetensors']
    out[name] = family, path
  return out


@pytest.mark.parametrize('name', list(CASES))
def test_config_fields(name, imported):
  config, _ = imported[name]
  got = {field: mapping.field(config, field) for field in CASES[name].expected}
  assert got == CASES[name].expected
  assert (config.model.num_kv_heads, config.model.d_ff) == (2, 96)


def test_llama3_scaling_changes_the_frequencies(saved, imported):
  config, _ = imported['llama3']
  rope = transformer_config(config.model, seq_len=config.data.seq_len).rope
  scaled, plain = rope.inv_freq(16), positions.Rope(theta=rope.theta).inv_freq(16)
  kept, divided = scaled == plain, np.isclose(scaled, plain / rope.factor, rtol=1e-6)
  assert kept.any() and divided.any() and (~kept & ~divided).any()  # and interpolated ones
  reference, _ = saved['llama3']
  np.testing.assert_allclose(scaled, reference.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)


def test_gemma2_soft_caps_bind(saved):
  """Both caps change transformers' logits at this size: they are tested, not bypassed."""
  reference, _ = saved['gemma2']
  capped = parity.hf_logits(reference, TOKENS_BT)
  assert np.abs(capped).max() > 0.9 * 3.0  # deep in tanh's bend
  layers = reference.model.layers
  try:
    for layer in layers:
      layer.self_attn.attn_logit_softcapping = None
    uncapped_scores = parity.hf_logits(reference, TOKENS_BT)
  finally:
    for layer in layers:
      layer.self_attn.attn_logit_softcapping = 5.0
  assert np.abs(uncapped_scores - capped).max() > 0.1


@pytest.mark.parametrize('name', list(CASES))
def test_logits_and_greedy_generation_match(name, saved, imported):
  reference, _ = saved[name]
  config, params = imported[name]
  model = models.build_model(config)
  expected = parity.hf_logits(reference, TOKENS_BT)
  got = np.asarray(jax.jit(model.apply)({'params': params}, TOKENS_BT))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  assert np.abs(expected).max() > 2.0  # not a comparison of near-zero logits
  expected_new = parity.hf_greedy(reference, PROMPT_BP, NEW_TOKENS)
  # A random model that repeats one token would hide cache errors.
  assert min(len(set(row)) for row in expected_new.tolist()) >= 4
  np.testing.assert_array_equal(parity.lmforge_greedy(model, params, PROMPT_BP, NEW_TOKENS),
                                expected_new)


@pytest.mark.parametrize('name', list(CASES))
def test_export_round_trip_is_bit_identical(name, saved, imported, exported):
  config, params = imported[name]
  family, path = exported[name]
  assert family.architecture == CASES[name].architecture
  original = load_file(os.path.join(saved[name][1], 'model.safetensors'))
  written = load_file(os.path.join(path, 'model.safetensors'))
  assert written.keys() == original.keys()
  for key, value in original.items():
    assert written[key].dtype == value.dtype and np.array_equal(written[key], value), key
  config_again, params_again = hf.convert(path)
  parity.assert_trees_equal(params_again, params)
  config_again.model.dtype = 'float32'
  assert config_again.model.to_dict() == config.model.to_dict()


@pytest.mark.parametrize('name', list(CASES))
def test_transformers_loads_the_export(name, saved, exported):
  reference, _ = saved[name]
  family, path = exported[name]
  loaded = parity.load_export(path, family.architecture, attn_implementation='eager')
  np.testing.assert_array_equal(parity.hf_logits(loaded, TOKENS_BT),
                                parity.hf_logits(reference, TOKENS_BT))
  want, got = reference.config.to_dict(), loaded.config.to_dict()
  for key in ('layer_types', 'rope_parameters', 'sliding_window', 'query_pre_attn_scalar',
              'attn_logit_softcapping', 'final_logit_softcapping', 'head_dim',
              'tie_word_embeddings', 'use_sliding_window', 'model_type'):
    if key in want:  # export may write more (head_dim for Qwen2)
      assert got[key] == want[key], key


# ------------------------------------------------------------------------------------------------
# No models: config.json spellings, errors, the export's choice.


def _config_json(saved, name) -> dict:
  with open(os.path.join(saved[name][1], 'config.json')) as f:
    return json.load(f)


def _older(name: str, hf_config: dict) -> dict:
  """The same model as transformers 4 wrote it: no layer_types, no rope_parameters."""
  old = {k: v for k, v in hf_config.items() if k not in ('layer_types', 'rope_parameters')}
  if name == 'llama3':
    scaling = {k: v for k, v in LLAMA3.items() if k not in ('rope_type', 'rope_theta')}
    old.update(rope_theta=500.0, rope_scaling={'type': 'llama3', **scaling})
  elif name == 'gemma2':
    old.update(rope_theta=100.0)
  elif name == 'gemma3':
    old.update(rope_theta=1000.0, rope_local_base_freq=10.0, sliding_window_pattern=3,
               rope_scaling={'rope_type': 'linear', 'factor': 8.0})
  return old


@pytest.mark.parametrize('name', ['llama3', 'gemma2', 'gemma3'])
def test_older_config_spellings_read_the_same(name, saved, imported):
  hf_config = _config_json(saved, name)
  family = hf.FAMILIES[hf_config['model_type']]
  config = family.lmforge_config(_older(name, hf_config))
  config.model.dtype = 'float32'
  assert config.model.to_dict() == imported[name][0].model.to_dict()


ERRORS = [
    ('llama3', dict(rope_parameters={'rope_type': 'yarn', 'rope_theta': 1e4, 'factor': 4.0}),
     "rope_type='yarn' is not supported"),
    ('llama3', dict(rope_parameters={'rope_type': 'llama3', 'rope_theta': 1e4, 'factor': 8.0}),
     "rope_type='llama3' needs 'low_freq_factor'"),
    ('qwen2', dict(rope_scaling={'type': 'dynamic', 'factor': 2.0}),
     "rope_type='dynamic' is not supported"),
    ('qwen2', dict(use_sliding_window=True, sliding_window=8),
     'qwen2 use_sliding_window=true is not supported'),
    ('qwen3', dict(attention_bias=True), 'qwen3 attention_bias=true is not supported'),
    ('gemma2', dict(layer_types=['sliding_attention', 'chunked_attention']),
     "layer_types has 'chunked_attention'"),
    ('gemma2', dict(layer_types=['full_attention']), 'layer_types has 1 entries'),
    ('gemma2', dict(hidden_activation='gelu'), "hidden_activation='gelu' is not supported"),
    ('gemma3', dict(layer_types=None, sliding_window_pattern=0), 'sliding_window_pattern=0'),
    ('gemma3', dict(rope_parameters={**GEMMA3_ROPE, 'sliding_attention': GEMMA3_ROPE[
        'full_attention'] | {'factor': 2.0}}), "rope_parameters['sliding_attention'] has "
     "rope_type='linear'"),
]


@pytest.mark.parametrize('name,edit,match', ERRORS)
def test_unsupported_options_are_one_line_errors(name, edit, match, saved):
  hf_config = {**_config_json(saved, name), **edit}
  with pytest.raises(UserError) as error:
    hf.FAMILIES[hf_config['model_type']].lmforge_config(hf_config)
  assert match in str(error.value) and '\n' not in str(error.value)


def test_export_picks_the_family_of_each_option(imported):
  qwen2, qwen3 = imported['qwen2'][0], imported['qwen3'][0]
  both = qwen2.copy_and_resolve_references()
  both.model.qk_norm = True  # no family has both
  with pytest.raises(UserError) as error:
    hf.export_family(both)
  message = str(error.value)
  assert 'qwen2: model.qk_norm=True (needs False)' in message
  assert 'qwen3: model.qkv_bias=True (needs False)' in message
  gemma3 = imported['gemma3'][0].copy_and_resolve_references()
  gemma3.model.qk_norm = False  # a local RoPE base: Gemma 3's alone
  with pytest.raises(UserError, match=r'gemma2: model.rope_local_theta=10.0 \(needs 0.0\)'):
    hf.export_family(gemma3)
  assert hf.export_family(qwen3).model_type == 'qwen3'


@pytest.mark.parametrize('kinds,pattern', [
    (['full'] * 3, 'full'),
    (['sliding', 'full'] * 2, 'sliding,full'),
    ((['sliding'] * 5 + ['full']) * 4 + ['sliding'] * 2, 'sliding*5,full'),
    (['full', 'sliding', 'sliding', 'full', 'full'], 'full,sliding*2,full'),  # period 4
    (['sliding', 'full', 'full', 'sliding', 'sliding'], 'sliding,full*2,sliding'),
])
def test_layer_types_become_their_shortest_cycle(kinds, pattern):
  assert gemma.cycle(kinds) == pattern
