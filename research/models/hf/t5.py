"""T5 / T5 v1.1 (HF `T5ForConditionalGeneration`) <-> lmforge encoder-decoder.

T5 1.0: ReLU feed-forward, tied embeddings with the decoder output scaled by d_model**-0.5.
T5 v1.1: gated-GELU (tanh) feed-forward (`wi_0` is the gate, `wi_1` the value), an untied
`lm_head`, no output scaling. Both: RMSNorm pre-norm (T5LayerNorm), unscaled attention without
biases, a relative position bias in each stack's first layer shared by all its layers (the
decoder's causal, the encoder's bidirectional), cross-attention without position bias.

HF's Linear weights are [out, in], so every dense weight is transposed. Transformers 5 records
the output scaling as `scale_decoder_outputs` (and writes tie_word_embeddings=true even for v1.1);
older config.json files mean the same by `tie_word_embeddings`. A model that is not scaled is
converted untied, with `lm_head.weight` (or the shared table, if the checkpoint has none) as the
unembedding. Ignored by name: the stacks' copies of the shared table, the tied lm_head, and a
cross-attention position bias some old checkpoints carry but T5 never uses.
"""

from __future__ import annotations

from research import config_lib
from research.errors import UserError
from research.models.hf import mapping
from research.models.hf.mapping import TRANSPOSE, Tensor, linear_in_heads, linear_out_heads
from research.models.transformer import transformer_config

# HF `feed_forward_proj` -> model.activation, and back. HF's 'gated-gelu' uses gelu_new (tanh),
# its plain 'gelu' the exact erf form.
ACTIVATIONS = {'relu': 'relu', 'gated-gelu': 'geglu', 'gelu': 'gelu_exact',
               'gated-silu': 'swiglu'}
_HF_ACTIVATIONS = {v: k for k, v in ACTIVATIONS.items()}
_GATED = ('geglu', 'swiglu')


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


def unsupported(config) -> list[str]:
  if reasons := mapping.differences(config, {'model.family': 'encoder_decoder'}):
    return reasons
  reasons = mapping.differences(config, {
      'model.position': 'relative', 'model.norm': 'rmsnorm', 'model.norm_position': 'pre',
      'model.activation': tuple(_HF_ACTIVATIONS), 'model.use_bias': False,
      'model.attention_scale': 1.0, 'model.attention.pattern': 'full', **mapping.PLAIN})
  m = config.model
  if m.num_kv_heads not in (0, m.num_heads):
    reasons.append(f'model.num_kv_heads={m.num_kv_heads} (needs {m.num_heads}: no GQA)')
  return reasons


def _depths(t) -> tuple[int, int]:
  return t.encoder_layers or t.num_layers, t.decoder_layers or t.num_layers


def hf_config(config) -> dict:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  encoder_layers, decoder_layers = _depths(t)
  return {**mapping.hf_common(config, FAMILY),
          'd_model': t.d_model, 'd_kv': t.head_dim, 'd_ff': t.d_ff, 'num_heads': t.num_heads,
          'num_layers': encoder_layers, 'num_decoder_layers': decoder_layers,
          'feed_forward_proj': _HF_ACTIVATIONS[t.activation],
          'relative_attention_num_buckets': t.relative_buckets,
          'relative_attention_max_distance': t.relative_max_distance,
          'layer_norm_epsilon': t.norm_eps, 'dropout_rate': float(config.model.dropout),
          'tie_word_embeddings': t.tie_embeddings, 'scale_decoder_outputs': t.tie_embeddings,
          'is_encoder_decoder': True,
          # lmforge's decoder starts from token 0 (T5's pad), as HF's generate does.
          'pad_token_id': 0, 'decoder_start_token_id': 0}


def _attention(path: str, hf: str, h: int, k: int) -> list[Tensor]:
  return [Tensor(f'{path}/query', f'{hf}.q.weight', linear_in_heads(h, k)),
          Tensor(f'{path}/key', f'{hf}.k.weight', linear_in_heads(h, k)),
          Tensor(f'{path}/value', f'{hf}.v.weight', linear_in_heads(h, k)),
          Tensor(f'{path}/out', f'{hf}.o.weight', linear_out_heads(h, k))]


def _mlp(path: str, hf: str, gated: bool) -> list[Tensor]:
  if gated:
    return [Tensor(f'{path}/w_gate', f'{hf}.wi_0.weight', TRANSPOSE),
            Tensor(f'{path}/w_in', f'{hf}.wi_1.weight', TRANSPOSE),
            Tensor(f'{path}/w_out', f'{hf}.wo.weight', TRANSPOSE)]
  return [Tensor(f'{path}/w_in', f'{hf}.wi.weight', TRANSPOSE),
          Tensor(f'{path}/w_out', f'{hf}.wo.weight', TRANSPOSE)]


def _block(stack: str, i: int, h: int, k: int, gated: bool) -> list[Tensor]:
  """One T5 block: layer.0 self-attention, (decoder) layer.1 cross-attention, last the MLP."""
  b, p = f'{stack}.block.{i}.layer', f'{stack}/layer_{i}'
  table = [Tensor(f'{p}/attn_norm/scale', f'{b}.0.layer_norm.weight'),
           *_attention(f'{p}/attn', f'{b}.0.SelfAttention', h, k)]
  mlp_index = 1
  if stack == 'decoder':
    table += [Tensor(f'{p}/cross_norm/scale', f'{b}.1.layer_norm.weight'),
              *_attention(f'{p}/cross', f'{b}.1.EncDecAttention', h, k)]
    mlp_index = 2
  return table + [Tensor(f'{p}/mlp_norm/scale', f'{b}.{mlp_index}.layer_norm.weight'),
                  *_mlp(f'{p}/mlp', f'{b}.{mlp_index}.DenseReluDense', gated)]


def tensors(config) -> list[Tensor]:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  h, k, gated = t.num_heads, t.head_dim, t.activation in _GATED
  table = [Tensor('embed/embedding', 'shared.weight')]
  for stack, depth in zip(('encoder', 'decoder'), _depths(t)):
    for i in range(depth):
      table += _block(stack, i, h, k, gated)
    table += [Tensor(f'{stack}_norm/scale', f'{stack}.final_layer_norm.weight'),
              Tensor(f'{stack}_relative_bias/embedding',
                     f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight')]
  if not t.tie_embeddings:
    table.append(Tensor('unembed/kernel', 'lm_head.weight', TRANSPOSE,
                        fallback=('shared.weight',)))
  return table


def ignored(config) -> tuple[str, ...]:
  names = [r'(encoder|decoder)\.embed_tokens\.weight',
           r'decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight']
  if config.model.tie_embeddings:
    names.append(r'lm_head\.weight')
  return tuple(names)


FAMILY = mapping.Family(model_type='t5', architecture='T5ForConditionalGeneration',
                        lmforge_config=lmforge_config, hf_config=hf_config, tensors=tensors,
                        unsupported=unsupported, ignored=ignored)

