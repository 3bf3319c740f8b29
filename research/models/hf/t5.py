"""T5 / T5 v1.1 (HF `T5ForConditionalGeneration`) -> lmforge encoder-decoder.

T5 1.0: ReLU feed-forward, tied embeddings with the decoder output scaled by d_model**-0.5.
T5 v1.1: gated-GELU (tanh) feed-forward (`wi_0` is the gate, `wi_1` the value), an untied
`lm_head`, no output scaling. Both: RMSNorm pre-norm (T5LayerNorm), unscaled attention without
biases, a relative position bias in each stack's first layer shared by all its layers (the
decoder's causal, the encoder's bidirectional), cross-attention without position bias.

HF's Linear weights are [out, in], so every dense weight is transposed. Transformers 5 records
the output scaling as `scale_decoder_outputs` (and always writes tie_word_embeddings=true);
older config.json files mean the same by `tie_word_embeddings`. A model that is not scaled is
converted untied, with `lm_head.weight` (or the shared table, if the checkpoint has none) as the
unembedding.
"""

from __future__ import annotations

import numpy as np

from research import config_lib
from research.errors import UserError

# HF `feed_forward_proj` -> model.activation. HF's 'gated-gelu' uses gelu_new (tanh), its plain
# 'gelu' the exact erf form.
ACTIVATIONS = {'relu': 'relu', 'gated-gelu': 'geglu', 'gelu': 'gelu_exact',
               'gated-silu': 'swiglu'}
# Duplicates of `shared.weight`, and a bias some old checkpoints carry but T5 never uses.
_IGNORED = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
            'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight')


def scales_decoder_output(hf: dict) -> bool:
  """Whether the decoder output is scaled by d_model**-0.5 before the unembedding (T5 1.0)."""
  return bool(hf.get('scale_decoder_outputs', hf.get('tie_word_embeddings', True)))


def lmforge_config(hf: dict):
  """The lmforge config (family 'encoder_decoder', objective 'span_corruption') of a T5 config."""
  proj = hf.get('feed_forward_proj', 'relu')
  if proj not in ACTIVATIONS:
    raise UserError(f'T5 feed_forward_proj={proj!r} is not supported: lmforge converts '
                    f'{sorted(ACTIVATIONS)}')
  c = config_lib.base_config()
  c.name = 'hf/t5'
  c.model.family = 'encoder_decoder'
  c.objective.name = 'span_corruption'
  c.data.vocab_size = hf['vocab_size']
  c.data.seq_len = 512  # T5's pre-training input length
  c.model.vocab_size = hf['vocab_size']
  c.model.d_model = hf['d_model']
  c.model.num_heads = hf['num_heads']
  c.model.head_dim = hf['d_kv']
  c.model.d_ff = hf['d_ff']
  c.model.activation = ACTIVATIONS[proj]
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = hf.get('layer_norm_epsilon', 1e-6)
  c.model.norm_position = 'pre'
  c.model.position = 'relative'
  c.model.relative_buckets = hf.get('relative_attention_num_buckets', 32)
  c.model.relative_max_distance = hf.get('relative_attention_max_distance', 128)
  c.model.attention_scale = 1.0
  c.model.use_bias = False
  c.model.tie_embeddings = scales_decoder_output(hf)
  c.model.dropout = 0.0  # inference; set model.dropout for fine-tuning (T5: dropout_rate)
  c.model.dtype = 'float32'
  encoder_layers = hf['num_layers']
  decoder_layers = hf.get('num_decoder_layers') or encoder_layers
  c.model.num_layers = encoder_layers
  c.model.encoder_layers = encoder_layers
  c.model.decoder_layers = decoder_layers
  return config_lib.finalize(c)


