"""GPT-2 (HF `GPT2LMHeadModel`) <-> lmforge decoder: learned positions, pre-LayerNorm with biases,
tanh GELU, tied embeddings.

HF's Conv1D weights are [in, out], so x @ W needs no transpose; c_attn fuses query, key and value
along its output axis (three `Part`s of one tensor). Checkpoints saved from `GPT2Model` lack the
'transformer.' prefix; both spellings are read. The causal-mask buffers of old checkpoints
(attn.bias, attn.masked_bias) and the tied lm_head are ignored by name.
"""

from __future__ import annotations

from research import config_lib
from research.errors import UserError
from research.models.hf import mapping
from research.models.hf.mapping import Part, Tensor, split_first, split_last
from research.models.transformer import transformer_config

_PREFIX = 'transformer.'
_ACTIVATIONS = ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast')  # the tanh approximation


def lmforge_config(hf: dict):
  act = hf.get('activation_function', 'gelu_new')
  if act not in _ACTIVATIONS:
    raise UserError(f'GPT-2 activation_function={act!r} is not supported: lmforge converts '
                    f'{list(_ACTIVATIONS)}')
  for flag, fine in (('scale_attn_by_inverse_layer_idx', False), ('scale_attn_weights', True),
                     ('add_cross_attention', False)):
    if hf.get(flag, fine) != fine:
      raise UserError(f'GPT-2 {flag}={hf[flag]!r} is not supported: lmforge converts {fine}')
  c = config_lib.base_config()
  c.name = 'hf/gpt2'
  c.model.family = 'decoder'
  c.data.vocab_size = hf['vocab_size']
  c.data.seq_len = hf['n_positions']
  c.model.d_model = hf['n_embd']
  c.model.num_layers = hf['n_layer']
  c.model.num_heads = hf['n_head']
  c.model.d_ff = hf.get('n_inner') or 4 * hf['n_embd']
  c.model.activation = 'gelu'
  c.model.norm = 'layernorm'
  c.model.norm_eps = hf.get('layer_norm_epsilon', 1e-5)
  c.model.position = 'learned'
  c.model.max_len = hf['n_positions']
  c.model.tie_embeddings = True
  c.model.use_bias = True
  c.model.init_std = hf.get('initializer_range', 0.02)
  return config_lib.finalize(c)


def unsupported(config) -> list[str]:
  if reasons := mapping.differences(config, {'model.family': 'decoder'}):
    return reasons
  reasons = mapping.differences(config, {
      'model.position': 'learned', 'model.norm': 'layernorm',
      'model.norm_position': 'pre', 'model.activation': 'gelu', 'model.use_bias': True,
      'model.tie_embeddings': True, 'model.attention.pattern': 'full',
      'model.attention_scale': 0.0, **mapping.PLAIN})
  return reasons + mapping.plain_heads_reasons(config.model)


def hf_config(config) -> dict:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  dropout = float(config.model.dropout)
  return {**mapping.hf_common(config, FAMILY),
          'n_embd': t.d_model, 'n_layer': t.num_layers, 'n_head': t.num_heads,
          'n_inner': t.d_ff, 'n_positions': t.max_len, 'activation_function': 'gelu_new',
          'layer_norm_epsilon': t.norm_eps, 'resid_pdrop': dropout, 'embd_pdrop': dropout,
          'attn_pdrop': dropout, 'scale_attn_weights': True, 'tie_word_embeddings': True}


def _layer(i: int, h: int, k: int) -> list[Tensor]:
  b, p = f'{_PREFIX}h.{i}.', f'stack/layer_{i}/'
  attn = []
  for index, name in enumerate(('query', 'key', 'value')):  # c_attn: [D, 3 x H*K]
    attn += [Tensor(f'{p}attn/{name}', f'{b}attn.c_attn.weight', split_last(h, k),
                    Part(axis=1, index=index, count=3)),
             Tensor(f'{p}attn/{name}_bias', f'{b}attn.c_attn.bias', split_last(h, k),
                    Part(axis=0, index=index, count=3))]
  return attn + [
      Tensor(f'{p}attn/out', f'{b}attn.c_proj.weight', split_first(h, k)),
      Tensor(f'{p}attn/out_bias', f'{b}attn.c_proj.bias'),
      Tensor(f'{p}attn_norm/scale', f'{b}ln_1.weight'),
      Tensor(f'{p}attn_norm/bias', f'{b}ln_1.bias'),
      Tensor(f'{p}mlp_norm/scale', f'{b}ln_2.weight'),
      Tensor(f'{p}mlp_norm/bias', f'{b}ln_2.bias'),
      Tensor(f'{p}mlp/w_in', f'{b}mlp.c_fc.weight'),
      Tensor(f'{p}mlp/b_in', f'{b}mlp.c_fc.bias'),
      Tensor(f'{p}mlp/w_out', f'{b}mlp.c_proj.weight'),
      Tensor(f'{p}mlp/b_out', f'{b}mlp.c_proj.bias'),
  ]


def tensors(config) -> list[Tensor]:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  table = [Tensor('embed/embedding', f'{_PREFIX}wte.weight'),
           Tensor('positions/embedding', f'{_PREFIX}wpe.weight'),
           Tensor('final_norm/scale', f'{_PREFIX}ln_f.weight'),
           Tensor('final_norm/bias', f'{_PREFIX}ln_f.bias')]
  for i in range(t.num_layers):
    table += _layer(i, t.num_heads, t.head_dim)
  return table


def ignored(config) -> tuple[str, ...]:
  del config
  return (r'transformer\.h\.\d+\.attn\.(bias|masked_bias)', r'lm_head\.weight')


def canonical_name(name: str) -> str:
  return name if name.startswith((_PREFIX, 'lm_head.')) else _PREFIX + name


FAMILY = mapping.Family(model_type='gpt2', architecture='GPT2LMHeadModel',
                        lmforge_config=lmforge_config, hf_config=hf_config, tensors=tensors,
                        unsupported=unsupported, ignored=ignored, canonical_name=canonical_name)
