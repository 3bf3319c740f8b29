"""GPT-2 (HF `GPT2LMHeadModel`) -> lmforge decoder: learned positions, pre-LayerNorm with biases,
tanh GELU, tied embeddings. HF's Conv1D weights are [in, out], so x @ W needs no transpose."""

from __future__ import annotations

import numpy as np

from research import config_lib


def lmforge_config(hf: dict):
  c = config_lib.base_config()
  c.name = 'hf/gpt2'
  c.model.family = 'decoder'
  c.data.vocab_size = hf['vocab_size']
  c.data.seq_len = hf['n_positions']
  c.model.d_model = hf['n_embd']
  c.model.num_layers = hf['n_layer']
  c.model.num_heads = hf['n_head']
  c.model.d_ff = hf.get('n_inner') or 4 * hf['n_embd']
  c.model.activation = 'gelu'  # gelu_new: the tanh approximation
  c.model.norm = 'layernorm'
  c.model.norm_eps = hf.get('layer_norm_epsilon', 1e-5)
  c.model.position = 'learned'
  c.model.max_len = hf['n_positions']
  c.model.tie_embeddings = True
  c.model.use_bias = True
  return config_lib.finalize(c)


def convert(hf: dict, w: dict[str, np.ndarray]):
  config = lmforge_config(hf)
  d, h = config.model.d_model, config.model.num_heads
  k = d // h
  p = 'transformer.' if 'transformer.wte.weight' in w else ''
  ln = lambda name: {'scale': w[f'{name}.weight'], 'bias': w[f'{name}.bias']}
  params = {'embed': {'embedding': w[f'{p}wte.weight']},
            'positions': {'embedding': w[f'{p}wpe.weight']},
            'final_norm': ln(f'{p}ln_f'), 'stack': {}}
  for i in range(config.model.num_layers):
    b = f'{p}h.{i}.'
    q, kk, v = np.split(w[b + 'attn.c_attn.weight'], 3, axis=1)  # [D, 3D] -> 3 x [D, D]
    qb, kb, vb = np.split(w[b + 'attn.c_attn.bias'], 3)
    params['stack'][f'layer_{i}'] = {
        'attn_norm': ln(b + 'ln_1'),
        'attn': {'query': q.reshape(d, h, k), 'query_bias': qb.reshape(h, k),
                 'key': kk.reshape(d, h, k), 'key_bias': kb.reshape(h, k),
                 'value': v.reshape(d, h, k), 'value_bias': vb.reshape(h, k),
                 'out': w[b + 'attn.c_proj.weight'].reshape(h, k, d),
                 'out_bias': w[b + 'attn.c_proj.bias']},
        'mlp_norm': ln(b + 'ln_2'),
        'mlp': {'w_in': w[b + 'mlp.c_fc.weight'], 'b_in': w[b + 'mlp.c_fc.bias'],
                'w_out': w[b + 'mlp.c_proj.weight'], 'b_out': w[b + 'mlp.c_proj.bias']},
    }
  return config, params