class _Weights:
  """Lookups that record which checkpoint entries were used, to catch unmapped ones."""

  def __init__(self, w: dict[str, np.ndarray]):
    self.w, self.used = w, set()

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.w:
      raise UserError(f'T5 checkpoint lacks {name}: is it a T5ForConditionalGeneration '
                      'checkpoint with this config.json?')
    self.used.add(name)
    return np.asarray(self.w[name], np.float32)

  def check_all_used(self):
    unused = sorted(set(self.w) - self.used - set(_IGNORED))
    if unused:
      raise UserError(f'T5 checkpoint has {len(unused)} weights lmforge does not map, e.g. '
                      f'{unused[:3]}: is config.json the one saved with these weights?')


def _attention(get, prefix: str, h: int, k: int) -> dict:
  proj = lambda name: get(f'{prefix}.{name}.weight').T.reshape(-1, h, k)  # [D, H, K]
  return {'query': proj('q'), 'key': proj('k'), 'value': proj('v'),
          'out': get(f'{prefix}.o.weight').T.reshape(h, k, -1)}


def _mlp(get, prefix: str, gated: bool) -> dict:
  if gated:
    return {'w_gate': get(f'{prefix}.wi_0.weight').T, 'w_in': get(f'{prefix}.wi_1.weight').T,
            'w_out': get(f'{prefix}.wo.weight').T}
  return {'w_in': get(f'{prefix}.wi.weight').T, 'w_out': get(f'{prefix}.wo.weight').T}


def _block(get, stack: str, i: int, h: int, k: int, gated: bool) -> dict:
  """One T5 block: layer.0 self-attention, (decoder) layer.1 cross-attention, last the MLP."""
  b = f'{stack}.block.{i}.layer'
  norm = lambda j: {'scale': get(f'{b}.{j}.layer_norm.weight')}
  params = {'attn_norm': norm(0), 'attn': _attention(get, f'{b}.0.SelfAttention', h, k)}
  mlp_index = 1
  if stack == 'decoder':
    params['cross_norm'] = norm(1)
    params['cross'] = _attention(get, f'{b}.1.EncDecAttention', h, k)
    mlp_index = 2
  params['mlp_norm'] = norm(mlp_index)
  params['mlp'] = _mlp(get, f'{b}.{mlp_index}.DenseReluDense', gated)
  return params


def convert(hf, w: dict[str, np.ndarray] | None = None):
  """(config, params) for `research.models.build_model(config)`.

  Args:
    hf: HF's config.json as a dict, or the path of a local HF T5 directory (config.json and
      model.safetensors or pytorch_model.bin), read with `research.models.hf.read_hf_dir`.
    w: the checkpoint's weights by HF name (with a dict `hf`).
  """
  if isinstance(hf, str):
    from research.models.hf import read_hf_dir  # pylint: disable=g-import-not-at-top
    hf, w = read_hf_dir(hf)
  config = lmforge_config(hf)
  m = config.model
  h, k = m.num_heads, m.head_dim
  gated = m.activation in ('geglu', 'swiglu')
  get = _Weights(w)
  bias = lambda stack: {'embedding': get(
      f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight')}
  params = {
      'embed': {'embedding': get('shared.weight')},
      'encoder': {f'layer_{i}': _block(get, 'encoder', i, h, k, gated)
                  for i in range(m.encoder_layers)},
      'decoder': {f'layer_{i}': _block(get, 'decoder', i, h, k, gated)
                  for i in range(m.decoder_layers)},
      'encoder_norm': {'scale': get('encoder.final_layer_norm.weight')},
      'decoder_norm': {'scale': get('decoder.final_layer_norm.weight')},
      'encoder_relative_bias': bias('encoder'),
      'decoder_relative_bias': bias('decoder'),
  }
  has_head = 'lm_head.weight' in w
  if m.tie_embeddings:
    if has_head and not np.array_equal(w['lm_head.weight'], w['shared.weight']):
      raise UserError('T5 checkpoint scales the decoder output (T5 1.0) but has an lm_head '
                      'different from the shared embedding: lmforge ties the two')
    get.used.add('lm_head.weight')
  else:
    head = get('lm_head.weight') if has_head else get('shared.weight')
    params['unembed'] = {'kernel': head.T}
  get.check_all_used()
  return config, params
