"""BERT (HF `BertForMaskedLM`, or a `BertModel` checkpoint with its MLM head) -> lmforge encoder.

Post-LayerNorm blocks with biases, exact (erf) GELU, learned absolute positions, token-type
embeddings, a LayerNorm on the summed embeddings, and the MLM head's transform
(dense, GELU, LayerNorm) before the tied decoder and its output bias. HF's Linear weights are
[out, in], so every dense weight is transposed. Older checkpoints name LayerNorm parameters
gamma/beta; both spellings are read. The pooler and next-sentence head are not used.
"""

from __future__ import annotations

import numpy as np

from research import config_lib
from research.errors import UserError

# HF `hidden_act` -> model.activation.
ACTIVATIONS = {'gelu': 'gelu_exact', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu',
               'relu': 'relu'}


def lmforge_config(hf: dict):
  """The lmforge config (family 'encoder', objective 'mlm') of an HF BERT config.json."""
  act = hf.get('hidden_act', 'gelu')
  if act not in ACTIVATIONS:
    raise UserError(f'BERT hidden_act={act!r} is not supported: lmforge converts '
                    f'{sorted(ACTIVATIONS)}')
  if hf.get('position_embedding_type', 'absolute') != 'absolute':
    raise UserError(f"BERT position_embedding_type={hf['position_embedding_type']!r} is not "
                    "supported: lmforge converts 'absolute'")
  c = config_lib.base_config()
  c.name = 'hf/bert'
  c.model.family = 'encoder'
  c.objective.name = 'mlm'
  c.data.vocab_size = hf['vocab_size']
  c.data.seq_len = hf['max_position_embeddings']
  c.model.d_model = hf['hidden_size']
  c.model.num_layers = hf['num_hidden_layers']
  c.model.num_heads = hf['num_attention_heads']
  c.model.d_ff = hf['intermediate_size']
  c.model.activation = ACTIVATIONS[act]
  c.model.norm = 'layernorm'
  c.model.norm_eps = hf.get('layer_norm_eps', 1e-12)
  c.model.norm_position = 'post'
  c.model.position = 'learned'
  c.model.max_len = hf['max_position_embeddings']
  c.model.tie_embeddings = hf.get('tie_word_embeddings', True)
  c.model.use_bias = True
  c.model.init_std = hf.get('initializer_range', 0.02)
  # BERT's extras (research.models.encoder); new keys until base_config carries them.
  c.model.type_vocab_size = hf.get('type_vocab_size', 2)
  c.model.embed_norm = True
  c.model.head_transform = True
  c.model.output_bias = True
  return config_lib.finalize(c)


def _weights_reader(w: dict[str, np.ndarray]):
  """Lookups that accept checkpoints with or without the 'bert.' prefix and gamma/beta names."""
  prefix = 'bert.' if 'bert.embeddings.word_embeddings.weight' in w else ''

  def get(name):
    for key in (name, name.replace('LayerNorm.weight', 'LayerNorm.gamma').replace(
        'LayerNorm.bias', 'LayerNorm.beta')):
      if key in w:
        return w[key]
    raise UserError(f'BERT checkpoint lacks {name}: is it a BertForMaskedLM checkpoint?')

  body = lambda name: get(prefix + name)
  return body, get


def _layer(body, i: int, d: int, h: int) -> dict:
  k = d // h
  b = f'encoder.layer.{i}.'
  ln = lambda name: {'scale': body(f'{name}.weight'), 'bias': body(f'{name}.bias')}
  proj = lambda name: body(f'{b}attention.self.{name}.weight').T.reshape(d, h, k)
  proj_bias = lambda name: body(f'{b}attention.self.{name}.bias').reshape(h, k)
  return {
      'attn': {'query': proj('query'), 'query_bias': proj_bias('query'),
               'key': proj('key'), 'key_bias': proj_bias('key'),
               'value': proj('value'), 'value_bias': proj_bias('value'),
               'out': body(f'{b}attention.output.dense.weight').T.reshape(h, k, d),
               'out_bias': body(f'{b}attention.output.dense.bias')},
      'attn_norm': ln(f'{b}attention.output.LayerNorm'),
      'mlp': {'w_in': body(f'{b}intermediate.dense.weight').T,
              'b_in': body(f'{b}intermediate.dense.bias'),
              'w_out': body(f'{b}output.dense.weight').T,
              'b_out': body(f'{b}output.dense.bias')},
      'mlp_norm': ln(f'{b}output.LayerNorm'),
  }


def _head(get, config) -> dict:
  """The MLM head: transform, output bias, and (untied models only) the decoder matrix."""
  ln = lambda name: {'scale': get(f'{name}.weight'), 'bias': get(f'{name}.bias')}
  t = 'cls.predictions.transform.'
  params = {'head_transform': {'kernel': get(t + 'dense.weight').T, 'bias': get(t + 'dense.bias'),
                               'norm': ln(t + 'LayerNorm')},
            'output_bias': get('cls.predictions.bias')}
  if not config.model.tie_embeddings:
    params['unembed'] = {'kernel': get('cls.predictions.decoder.weight').T}
  return params


def convert(hf: dict, w: dict[str, np.ndarray]):
  """(config, params) for `research.models.build_model(config)` from HF's config and weights."""
  config = lmforge_config(hf)
  d, h = config.model.d_model, config.model.num_heads
  body, get = _weights_reader(w)
  ln = lambda name: {'scale': body(f'{name}.weight'), 'bias': body(f'{name}.bias')}
  params = {
      'embed': {'embedding': body('embeddings.word_embeddings.weight')},
      'positions': {'embedding': body('embeddings.position_embeddings.weight')},
      'token_types': {'embedding': body('embeddings.token_type_embeddings.weight')},
      'embed_norm': ln('embeddings.LayerNorm'),
      'stack': {f'layer_{i}': _layer(body, i, d, h) for i in range(config.model.num_layers)},
      **_head(get, config),
  }
  return config, params
