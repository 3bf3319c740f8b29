"""Llama-shaped decoders (HF `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`,
`Qwen3ForCausalLM`) <-> lmforge decoder.

RoPE, RMSNorm (pre-norm, `rms_norm_eps`), SwiGLU (w_gate = gate_proj, w_in = up_proj,
w_out = down_proj), grouped-query attention, no biases, tied or untied embeddings (lm_head), and
`head_dim` from the config when given. HF's Linear weights are [out, in], so every matrix is
transposed. HF's Llama checkpoints already use the rotate_half (GPT-NeoX) RoPE layout that
lmforge's apply_rope uses, pairing dimension i with i + K/2, so queries and keys need no
permutation. Mistral's `sliding_window` W is lmforge's attention pattern 'sliding' with window W
on every layer: both let a query see itself and the W - 1 keys before it (HF masks
kv_idx > q_idx - W). RoPE scaling ('linear', 'llama3') is model.rope_scaling (rope.py reads
both rope_scaling and transformers 5's rope_parameters). Ignored by name: rotary inv_freq
buffers and a tied lm_head.

Each model type is a `Variant`: the flags that set it apart. Qwen2 has biases on q/k/v_proj (not
o_proj): model.qkv_bias; its per-layer sliding windows (use_sliding_window) are refused. Qwen3
has no biases and RMSNorms q_norm/k_norm over each head's queries and keys before RoPE:
model.qk_norm.
"""

from __future__ import annotations

import dataclasses
import functools

from research import config_lib
from research.errors import UserError
from research.layers import patterns as patterns_lib
from research.models.hf import mapping, rope
from research.models.hf.mapping import TRANSPOSE, Tensor, linear_in_heads, linear_out_heads
from research.models.hf.mapping import split_last
from research.models.transformer import transformer_config

# An imported model's training length when its context is longer (model.max_len keeps the
# context; set data.seq_len to train on more).
MAX_SEQ_LEN = 2048
# model.rope_scaling.kind values every family here writes (rope.py).
ROPE_SCALINGS = tuple(rope.KINDS.values())


@dataclasses.dataclass(frozen=True)
class Variant:
  """What sets a Llama-shaped model type apart."""
  model_type: str
  architecture: str
  sliding_window: bool = False  # one window for every layer (Mistral), else full attention
  qkv_bias: bool = False  # q/k/v_proj biases, always (Qwen2)
  qk_norm: bool = False  # q_norm, k_norm (Qwen3)
  windowed_layers: bool = False  # use_sliding_window and max_window_layers (Qwen): refused


LLAMA_VARIANT = Variant('llama', 'LlamaForCausalLM')
MISTRAL_VARIANT = Variant('mistral', 'MistralForCausalLM', sliding_window=True)
QWEN2_VARIANT = Variant('qwen2', 'Qwen2ForCausalLM', qkv_bias=True, windowed_layers=True)
QWEN3_VARIANT = Variant('qwen3', 'Qwen3ForCausalLM', qk_norm=True, windowed_layers=True)


def _check(variant: Variant, hf: dict) -> None:
  name = variant.model_type
  if hf.get('hidden_act', 'silu') != 'silu':
    raise UserError(f"{name} hidden_act={hf['hidden_act']!r} is not supported: lmforge converts "
                    "'silu' (SwiGLU)")
  # Qwen2 reads no attention_bias: its q/k/v biases are always there.
  flags = ('mlp_bias',) if variant.qkv_bias else ('attention_bias', 'mlp_bias')
  for flag in flags:
    if hf.get(flag):
      raise UserError(f'{name} {flag}=true is not supported: lmforge converts {name} models '
                      'without these biases')
  if variant.windowed_layers and hf.get('use_sliding_window'):
    raise UserError(f'{name} use_sliding_window=true is not supported: lmforge converts {name} '
                    'with full attention on every layer (use_sliding_window=false)')


def lmforge_config(variant: Variant, hf: dict):
  """The lmforge decoder config of a Llama, Mistral, Qwen2 or Qwen3 config.json."""
  _check(variant, hf)
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
  rope.set_rope(c.model, rope.parameters(hf), hf, f'{variant.model_type} rope_parameters')
  c.model.tie_embeddings = bool(hf.get('tie_word_embeddings', False))
  c.model.use_bias = False
  c.model.qkv_bias = variant.qkv_bias
  c.model.qk_norm = variant.qk_norm
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
      **mapping.PLAIN, 'model.qkv_bias': variant.qkv_bias, 'model.qk_norm': variant.qk_norm,
      'model.rope_scaling.kind': ROPE_SCALINGS}) + _pattern_reason(variant, config)


