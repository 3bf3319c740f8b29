"""Llama-shaped decoders (HF `LlamaForCausalLM`, `MistralForCausalLM`) <-> lmforge decoder.

RoPE, RMSNorm (pre-norm, `rms_norm_eps`), SwiGLU (w_gate = gate_proj, w_in = up_proj,
w_out = down_proj), grouped-query attention, no biases, tied or untied embeddings (lm_head), and
`head_dim` from the config when given. HF's Linear weights are [out, in], so every matrix is
transposed. HF's Llama checkpoints already use the rotate_half (GPT-NeoX) RoPE layout that
lmforge's apply_rope uses, pairing dimension i with i + K/2, so queries and keys need no
permutation. Mistral's `sliding_window` W is lmforge's attention pattern 'sliding' with window W
on every layer: both let a query see itself and the W - 1 keys before it (HF masks
kv_idx > q_idx - W). Ignored by name: rotary inv_freq buffers and a tied lm_head.

Each model type is a `Variant`: the flags that set it apart. Model types that differ only by such
flags belong here (Qwen2: qkv biases; Qwen3: QK-norm; their tables already follow
model.qkv_bias and model.qk_norm). `rope_scaling` is not converted yet.
"""

from __future__ import annotations

import dataclasses
import functools

from research import config_lib
from research.errors import UserError
from research.layers import patterns as patterns_lib
from research.models.hf import mapping
from research.models.hf.mapping import TRANSPOSE, Tensor, linear_in_heads, linear_out_heads
from research.models.hf.mapping import split_last
from research.models.transformer import transformer_config

# An imported model's training length when its context is longer (model.max_len keeps the
# context; set data.seq_len to train on more).
MAX_SEQ_LEN = 2048


@dataclasses.dataclass(frozen=True)
class Variant:
  """What sets a Llama-shaped model type apart."""
  model_type: str
  architecture: str
  sliding_window: bool = False  # one window for every layer (Mistral), else full attention


LLAMA_VARIANT = Variant('llama', 'LlamaForCausalLM')
MISTRAL_VARIANT = Variant('mistral', 'MistralForCausalLM', sliding_window=True)


def _rope_theta(hf: dict) -> float:
  """RoPE's base; raises UserError for frequency scaling (not converted yet)."""
  params = hf.get('rope_parameters') or {}
  scaling = hf.get('rope_scaling') or {}
  kind = params.get('rope_type') or scaling.get('rope_type') or scaling.get('type') or 'default'
  if kind != 'default':
    raise UserError(f"{hf.get('model_type')} rope_type={kind!r} (rope_scaling) is not "
                    "supported yet: lmforge converts 'default' RoPE only")
  return float(params.get('rope_theta', hf.get('rope_theta', 10_000.0)))


def _check(hf: dict) -> None:
  name = hf.get('model_type')
  if hf.get('hidden_act', 'silu') != 'silu':
    raise UserError(f"{name} hidden_act={hf['hidden_act']!r} is not supported: lmforge converts "
                    "'silu' (SwiGLU)")
  for flag in ('attention_bias', 'mlp_bias'):
    if hf.get(flag):
      raise UserError(f'{name} {flag}=true is not supported: lmforge converts Llama models '
                      'without biases')


def lmforge_config(variant: Variant, hf: dict):
  """The lmforge decoder config of a Llama or Mistral config.json."""
  _check(hf)
  c = config_lib.base_config()
  c.name = f'hf/{variant.model_type}'
  c.model.family = 'decoder'
  c.data.vocab_size = hf['vocab_size']
  c.model.vocab_size = hf['vocab_size']
  context = hf.get('max_position_embeddings', MAX_SEQ_LEN)
  c.data.seq_len = min(context, MAX_SEQ_LEN)
  c.model.max_len = context
  c.model.d_model = hf['hidden_size']
  c.model.num_layers = hf['num_hidden_layers']
  c.model.num_heads = hf['num_attention_heads']
  c.model.num_kv_heads = hf.get('num_key_value_heads') or hf['num_attention_heads']
  c.model.head_dim = hf.get('head_dim') or hf['hidden_size'] // hf['num_attention_heads']
  c.model.d_ff = hf['intermediate_size']
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = hf.get('rms_norm_eps', 1e-6)
  c.model.position = 'rope'
  c.model.rope_theta = _rope_theta(hf)
  c.model.tie_embeddings = bool(hf.get('tie_word_embeddings', False))
  c.model.use_bias = False
  c.model.init_std = hf.get('initializer_range', 0.02)
  if variant.sliding_window and hf.get('sliding_window'):
    c.model.attention.pattern = 'sliding'
    c.model.attention.window = hf['sliding_window']
  return config_lib.finalize(c)


