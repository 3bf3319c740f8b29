"""Mixture-of-experts decoders (HF `MixtralForCausalLM`, `Qwen3MoeForCausalLM`) <-> lmforge decoder
with `model.moe` (research/layers/moe.py).

Both are Llama-shaped (llama.py: RoPE with its scaling, RMSNorm, SwiGLU experts, GQA; the
config's common fields and the attention and dense-MLP entries come from llama.py) with a sparse
MoE block in place of the MLP of some layers:

  router   HF `gate.weight` [E, D] is lmforge's `moe/router` [D, E] (transposed).
  experts  one HF tensor per expert (as save_pretrained writes them: Mixtral's w1/w3/w2, Qwen3's
           gate_proj/up_proj/down_proj, each a torch Linear [out, in]) are the slices of lmforge's
           stacked w_gate/w_in [E, D, F] and w_out [E, F, D]: `mapping.stacked_names` entries.

Routing. HF takes the softmax over all experts, the top k of it, and (Mixtral always; Qwen3-MoE
when norm_topk_prob) renormalises them to sum to 1: that is the softmax over the k chosen
logits, lmforge's softmax_order 'after_top_k'; Qwen3-MoE with norm_topk_prob false uses the
probabilities as they are, 'before_top_k'. HF never drops a token, so the router is 'dropless'
(all assignments, experts as grouped matmuls): the 'top_k' router would drop assignments past
its capacity, and the capacity that never drops (C = T) costs a [B, T, E, T] dispatch.

Layers. Mixtral: every layer is MoE (model.moe.every=1), expert width intermediate_size.
Qwen3-MoE: layer i is MoE when (i + 1) % decoder_sparse_step == 0 and i is not in
mlp_only_layers; lmforge's layers are every `model.moe.every`-th, so mlp_only_layers must leave
such a set. Dense layers use intermediate_size (model.d_ff), experts moe_intermediate_size
(model.moe.d_ff). Qwen3-MoE has QK-norm (model.qk_norm); both have sliding windows on every layer
(Mixtral's sliding_window, Qwen3-MoE's with use_sliding_window, which transformers applies to
every layer: it reads no max_window_layers for Qwen3-MoE), as Mistral.

Balancing. HF's router_aux_loss_coef scales the Switch loss E x sum_e f_e P_e once, over all
layers' tokens pooled, with f_e the share of tokens routed to e (summing to k); lmforge adds
load_balance_coef x the same loss for each MoE layer, with f_e the share of assignments (summing
to 1). Under uniform routing HF's term is k x router_aux_loss_coef and lmforge's (MoE layers) x
load_balance_coef, so import sets load_balance_coef = router_aux_loss_coef x k / (MoE layers) and
export inverts it; the two then differ only in HF pooling the layers. HF adds the loss only when
output_router_logits is set; lmforge always does in training (set model.moe.load_balance_coef=0
for HF's default). Neither has a z-loss (z_loss_coef 0; a trained one is not exported). Mixtral's
router_jitter_noise is model.moe.jitter, but HF also scales the experts' input by the noise, where
lmforge scales the router's only (training only; Qwen3-MoE has no jitter and exports none).

Export refuses what HF cannot compute the same way: capacity drops (router 'top_k' below
capacity_factor E/k, 'expert_choice'), shared experts, the aux-free selection bias (routing that
HF's router lacks), and for Mixtral MoE layers other than all of them, QK-norm or 'before_top_k'.
"""

from __future__ import annotations

import dataclasses
import functools

from research import config_lib
from research.errors import UserError
from research.layers import patterns as patterns_lib
from research.models.hf import llama, mapping, rope
from research.models.hf.mapping import TRANSPOSE, Tensor, stacked_names
from research.models.transformer import transformer_config


@dataclasses.dataclass(frozen=True)
class Variant:
  """What sets a MoE model type apart: its tensor names and Qwen3-MoE's options."""
  model_type: str
  architecture: str
  block: str  # the MoE module of a layer: 'block_sparse_moe' | 'mlp'
  experts: tuple[str, str, str]  # per-expert Linear names of (w_gate, w_in, w_out)
  qwen: bool  # QK-norm, dense layers, norm_topk_prob, use_sliding_window (Qwen3-MoE)


MIXTRAL = Variant('mixtral', 'MixtralForCausalLM', 'block_sparse_moe', ('w1', 'w3', 'w2'),
                  qwen=False)