def hf_config(variant: Variant, config) -> dict:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  out = {**mapping.hf_common(config, FAMILIES[variant.model_type]),
         'hidden_size': t.d_model, 'intermediate_size': t.d_ff,
         'num_hidden_layers': t.num_layers, 'num_attention_heads': t.num_heads,
         'num_key_value_heads': t.num_kv_heads, 'head_dim': t.head_dim, 'hidden_act': 'silu',
         'max_position_embeddings': t.max_len, 'rms_norm_eps': t.norm_eps,
         **rope.hf_fields(t.rope), 'tie_word_embeddings': t.tie_embeddings,
         'attention_dropout': 0.0}
  if variant.sliding_window:
    out['sliding_window'] = t.attention.window
  elif not variant.qkv_bias:  # Qwen2 has no flag: its q/k/v biases are always there
    out.update(attention_bias=False, mlp_bias=False)
  if variant.windowed_layers:
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=t.num_layers)
  return out


def attention_tensors(i: int, t) -> list[Tensor]:
  """Layer i's q/k/v/o_proj (HF `model.layers.{i}.self_attn.*`), with q/k/v biases when
  t.qkv_bias and q_norm/k_norm when t.qk_norm: the same in every family that has them."""
  b, p = f'model.layers.{i}.self_attn.', f'stack/layer_{i}/attn/'
  h, g, k = t.num_heads, t.num_kv_heads, t.head_dim
  table = [
      Tensor(f'{p}query', f'{b}q_proj.weight', linear_in_heads(h, k)),
      Tensor(f'{p}key', f'{b}k_proj.weight', linear_in_heads(g, k)),
      Tensor(f'{p}value', f'{b}v_proj.weight', linear_in_heads(g, k)),
      Tensor(f'{p}out', f'{b}o_proj.weight', linear_out_heads(h, k)),
  ]
  if t.qkv_bias:  # Qwen2
    for name, proj, heads in (('query', 'q', h), ('key', 'k', g), ('value', 'v', g)):
      table.append(Tensor(f'{p}{name}_bias', f'{b}{proj}_proj.bias', split_last(heads, k)))
  if t.qk_norm:  # Qwen3, Gemma 3
    table += [Tensor(f'{p}query_norm/scale', f'{b}q_norm.weight'),
              Tensor(f'{p}key_norm/scale', f'{b}k_norm.weight')]
  return table


def mlp_tensors(i: int) -> list[Tensor]:
  """Layer i's gated feed-forward: act(gate_proj x) * up_proj x, then down_proj."""
  b, p = f'model.layers.{i}.mlp.', f'stack/layer_{i}/mlp/'
  return [Tensor(f'{p}w_gate', f'{b}gate_proj.weight', TRANSPOSE),
          Tensor(f'{p}w_in', f'{b}up_proj.weight', TRANSPOSE),
          Tensor(f'{p}w_out', f'{b}down_proj.weight', TRANSPOSE)]


def _layer(i: int, t) -> list[Tensor]:
  b, p = f'model.layers.{i}.', f'stack/layer_{i}/'
  return [Tensor(f'{p}attn_norm/scale', f'{b}input_layernorm.weight'),
          *attention_tensors(i, t),
          Tensor(f'{p}mlp_norm/scale', f'{b}post_attention_layernorm.weight'),
          *mlp_tensors(i)]


def decoder_tensors(config, layer_tensors) -> list[Tensor]:
  """The frame every Llama-shaped table shares (Gemma's and the MoE families' too): the token
  embedding, `layer_tensors(i, t)` for each layer, the final norm and an untied head."""
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  table = [Tensor('embed/embedding', 'model.embed_tokens.weight')]
  for i in range(t.num_layers):
    table += layer_tensors(i, t)
  table.append(Tensor('final_norm/scale', 'model.norm.weight'))
  if not t.tie_embeddings:
    table.append(Tensor('unembed/kernel', 'lm_head.weight', TRANSPOSE))
  return table


def tensors(config) -> list[Tensor]:
  return decoder_tensors(config, _layer)


def ignored(config) -> tuple[str, ...]:
  names = [r'model\.(layers\.\d+\.self_attn\.)?rotary_emb\.\w*inv_freq']
  if config.model.tie_embeddings:
    names.append(r'lm_head\.weight')
  return tuple(names)


def _family(variant: Variant) -> mapping.Family:
  return mapping.Family(model_type=variant.model_type, architecture=variant.architecture,
                        lmforge_config=functools.partial(lmforge_config, variant),
                        hf_config=functools.partial(hf_config, variant), tensors=tensors,
                        unsupported=functools.partial(unsupported, variant), ignored=ignored)


FAMILIES = {v.model_type: _family(v)
            for v in (LLAMA_VARIANT, MISTRAL_VARIANT, QWEN2_VARIANT, QWEN3_VARIANT)}
