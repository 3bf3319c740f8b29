"""BERT (HF `BertForMaskedLM`, or a `BertForPreTraining` / `BertModel` checkpoint with its MLM head)
<-> lmforge encoder.

Post-LayerNorm blocks with biases, exact (erf) GELU, learned absolute positions, token-type
embeddings, a LayerNorm on the summed embeddings, and the MLM head's transform (dense, GELU,
LayerNorm) before the tied decoder and its output bias. HF's Linear weights are [out, in], so
every dense weight is transposed. Older checkpoints name LayerNorm parameters gamma/beta, or lack
the 'bert.' prefix; both spellings are read. Ignored by name: the pooler and next-sentence head
(lmforge has no use for them), the position_ids buffer, and the decoder's tied copies.
"""

from __future__ import annotations

from research import config_lib
from research.errors import UserError
from research.models.hf import mapping
from research.models.hf.mapping import TRANSPOSE, Tensor, linear_in_heads, linear_out_heads
from research.models.hf.mapping import split_last
from research.models.transformer import transformer_config

# HF `hidden_act` -> model.activation, and back.
ACTIVATIONS = {'gelu': 'gelu_exact', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu',
               'relu': 'relu'}
_HF_ACTIVATIONS = {'gelu_exact': 'gelu', 'gelu': 'gelu_new', 'relu': 'relu'}
_BODY = ('embeddings.', 'encoder.', 'pooler.')


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
  c.model.type_vocab_size = hf.get('type_vocab_size', 2)
  c.model.embed_norm = True
  c.model.head_transform = True
  c.model.output_bias = True
  return config_lib.finalize(c)


def unsupported(config) -> list[str]:
  if reasons := mapping.differences(config, {'model.family': 'encoder'}):
    return reasons
  reasons = mapping.differences(config, {
      'model.position': 'learned', 'model.norm': 'layernorm', 'model.norm_position': 'post',
      'model.activation': tuple(_HF_ACTIVATIONS), 'model.use_bias': True,
      'model.embed_norm': True, 'model.head_transform': True, 'model.output_bias': True,
      'model.attention.pattern': 'full', 'model.attention_scale': 0.0, **mapping.PLAIN})
  m = config.model
  if m.type_vocab_size < 1:
    reasons.append(f'model.type_vocab_size={m.type_vocab_size} (needs >= 1)')
  return reasons + mapping.plain_heads_reasons(m)


def hf_config(config) -> dict:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  dropout = float(config.model.dropout)
  return {**mapping.hf_common(config, FAMILY),
          'hidden_size': t.d_model, 'num_hidden_layers': t.num_layers,
          'num_attention_heads': t.num_heads, 'intermediate_size': t.d_ff,
          'hidden_act': _HF_ACTIVATIONS[t.activation], 'max_position_embeddings': t.max_len,
          'type_vocab_size': t.type_vocab_size, 'layer_norm_eps': t.norm_eps,
          'position_embedding_type': 'absolute', 'hidden_dropout_prob': dropout,
          'attention_probs_dropout_prob': dropout, 'tie_word_embeddings': t.tie_embeddings}


def _norm(path: str, hf: str) -> list[Tensor]:
  return [Tensor(f'{path}/scale', f'{hf}.weight'), Tensor(f'{path}/bias', f'{hf}.bias')]


def _layer(i: int, h: int, k: int) -> list[Tensor]:
  b, p = f'bert.encoder.layer.{i}.', f'stack/layer_{i}/'
  table = []
  for name in ('query', 'key', 'value'):
    table += [Tensor(f'{p}attn/{name}', f'{b}attention.self.{name}.weight',
                     linear_in_heads(h, k)),
              Tensor(f'{p}attn/{name}_bias', f'{b}attention.self.{name}.bias', split_last(h, k))]
  return table + [
      Tensor(f'{p}attn/out', f'{b}attention.output.dense.weight', linear_out_heads(h, k)),
      Tensor(f'{p}attn/out_bias', f'{b}attention.output.dense.bias'),
      *_norm(f'{p}attn_norm', f'{b}attention.output.LayerNorm'),
      Tensor(f'{p}mlp/w_in', f'{b}intermediate.dense.weight', TRANSPOSE),
      Tensor(f'{p}mlp/b_in', f'{b}intermediate.dense.bias'),
      Tensor(f'{p}mlp/w_out', f'{b}output.dense.weight', TRANSPOSE),
      Tensor(f'{p}mlp/b_out', f'{b}output.dense.bias'),
      *_norm(f'{p}mlp_norm', f'{b}output.LayerNorm'),
  ]


def tensors(config) -> list[Tensor]:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  e, head = 'bert.embeddings.', 'cls.predictions.'
  table = [Tensor('embed/embedding', f'{e}word_embeddings.weight'),
           Tensor('positions/embedding', f'{e}position_embeddings.weight'),
           Tensor('token_types/embedding', f'{e}token_type_embeddings.weight'),
           *_norm('embed_norm', f'{e}LayerNorm')]
  for i in range(t.num_layers):
    table += _layer(i, t.num_heads, t.head_dim)
  table += [Tensor('head_transform/kernel', f'{head}transform.dense.weight', TRANSPOSE),
            Tensor('head_transform/bias', f'{head}transform.dense.bias'),
            *_norm('head_transform/norm', f'{head}transform.LayerNorm'),
            Tensor('output_bias', f'{head}bias')]
  if not t.tie_embeddings:
    table.append(Tensor('unembed/kernel', f'{head}decoder.weight', TRANSPOSE))
  return table


def ignored(config) -> tuple[str, ...]:
  names = [r'bert\.embeddings\.position_ids', r'bert\.pooler\.dense\.(weight|bias)',
           r'cls\.seq_relationship\.(weight|bias)', r'cls\.predictions\.decoder\.bias']
  if config.model.tie_embeddings:
    names.append(r'cls\.predictions\.decoder\.weight')
  return tuple(names)


def canonical_name(name: str) -> str:
  if name.startswith(_BODY):
    name = 'bert.' + name
  return name.replace('LayerNorm.gamma', 'LayerNorm.weight').replace('LayerNorm.beta',
                                                                     'LayerNorm.bias')


FAMILY = mapping.Family(model_type='bert', architecture='BertForMaskedLM',
                        lmforge_config=lmforge_config, hf_config=hf_config, tensors=tensors,
                        unsupported=unsupported, ignored=ignored, canonical_name=canonical_name)
