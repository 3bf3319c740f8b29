"""Gemma 2 (HF `Gemma2ForCausalLM`) and Gemma 3 text (`Gemma3ForCausalLM`) <-> lmforge decoder.

What sets them apart from Llama (llama.py, whose projection and feed-forward tables they share):

  embeddings x sqrt(hidden_size), in the compute dtype  model.embed_scale
  RMSNorm x (1 + weight): the stored weights are        model.norm='rmsnorm_plus_one'
    Gemma's own, copied as they are
  a norm before and after each sublayer                 model.norm_position='sandwich':
    input_layernorm, post_attention_layernorm             attn_norm, attn_post_norm
    pre_feedforward_layernorm, post_feedforward_layernorm mlp_norm, mlp_post_norm
  GeGLU with tanh GELU (gelu_pytorch_tanh)              model.activation='geglu' (jax.nn.gelu,
                                                          approximate=True)
  scores x query_pre_attn_scalar ** -0.5                 model.attention_scale
  attn_logit_softcapping (Gemma 2 only: Gemma 3's        model.attention_softcap
    attention never reads it)
  final_logit_softcapping                                model.final_softcap
  local and global layers (`layer_types`)               model.attention.pattern, e.g.
                                                          'sliding,full', 'sliding*5,full'
  sliding_window W: HF masks kv_idx > q_idx - W          model.attention.window (the query and
                                                          the W - 1 keys before it)
  Gemma 3: q_norm/k_norm (1 + weight) before RoPE        model.qk_norm
  Gemma 3: sliding layers' own RoPE base                 model.rope_local_theta
    (rope_local_base_freq); global layers' rope_theta    model.rope_theta, model.rope_scaling
    and scaling (linear, factor 8 on 4B and larger)

`layer_types` (transformers 5; any list, stored as its shortest repeating cycle) decides the
pattern; older configs have none: Gemma 2 alternates from a sliding layer 0, and Gemma 3's layer
i is global when (i + 1) % sliding_window_pattern == 0. Gemma 3's RoPE is read from
rope_parameters nested by layer type ('full_attention', 'sliding_attention'), or from the older
rope_theta, rope_scaling and rope_local_base_freq. Export writes both spellings.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

from research import config_lib
from research.errors import UserError
from research.layers import patterns as patterns_lib
from research.models.hf import llama, mapping, rope
from research.models.hf.mapping import Tensor
from research.models.transformer import transformer_config

_ACTIVATIONS = ('gelu_pytorch_tanh', 'gelu_new', 'gelu_fast')  # the tanh approximation
_LAYER_KINDS = {'sliding_attention': 'sliding', 'full_attention': 'full'}
_LAYER_TYPES = {kind: name for name, kind in _LAYER_KINDS.items()}


@dataclasses.dataclass(frozen=True)
class Variant:
  """What sets a Gemma model type apart, with its config class's defaults for absent fields."""
  model_type: str
  architecture: str
  qk_norm: bool  # q_norm/k_norm (Gemma 3)
  local_rope: bool  # sliding layers' own RoPE (Gemma 3: rope_local_base_freq)
  attention_softcap: bool  # the attention reads attn_logit_softcapping (Gemma 2)
  period: int  # layer i is global when (i + 1) % period == 0, for configs without layer_types
  max_position_embeddings: int
  final_logit_softcapping: float | None
  attn_logit_softcapping: float | None