def _pattern_reason(variant: Variant, config) -> list[str]:
  pattern = mapping.field(config, 'model.attention.pattern', 'full')
  kinds = set(patterns_lib.parse_pattern(pattern))
  wanted = 'sliding' if variant.sliding_window else 'full'
  if kinds == {wanted}:
    return []
  needs = "'sliding' on every layer" if variant.sliding_window else "'full'"
  return [f'model.attention.pattern={pattern!r} (needs {needs})']


def unsupported(variant: Variant, config) -> list[str]:
  if reasons := mapping.differences(config, {'model.family': 'decoder'}):
    return reasons
  return mapping.differences(config, {
      'model.position': 'rope', 'model.norm': 'rmsnorm', 'model.norm_position': 'pre',
      'model.activation': 'swiglu', 'model.use_bias': False, 'model.attention_scale': 0.0,
      **mapping.PLAIN}) + _pattern_reason(variant, config)


def hf_config(variant: Variant, config) -> dict:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  out = {**mapping.hf_common(config, FAMILIES[variant.model_type]),
         'hidden_size': t.d_model, 'intermediate_size': t.d_ff,
         'num_hidden_layers': t.num_layers, 'num_attention_heads': t.num_heads,
         'num_key_value_heads': t.num_kv_heads, 'head_dim': t.head_dim, 'hidden_act': 'silu',
         'max_position_embeddings': t.max_len, 'rms_norm_eps': t.norm_eps,
         'rope_theta': t.rope_theta,
         'rope_parameters': {'rope_type': 'default', 'rope_theta': t.rope_theta},
         'tie_word_embeddings': t.tie_embeddings, 'attention_dropout': 0.0}
  if variant.sliding_window:
    out['sliding_window'] = t.attention.window
  else:
    out.update(attention_bias=False, mlp_bias=False)
  return out


def _layer(i: int, t) -> list[Tensor]:
  b, p = f'model.layers.{i}.', f'stack/layer_{i}/'
  h, g, k = t.num_heads, t.num_kv_heads, t.head_dim
  table = [
      Tensor(f'{p}attn_norm/scale', f'{b}input_layernorm.weight'),
      Tensor(f'{p}attn/query', f'{b}self_attn.q_proj.weight', linear_in_heads(h, k)),
      Tensor(f'{p}attn/key', f'{b}self_attn.k_proj.weight', linear_in_heads(g, k)),
      Tensor(f'{p}attn/value', f'{b}self_attn.v_proj.weight', linear_in_heads(g, k)),
      Tensor(f'{p}attn/out', f'{b}self_attn.o_proj.weight', linear_out_heads(h, k)),
      Tensor(f'{p}mlp_norm/scale', f'{b}post_attention_layernorm.weight'),
      Tensor(f'{p}mlp/w_gate', f'{b}mlp.gate_proj.weight', TRANSPOSE),
      Tensor(f'{p}mlp/w_in', f'{b}mlp.up_proj.weight', TRANSPOSE),
      Tensor(f'{p}mlp/w_out', f'{b}mlp.down_proj.weight', TRANSPOSE),
  ]
  if t.qkv_bias:  # Qwen2
    for name, proj, heads in (('query', 'q', h), ('key', 'k', g), ('value', 'v', g)):
      table.append(Tensor(f'{p}attn/{name}_bias', f'{b}self_attn.{proj}_proj.bias',
                          split_last(heads, k)))
  if t.qk_norm:  # Qwen3
    table += [Tensor(f'{p}attn/query_norm/scale', f'{b}self_attn.q_norm.weight'),
              Tensor(f'{p}attn/key_norm/scale', f'{b}self_attn.k_norm.weight')]
  return table


def tensors(config) -> list[Tensor]:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  table = [Tensor('embed/embedding', 'model.embed_tokens.weight')]
  for i in range(t.num_layers):
    table += _layer(i, t)
  table.append(Tensor('final_norm/scale', 'model.norm.weight'))
  if not t.tie_embeddings:
    table.append(Tensor('unembed/kernel', 'lm_head.weight', TRANSPOSE))
  return table


def ignored(config) -> tuple[str, ...]:
  names = [r'model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq']
  if config.model.tie_embeddings:
    names.append(r'lm_head\.weight')
  return tuple(names)


def _family(variant: Variant) -> mapping.Family:
  return mapping.Family(model_type=variant.model_type, architecture=variant.architecture,
                        lmforge_config=functools.partial(lmforge_config, variant),
                        hf_config=functools.partial(hf_config, variant), tensors=tensors,
                        unsupported=functools.partial(unsupported, variant), ignored=ignored)


FAMILIES = {v.model_type: _family(v) for v in (LLAMA_VARIANT, MISTRAL_VARIANT)}