QWEN3_MOE = Variant('qwen3_moe', 'Qwen3MoeForCausalLM', 'mlp',
                    ('gate_proj', 'up_proj', 'down_proj'), qwen=True)


# ------------------------------------------------------------------------------------------------
# Config.


def _num_experts(variant: Variant, hf: dict) -> int:
  # Qwen3-MoE's hub configs say num_experts; transformers 5 saves num_local_experts for both.
  key = 'num_experts' if variant.qwen and 'num_experts' in hf else 'num_local_experts'
  return int(hf.get(key) or 0)


def _every(variant: Variant, hf: dict) -> int:
  """model.moe.every for the config's MoE layers; UserError when they are not every k-th."""
  if not variant.qwen:
    return 1
  layers, step = hf['num_hidden_layers'], hf.get('decoder_sparse_step', 1)
  dense = set(hf.get('mlp_only_layers') or ())
  moe = [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
  for every in range(1, layers + 1):
    if moe == [i for i in range(layers) if (i + 1) % every == 0]:
      return every
  raise UserError(f'qwen3_moe mlp_only_layers={sorted(dense)} with decoder_sparse_step={step} '
                  f'makes layers {moe} MoE: lmforge converts MoE on every k-th layer '
                  '(model.moe.every), so leave mlp_only_layers empty or listing dense layers only')


def _attention_fields(variant: Variant, hf: dict) -> dict:
  """The config as llama.py reads it: Qwen3-MoE's window applies only with use_sliding_window."""
  if variant.qwen and not hf.get('use_sliding_window'):
    return {**hf, 'sliding_window': None}
  return hf


def lmforge_config(variant: Variant, hf: dict):
  """The lmforge decoder config of a Mixtral or Qwen3-MoE config.json."""
  experts = _num_experts(variant, hf)
  if experts <= 0:
    raise UserError(f'{variant.model_type} num_experts={experts}: this model has no experts; '
                    'lmforge converts MoE models with at least one expert')
  every = _every(variant, hf)
  dense = llama.Variant(variant.model_type, variant.architecture, sliding_window=True,
                        qk_norm=variant.qwen)
  c = llama.lmforge_config(dense, _attention_fields(variant, hf))
  m = c.model.moe
  m.num_experts = experts
  m.top_k = hf['num_experts_per_tok']
  m.every = every
  m.router = 'dropless'  # HF never drops a token (module docstring)
  renormalise = hf.get('norm_topk_prob', False) if variant.qwen else True
  m.softmax_order = 'after_top_k' if renormalise else 'before_top_k'
  m.d_ff = hf['moe_intermediate_size'] if variant.qwen else hf['intermediate_size']
  moe_layers = c.model.num_layers // every
  m.load_balance_coef = float(hf.get('router_aux_loss_coef', 0.0)) * m.top_k / moe_layers
  m.z_loss_coef = 0.0
  m.jitter = float(hf.get('router_jitter_noise', 0.0))
  return config_lib.finalize(c)


def _never_drops(config) -> bool:
  """Whether the model.moe router keeps every assignment: 'dropless', or 'top_k' whose
  capacity is the whole sequence (capacity_factor x k / E >= 1, per choice)."""
  m = config.model.moe
  if m.router == 'dropless':
    return True
  choices = m.top_k if m.get('capacity_per_choice', True) else 1
  return m.router == 'top_k' and m.capacity_factor * choices >= m.num_experts


def _moe_reasons(variant: Variant, config) -> list[str]:
  m = config.model.moe
  wanted = {'model.moe.num_shared_experts': 0, 'model.moe.balance': 'aux_loss',
            'model.moe.softmax_order': ('after_top_k', 'before_top_k') if variant.qwen
                                       else 'after_top_k'}
  if not variant.qwen:
    wanted['model.moe.every'] = 1
  reasons = mapping.differences(config, wanted)
  if not _never_drops(config):
    minimum = m.num_experts / (m.top_k if m.get('capacity_per_choice', True) else 1)
    reasons.append(f'model.moe.router={m.router!r} (needs \'dropless\', or \'top_k\' with '
                   f'capacity_factor >= {minimum:g}: {variant.model_type} never drops a token)')
  return reasons


def _pattern_reason(config) -> list[str]:
  pattern = mapping.field(config, 'model.attention.pattern', 'full')
  if set(patterns_lib.parse_pattern(pattern)) in ({'full'}, {'sliding'}):
    return []
  return [f"model.attention.pattern={pattern!r} (needs 'full', or 'sliding' on every layer)"]


def unsupported(variant: Variant, config) -> list[str]:
  if reasons := mapping.differences(config, {'model.family': 'decoder'}):
    return reasons
  if mapping.field(config, 'model.moe.num_experts', 0) <= 0:
    return ['model.moe.num_experts=0 (needs experts: a dense decoder exports as llama)']
  plain = {k: v for k, v in mapping.PLAIN.items()
           if k not in ('model.moe.num_experts', 'model.qk_norm')}
  return mapping.differences(config, {
      'model.position': 'rope', 'model.norm': 'rmsnorm', 'model.norm_position': 'pre',
      'model.activation': 'swiglu', 'model.use_bias': False, 'model.attention_scale': 0.0,
      **plain, 'model.qk_norm': variant.qwen, 'model.rope_scaling.kind': llama.ROPE_SCALINGS,
  }) + _moe_reasons(variant, config) + _pattern_reason(config)


def hf_config(variant: Variant, config) -> dict:
  t = transformer_config(config.model, seq_len=config.data.seq_len)
  moe = t.moe
  moe_layers = sum(moe.is_moe_layer(i) for i in range(t.num_layers))
  window = t.attention.window if set(t.attention.pattern) == {'sliding'} else None
  out = {**mapping.hf_common(config, FAMILIES[variant.model_type]),
         'hidden_size': t.d_model, 'num_hidden_layers': t.num_layers,
         'num_attention_heads': t.num_heads, 'num_key_value_heads': t.num_kv_heads,
         'head_dim': t.head_dim, 'hidden_act': 'silu', 'max_position_embeddings': t.max_len,
         'rms_norm_eps': t.norm_eps, **rope.hf_fields(t.rope),
         'tie_word_embeddings': t.tie_embeddings, 'attention_dropout': 0.0,
         'sliding_window': window, 'num_experts_per_tok': moe.top_k,
         'router_aux_loss_coef': moe.load_balance_coef * moe_layers / moe.top_k,
         'output_router_logits': False}
  if variant.qwen:
    out.update(num_experts=moe.num_experts, intermediate_size=t.d_ff,
               moe_intermediate_size=moe.d_ff, decoder_sparse_step=moe.every,
               mlp_only_layers=[], norm_topk_prob=moe.softmax_order == 'after_top_k',
               use_sliding_window=window is not None, attention_bias=False)
  else:
    out.update(num_local_experts=moe.num_experts, intermediate_size=moe.d_ff,
               router_jitter_noise=moe.jitter)
  return out


# ------------------------------------------------------------------------------------------------
# Tensors.


def _moe_layer(variant: Variant, i: int, num_experts: int) -> list[Tensor]:
  b, p = f'model.layers.{i}.{variant.block}.', f'stack/layer_{i}/moe/'
  gate, up, down = (stacked_names(f'{b}experts.{{}}.{name}.weight', num_experts)
                    for name in variant.experts)
  return [Tensor(f'{p}router', f'{b}gate.weight', TRANSPOSE),  # [E, D] <-> [D, E]
          Tensor(f'{p}w_gate', gate, TRANSPOSE),  # [F, D] per expert <-> [E, D, F]
          Tensor(f'{p}w_in', up, TRANSPOSE),
          Tensor(f'{p}w_out', down, TRANSPOSE)]  # [D, F] per expert <-> [E, F, D]


def _layer(variant: Variant, i: int, t) -> list[Tensor]:
  b, p = f'model.layers.{i}.', f'stack/layer_{i}/'
  table = [Tensor(f'{p}attn_norm/scale', f'{b}input_layernorm.weight'),
           *llama.attention_tensors(i, t),
           Tensor(f'{p}mlp_norm/scale', f'{b}post_attention_layernorm.weight')]
  return table + (_moe_layer(variant, i, t.moe.num_experts) if t.moe.is_moe_layer(i)
                  else llama.mlp_tensors(i))


def tensors(variant: Variant, config) -> list[Tensor]:
  return llama.decoder_tensors(config, functools.partial(_layer, variant))


def _family(variant: Variant) -> mapping.Family:
  return mapping.Family(model_type=variant.model_type, architecture=variant.architecture,
                        lmforge_config=functools.partial(lmforge_config, variant),
                        hf_config=functools.partial(hf_config, variant),
                        tensors=functools.partial(tensors, variant),
                        unsupported=functools.partial(unsupported, variant),
                        ignored=llama.ignored)


FAMILIES = {v.model_type: _family(v) for v in (MIXTRAL, QWEN3_MOE)}