GEMMA2_VARIANT = Variant('gemma2', 'Gemma2ForCausalLM', qk_norm=False, local_rope=False,
                         attention_softcap=True, period=2, max_position_embeddings=8192,
                         final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
GEMMA3_VARIANT = Variant('gemma3_text', 'Gemma3ForCausalLM', qk_norm=True, local_rope=True,
                         attention_softcap=False, period=6, max_position_embeddings=131_072,
                         final_logit_softcapping=None, attn_logit_softcapping=None)


# ------------------------------------------------------------------------------------------------
# Local and global layers.


def cycle(kinds: list[str]) -> str:
  """The pattern of per-layer kinds: their shortest repeating cycle, run-length encoded
  (['sliding'] * 5 + ['full'] repeated -> 'sliding*5,full')."""
  n = len(kinds)
  period = next(p for p in range(1, n + 1) if all(kinds[i] == kinds[i % p] for i in range(n)))
  runs = [(kind, len(list(group))) for kind, group in itertools.groupby(kinds[:period])]
  return ','.join(kind if count == 1 else f'{kind}*{count}' for kind, count in runs)


def _layer_types(variant: Variant, hf: dict) -> list[str]:
  name, n = variant.model_type, hf['num_hidden_layers']
  layer_types = hf.get('layer_types')
  if layer_types is None:  # configs from before transformers wrote layer_types
    period = hf.get('sliding_window_pattern', variant.period)
    if not isinstance(period, int) or period < 1:
      raise UserError(f'{name} sliding_window_pattern={period!r}: give N >= 1 (layer i is '
                      'global when (i + 1) % N == 0), or layer_types')
    return ['full_attention' if (i + 1) % period == 0 else 'sliding_attention' for i in range(n)]
  if len(layer_types) != n:
    raise UserError(f'{name} layer_types has {len(layer_types)} entries for '
                    f'num_hidden_layers={n}: give one per layer')
  for layer_type in layer_types:
    if layer_type not in _LAYER_KINDS:
      raise UserError(f'{name} layer_types has {layer_type!r}: lmforge converts '
                      f'{sorted(_LAYER_KINDS)} layers')
  return layer_types


def _set_pattern(variant: Variant, c, hf: dict) -> None:
  layer_types = _layer_types(variant, hf)
  c.model.attention.pattern = cycle([_LAYER_KINDS[t] for t in layer_types])
  if 'sliding_attention' in layer_types:
    window = hf.get('sliding_window', 4096)
    if not window:
      raise UserError(f'{variant.model_type} sliding_window={window!r} with sliding_attention '
                      'layers: give the window (Gemma 2 and 3: 4096, Gemma 3 1B: 512)')
    c.model.attention.window = window


# ------------------------------------------------------------------------------------------------
# RoPE: Gemma 2 has one for every layer; Gemma 3 one per layer type.


def _gemma3_parameters(hf: dict, layer_type: str) -> dict:
  """Gemma 3's rope_parameters for one layer type, as transformers 5 reads them."""
  nested = hf.get('rope_parameters') or {}
  params = dict(nested.get(layer_type) or {}) if set(nested) & set(_LAYER_KINDS) else {}
  if layer_type == 'full_attention':
    params.update(hf.get('rope_scaling') or {})
    params.setdefault('rope_theta', hf.get('rope_theta', 1_000_000.0))
  else:
    params.setdefault('rope_theta', hf.get('rope_local_base_freq', 10_000.0))
  return params


def _set_rope(variant: Variant, c, hf: dict) -> None:
  name = variant.model_type
  if not variant.local_rope:
    rope.set_rope(c.model, rope.parameters(hf), hf, f'{name} rope_parameters')
    return
  full = _gemma3_parameters(hf, 'full_attention')
  local = _gemma3_parameters(hf, 'sliding_attention')
  rope.set_rope(c.model, full, hf, f"{name} rope_parameters['full_attention']")
  if rope.rope_type(local) == 'default':
    c.model.rope_local_theta = float(local['rope_theta'])
  elif local != full:  # lmforge's local RoPE is a base alone, or the global one
    raise UserError(f"{name} rope_parameters['sliding_attention'] has rope_type="
                    f"{rope.rope_type(local)!r}: lmforge converts sliding layers with 'default' "
                    "RoPE, or the full_attention layers' own")


# ------------------------------------------------------------------------------------------------
# Import.


def _check(variant: Variant, hf: dict) -> None:
  name = variant.model_type
  act = hf.get('hidden_activation') or hf.get('hidden_act') or 'gelu_pytorch_tanh'
  if act not in _ACTIVATIONS:
    raise UserError(f'{name} hidden_activation={act!r} is not supported: lmforge converts '
                    f'{list(_ACTIVATIONS)} (GeGLU with tanh GELU)')
  for flag in ('attention_bias', 'use_bidirectional_attention'):
    if hf.get(flag):
      raise UserError(f'{name} {flag}=true is not supported: lmforge converts causal {name} '
                      'models without biases')


def lmforge_config(variant: Variant, hf: dict):
  """The lmforge decoder config of a Gemma 2 or Gemma 3 text config.json."""
  _check(variant, hf)
  c = config_lib.base_config()
  c.name = f'hf/{variant.model_type}'
  c.model.family = 'decoder'
  c.data.vocab_size = hf['vocab_size']
  c.model.vocab_size = hf['vocab_size']
  context = hf.get('max_position_embeddings', variant.max_position_embeddings)
  c.data.seq_len = min(context, llama.MAX_SEQ_LEN)
  c.model.max_len = context
  c.model.d_model = hf['hidden_size']
  c.model.num_layers = hf['num_hidden_layers']
  c.model.num_heads = hf['num_attention_heads']
  c.model.num_kv_heads = hf.get('num_key_value_heads') or hf['num_attention_heads']
  c.model.head_dim = hf.get('head_dim', 256)
  c.model.d_ff = hf['intermediate_size']
  c.model.activation = 'geglu'
  c.model.norm = 'rmsnorm_plus_one'
  c.model.norm_position = 'sandwich'
  c.model.norm_eps = hf.get('rms_norm_eps', 1e-6)
  c.model.embed_scale = True
  c.model.qk_norm = variant.qk_norm
  c.model.position = 'rope'
  _set_rope(variant, c, hf)
  c.model.attention_scale = float(hf.get('query_pre_attn_scalar', 256)) ** -0.5
  if variant.attention_softcap:
    c.model.attention_softcap = float(
        hf.get('attn_logit_softcapping', variant.attn_logit_softcapping) or 0.0)
  c.model.final_softcap = float(
      hf.get('final_logit_softcapping', variant.final_logit_softcapping) or 0.0)
  c.model.tie_embeddings = bool(hf.get('tie_word_embeddings', True))
  c.model.use_bias = False
  c.model.init_std = hf.get('initializer_range', 0.02)
  _set_pattern(variant, c, hf)
  return config_lib.finalize(c)


# ------------------------------------------------------------------------------------------------
# Export.


def _query_pre_attn_scalar(scale: float | None, head_dim: int) -> int | None:
  """The integer whose ** -0.5 is the score scale (None: 1/sqrt(head_dim)); None when no
  integer gives it."""
  if not scale:
    return head_dim
  scalar = round(scale ** -2)
  return scalar if scalar > 0 and math.isclose(scalar ** -0.5, scale) else None


def _sliding_window_pattern(pattern: tuple[str, ...]) -> int | None:
  """N when the cycle is N - 1 sliding layers and a full one (transformers 4 reads this)."""
  n = len(pattern)
  return n if pattern == ('sliding',) * (n - 1) + ('full',) else None


def _pattern_reason(config) -> list[str]:
  pattern = mapping.field(config, 'model.attention.pattern', 'full')
  if set(patterns_lib.parse_pattern(pattern)) <= set(_LAYER_TYPES):
    return []
  return [f"model.attention.pattern={pattern!r} (needs 'sliding' and 'full' layers only)"]


def unsupported(variant: Variant, config) -> list[str]:
  if reasons := mapping.differences(config, {'model.family': 'decoder'}):
    return reasons
  own = {'model.qk_norm': variant.qk_norm, 'model.embed_scale': True,
         'model.rope_scaling.kind': llama.ROPE_SCALINGS}
  free = {'model.final_softcap', 'model.attention_scale'}  # any value is a config field
  if variant.attention_softcap:
    free.add('model.attention_softcap')
  if variant.local_rope:
    free.add('model.rope_local_theta')
  plain = {k: v for k, v in mapping.PLAIN.items() if k not in free}
  reasons = mapping.differences(config, {
      'model.position': 'rope', 'model.norm': 'rmsnorm_plus_one',
      'model.norm_position': 'sandwich', 'model.activation': 'geglu', 'model.use_bias': False,
      **plain, **own}) + _pattern_reason(config)
  scale = mapping.field(config, 'model.attention_scale', 0.0)
  if scale and _query_pre_attn_scalar(scale, 0) is None:
    reasons.append(f'model.attention_scale={scale!r} (needs N ** -0.5 for an integer N: '
                   'query_pre_attn_scalar)')
  return reasons


def _rope_fields(variant: Variant, t) -> dict:
  if not variant.local_rope:
    return rope.hf_fields(t.rope)
  out = rope.hf_fields(t.rope)  # rope_theta and rope_scaling: the global layers' (transformers 4)
  out['rope_parameters'] = {'full_attention': rope.hf_parameters(t.rope),
                            'sliding_attention': rope.hf_parameters(t.rope_local)}
  out['rope_local_base_freq'] = t.rope_local.theta
  return out


def hf_config(variant: Variant, config) -> dict:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  kinds = [t.attention.layer_pattern(i).kind for i in range(t.num_layers)]
  out = {**mapping.hf_common(config, FAMILIES[variant.model_type]),
         'hidden_size': t.d_model, 'intermediate_size': t.d_ff,
         'num_hidden_layers': t.num_layers, 'num_attention_heads': t.num_heads,
         'num_key_value_heads': t.num_kv_heads, 'head_dim': t.head_dim,
         'hidden_activation': 'gelu_pytorch_tanh', 'max_position_embeddings': t.max_len,
         'rms_norm_eps': t.norm_eps, **_rope_fields(variant, t),
         'query_pre_attn_scalar': _query_pre_attn_scalar(t.attention_scale, t.head_dim),
         'layer_types': [_LAYER_TYPES[kind] for kind in kinds],
         # A window that covers the context when no layer slides (transformers builds the mask).
         'sliding_window': t.attention.window or t.max_len,
         'final_logit_softcapping': t.final_softcap or None,
         'attn_logit_softcapping': t.attention_softcap or None,
         'tie_word_embeddings': t.tie_embeddings, 'attention_bias': False,
         'attention_dropout': 0.0, 'use_bidirectional_attention': False}
  period = _sliding_window_pattern(t.attention.pattern)
  if variant.local_rope and period:
    out['sliding_window_pattern'] = period
  return out


def _layer(i: int, t) -> list[Tensor]:
  b, p = f'model.layers.{i}.', f'stack/layer_{i}/'
  return [Tensor(f'{p}attn_norm/scale', f'{b}input_layernorm.weight'),
          *llama.attention_tensors(i, t),
          Tensor(f'{p}attn_post_norm/scale', f'{b}post_attention_layernorm.weight'),
          Tensor(f'{p}mlp_norm/scale', f'{b}pre_feedforward_layernorm.weight'),
          *llama.mlp_tensors(i),
          Tensor(f'{p}mlp_post_norm/scale', f'{b}post_feedforward_layernorm.weight')]


def tensors(config) -> list[Tensor]:
  return llama.decoder_tensors(config, _layer)


def _family(variant: Variant) -> mapping.Family:
  return mapping.Family(model_type=variant.model_type, architecture=variant.architecture,
                        lmforge_config=functools.partial(lmforge_config, variant),
                        hf_config=functools.partial(hf_config, variant), tensors=tensors,
                        unsupported=functools.partial(unsupported, variant),
                        ignored=llama.ignored)


FAMILIES = {v.model_type: _family(v) for v in (GEMMA2_VARIANT, GEMMA3_VARIANT)}
