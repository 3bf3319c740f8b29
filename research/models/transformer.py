"""The transformer stack shared by every family: config, block, and the (scanned) layer stack."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.layers import attention, context_parallel, mixers, mlp, norms, positions
from research.layers import moe as moe_lib
from research.layers import peft as peft_lib
from research.layers import patterns as patterns_lib
from research.parallel import pipeline

NORM_POSITIONS = ('pre', 'post', 'sandwich')
# Standard parameterization, and μP for Adam (Yang et al. 2022, Tensor Programs V, Table 8:
# the `mup` package's multiplier form); the learning-rate side is research/training/optimizers.py.
PARAMETERIZATIONS = ('sp', 'mup')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# Remat policies by name (MaxText style): what each layer keeps for the backward pass.
REMAT_POLICIES = {
    'none': None,  # no rematerialisation: keep everything
    'full': jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer
    'dots': jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    'save_qkv_attention': jax.checkpoint_policies.save_only_these_names(
        'query_proj', 'key_proj', 'value_proj', 'attention_out'),
    'save_attention_out': jax.checkpoint_policies.save_only_these_names('attention_out'),
}


def resolve_dtype(name: str):
  """'auto' computes in bfloat16 on GPU/TPU and float32 on CPU (XLA's CPU bf16 matmuls are slow)."""
  if name == 'auto':
    return jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  if name not in DTYPES:
    raise ConfigError('model.dtype', name, f"choose 'auto' or one of {sorted(DTYPES)}")
  return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Resolved, hashable model hyper-parameters (derived fields filled in)."""
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  d_ff: int
  activation: str = 'gelu'
  norm: str = 'rmsnorm'
  norm_eps: float = 1e-6
  position: str = 'rope'
  rope_theta: float = 10_000.0
  max_len: int = 1024
  tie_embeddings: bool = True
  use_bias: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: str = 'none'
  init_std: float = 0.02
  # 'pre' (GPT-2, Llama, T5), 'post' (BERT, the 2017 Transformer) or 'sandwich' (Gemma 2/3:
  # x + post_norm(f(pre_norm(x))))
  norm_position: str = 'pre'
  attention_scale: float | None = None  # None: 1/sqrt(head_dim); T5 uses 1.0
  # RoPE of global (full) layers, and of sliding-window layers (Gemma's own local base).
  rope: positions.Rope = positions.Rope()
  rope_local: positions.Rope = positions.Rope()
  qkv_bias: bool = False  # biases on query/key/value only (Qwen2); use_bias puts them everywhere
  qk_norm: bool = False  # model.norm over head_dim of queries and keys, before RoPE (Qwen3)
  attention_softcap: float = 0.0  # cap x tanh(scores / cap) (Gemma 2); 0: none
  final_softcap: float = 0.0  # the same on the output logits (decoder)
  embed_scale: bool = False  # token embeddings x sqrt(d_model) (Gemma; decoder)
  relative_buckets: int = 32  # T5 relative position bias (position='relative')
  relative_max_distance: int = 128
  type_vocab_size: int = 0  # token-type (segment A/B) embeddings, BERT: 2; 0: none (encoder)
  embed_norm: bool = False  # norm on the summed input embeddings (BERT; encoder)
  head_transform: bool = False  # MLM head: dense + activation + norm before the unembedding
  output_bias: bool = False  # a [V] bias on the logits (BERT's MLM decoder bias)
  encoder_layers: int = 0  # encoder-decoder depths; 0: num_layers
  decoder_layers: int = 0
  loss_chunk_size: int = 0  # read by the objectives: positions per loss chunk; 0: whole logits
  # A Dense(D -> 1) on the final-normed hidden states (`scalars`: a reward model's score, PPO's
  # value head); decoder and encoder.
  scalar_head: bool = False
  # Mixture of experts (`model.moe`; research/layers/moe.py): num_experts=0 is a dense model.
  moe: moe_lib.MoEConfig = dataclasses.field(default_factory=moe_lib.MoEConfig)
  # Attention patterns and implementation (`model.attention`; research/layers/patterns.py).
  attention: patterns_lib.AttentionConfig = dataclasses.field(
      default_factory=patterns_lib.AttentionConfig)
  # Sequence mixers per layer (`model.mixer`; research/layers/mixers.py): attention or recurrent.
  mixer: mixers.MixerConfig = dataclasses.field(default_factory=mixers.MixerConfig)
  # Parameter-efficient fine-tuning (`peft`; research/layers/peft.py): LoRA, soft prompt,
  # adapters. The default adds nothing.
  peft: peft_lib.PeftConfig = dataclasses.field(default_factory=peft_lib.PeftConfig)
  # Pipeline stages over the stack (`mesh.stage`, `mesh.pipeline_repeats`,
  # `mesh.pipeline_micro_batches`, filled in by research.models.build_model;
  # research/parallel/pipeline.py). 1 stage: no pipeline.
  pipeline_stages: int = 1
  pipeline_repeats: int = 1
  pipeline_micro_batches: int = 1
  # μP's width multiplier w = d_model / model.base_width; 1.0 under SP and at the base width,
  # where every property below is SP's exactly (`transformer_config` sets it).
  mup_width: float = 1.0

  @property
  def attention_impl(self) -> str:
    """The requested attention implementation (`model.attention.implementation`)."""
    return self.attention.implementation

  @property
  def hidden_init_std(self) -> float:
    """Init std of the hidden (matrix-like) weights: attention, feed-forward, experts, router.
    μP: x 1/sqrt(w), i.e. variance 1/fan_in relative to the base width; embeddings and the
    unembedding keep `init_std` (Tensor Programs V, Table 8)."""
    if self.mup_width == 1.0:
      return self.init_std
    return self.init_std / self.mup_width ** 0.5

  @property
  def out_init_std(self) -> float:
    """GPT-2's scaling of residual-branch output projections by 1/sqrt(2 x layers)."""
    return self.hidden_init_std / (2 * self.num_layers) ** 0.5

  @property
  def readout_mult(self) -> float:
    """μP's output multiplier 1/w on the logits (MuReadout; on the shared table when tied)."""
    return 1.0 / self.mup_width

  @property
  def base_d_model(self) -> float:
    """The base width: d_model-dependent constant multipliers (Gemma's embedding scale, T5's
    tied-logit rescale) take it under μP, so only the μP rules change with width."""
    return self.d_model / self.mup_width


def transformer_config(model_cfg, *, seq_len: int, peft_cfg=None) -> TransformerConfig:
  """Validates `config.model` and fills its derived fields (0 means 'derive'). `peft_cfg`
  (`config.peft`) adds the model-side parameter-efficient layers it selects."""
  m = model_cfg
  for field in ('d_model', 'num_layers', 'num_heads', 'vocab_size'):
    if m[field] <= 0:
      raise ConfigError(f'model.{field}', m[field], 'must be a positive integer')
  if m.d_model % m.num_heads and not m.head_dim:
    raise ConfigError('model.num_heads', m.num_heads,
                      f'does not divide model.d_model={m.d_model}: pick a divisor or set '
                      'model.head_dim')
  kv_heads = m.num_kv_heads or m.num_heads
  if m.num_heads % kv_heads:
    raise ConfigError('model.num_kv_heads', kv_heads,
                      f'must divide model.num_heads={m.num_heads} (grouped-query attention)')
  if m.norm_position not in NORM_POSITIONS:
    raise ConfigError('model.norm_position', m.norm_position, f'choose one of {NORM_POSITIONS}')
  for field in ('attention_softcap', 'final_softcap'):
    if m.get(field, 0.0) < 0:
      raise ConfigError(f'model.{field}', m[field], 'must be >= 0 (0: no soft-capping)')
  family = m.get('family', 'decoder')
  for field in ('embed_scale', 'final_softcap'):
    if m.get(field) and family != 'decoder':
      raise ConfigError(f'model.{field}', m[field], f'is a decoder option; model.family is '
                        f'{family!r}: leave it unset')
  if m.get('scalar_head', False) and family not in ('decoder', 'encoder'):
    raise ConfigError('model.scalar_head', m.scalar_head, f"is for 'decoder' and 'encoder' "
                      f'models; model.family is {family!r}: leave it unset')
  for field in ('encoder_layers', 'decoder_layers'):
    if m[field] < 0:
      raise ConfigError(f'model.{field}', m[field], 'must be >= 0 (0: model.num_layers)')
  if m.type_vocab_size < 0:
    raise ConfigError('model.type_vocab_size', m.type_vocab_size,
                      'must be >= 0 (0: no token-type embeddings; BERT: 2)')
  if m.get('loss_chunk_size', 0) < 0:
    raise ConfigError('model.loss_chunk_size', m.loss_chunk_size,
                      'must be >= 0 (0: the whole logits at once)')
  if m.remat not in REMAT_POLICIES:
    raise ConfigError('model.remat', m.remat, f'choose one of {sorted(REMAT_POLICIES)}')
  mlp.check_activation(m.activation)
  positions.check_position(m.position)
  mup_width, attention_scale = _parameterization(m)
  if m.norm not in norms.NORMS:
    raise ConfigError('model.norm', m.norm, f'choose one of {sorted(norms.NORMS)}')
  attention_cfg = attention_section(m)
  mixer_cfg = mixer_section(m, seq_len=seq_len)
  max_len = m.max_len or seq_len
  if m.position in ('learned', 'sinusoidal') and max_len < seq_len:
    raise ConfigError('model.max_len', max_len, f'must be >= data.seq_len={seq_len}')
  head_dim = m.head_dim or m.d_model // m.num_heads
  d_ff = m.d_ff or (4 * m.d_model if m.activation not in mlp.GATED
                    else 256 * -(-int(8 * m.d_model / 3) // 256))
  moe_cfg = m.get('moe', None)
  if moe_cfg is not None:
    moe_lib.check_moe(moe_cfg, family=m.get('family', 'decoder'), num_layers=m.num_layers,
                      scan_layers=m.scan_layers)
  return TransformerConfig(
      vocab_size=m.vocab_size, d_model=m.d_model, num_layers=m.num_layers,
      num_heads=m.num_heads, num_kv_heads=kv_heads, head_dim=head_dim, d_ff=d_ff,
      activation=m.activation, norm=m.norm, norm_eps=m.norm_eps, position=m.position,
      rope_theta=m.rope_theta, max_len=max_len, tie_embeddings=m.tie_embeddings,
      use_bias=m.use_bias, dropout=m.dropout, dtype=resolve_dtype(m.dtype),
      scan_layers=m.scan_layers, remat=m.remat,
      init_std=m.init_std, norm_position=m.norm_position,
      attention_scale=attention_scale, relative_buckets=m.relative_buckets,
      relative_max_distance=m.relative_max_distance, type_vocab_size=m.type_vocab_size,
      rope=positions.rope_of(m), rope_local=positions.rope_of(m, local=True),
      qkv_bias=m.get('qkv_bias', False), qk_norm=m.get('qk_norm', False),
      attention_softcap=float(m.get('attention_softcap', 0.0)),
      final_softcap=float(m.get('final_softcap', 0.0)), embed_scale=m.get('embed_scale', False),
      embed_norm=m.embed_norm, head_transform=m.head_transform, output_bias=m.output_bias,
      encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers,
      loss_chunk_size=m.get('loss_chunk_size', 0), scalar_head=bool(m.get('scalar_head', False)),
      moe=moe_lib.resolve(moe_cfg, d_ff=d_ff), attention=attention_cfg, mixer=mixer_cfg,
      peft=peft_section(peft_cfg), mup_width=mup_width)


def scale_readout(cfg: TransformerConfig, logits_BTV):
  """μP's output multiplier 1/w on the unembedding's float32 logits (before any output bias or
  soft-cap), tied or not; SP and the base width: unchanged."""
  return logits_BTV if cfg.mup_width == 1.0 else logits_BTV * cfg.readout_mult


def width_multiplier(model_cfg) -> float:
  """w = model.d_model / model.base_width (1.0 when base_width is 0): the width multiplier of
  μP and of per-class learning-rate exponents (`train.lr_exponents`)."""
  base = model_cfg.get('base_width', 0)
  if base < 0:
    raise ConfigError('model.base_width', base, 'must be >= 0 (0: model.d_model, no rescaling)')
  return model_cfg.d_model / base if base else 1.0


def _parameterization(m) -> tuple[float, float | None]:
  """(μP width multiplier, attention scale) of `config.model`.

  The base model is this config with d_model = base_width: the same heads, head_dim
  base_width / num_heads unless model.head_dim fixes it, and every other width derived from
  d_model as here. μP scores go as 1/head_dim (Tensor Programs V, section 4), written as SP's
  scale x sqrt(base_head_dim / head_dim) so that at the base width it is SP's scale exactly.
  """
  name = m.get('parameterization', 'sp')
  if name not in PARAMETERIZATIONS:
    raise ConfigError('model.parameterization', name, f'choose one of {list(PARAMETERIZATIONS)}')
  w = width_multiplier(m)
  sp_scale = m.attention_scale or None
  if name == 'sp' or w == 1.0:
    return 1.0, sp_scale
  if not m.head_dim and m.base_width % m.num_heads:
    raise ConfigError('model.base_width', m.base_width,
                      f'must be a multiple of model.num_heads={m.num_heads}: the base model keeps '
                      'the heads, with head_dim = base_width / num_heads')
  head_dim = m.head_dim or m.d_model // m.num_heads
  base_head_dim = m.head_dim or m.base_width // m.num_heads
  if base_head_dim == head_dim:
    return w, sp_scale
  return w, (sp_scale or head_dim ** -0.5) * (base_head_dim / head_dim) ** 0.5


def peft_section(peft_cfg) -> peft_lib.PeftConfig:
  """The model-side part of `config.peft` (None or method 'none', 'bitfit': nothing)."""
  method = peft_cfg.method if peft_cfg is not None else 'none'
  if method == 'lora':
    return peft_lib.PeftConfig(lora_rank=peft_cfg.rank, lora_alpha=float(peft_cfg.alpha),
                               lora_targets=peft_cfg.targets)
  if method == 'prompt':
    return peft_lib.PeftConfig(prompt_tokens=peft_cfg.prompt_tokens)
  if method == 'adapter':
    return peft_lib.PeftConfig(adapter_dim=peft_cfg.adapter_dim)
  return peft_lib.PeftConfig()


# Self-attention causality per family: patterns and kernels depend on it.
_CAUSAL = {'decoder': (True,), 'encoder': (False,), 'encoder_decoder': (False, True)}


def attention_section(m) -> patterns_lib.AttentionConfig:
  """Validates `model.attention` and resolves it. A config from before that section (a flat
  `model.attention_impl`, e.g. a saved config.json) still works: the old field is the
  implementation when the new one is 'auto'."""
  att = m.get('attention', None)
  if att is None:
    att = dict(patterns_lib.AttentionConfig().__dict__, pattern='full')
  att = dict(att)
  legacy = m.get('attention_impl', 'auto')
  if legacy != 'auto':
    if att.get('implementation', 'auto') not in ('auto', legacy):
      raise ConfigError('model.attention_impl', legacy,
                        f"conflicts with model.attention.implementation="
                        f"{att['implementation']!r}: keep only the latter")
    att['implementation'] = legacy
  patterns_lib.check_attention(att, num_layers=m.num_layers, scan_layers=m.scan_layers,
                               implementations=attention.IMPLEMENTATIONS)
  resolved = patterns_lib.resolve(att)
  if resolved.implementation != 'auto':
    for kind in set(resolved.pattern):
      pattern = dataclasses.replace(resolved.layer_pattern(0), kind=kind)
      for causal in _CAUSAL.get(m.get('family', 'decoder'), (True,)):
        if not attention.supports(resolved.implementation, pattern, causal=causal,
                                  bias=m.position == 'relative'):
          raise ConfigError('model.attention.implementation', resolved.implementation,
                            f"cannot compute the {pattern.describe()} pattern of a "
                            f"{'causal' if causal else 'bidirectional'} stack"
                            f"{' with a relative position bias' if m.position == 'relative' else ''}"
                            ": use 'auto' or 'blockwise'")
  return resolved


def mixer_section(m, *, seq_len: int) -> mixers.MixerConfig:
  """Validates `model.mixer` and resolves it (absent, as in a saved config from before it:
  every layer attention)."""
  mix = m.get('mixer', None)
  if mix is None:
    return mixers.MixerConfig()
  mixers.check_mixer(mix, scan_layers=m.scan_layers, seq_len=seq_len)
  resolved = mixers.resolve(mix, seq_len=seq_len)
  if 'mamba2' in resolved.pattern and (resolved.expand * m.d_model) % m.num_heads:
    raise ConfigError('model.mixer.expand', resolved.expand,
                      f'mamba2 splits expand x d_model = {resolved.expand * m.d_model} over '
                      f'model.num_heads={m.num_heads} heads: pick values it divides')
  return resolved


class Block(nn.Module):
  """Residual block: self-attention, optional cross-attention (encoder-decoder), feed-forward.

  Pre-norm: x + f(norm(x)). Post-norm (BERT): norm(x + f(x)). With `moe_layer` the feed-forward
  is the mixture of experts `moe` (research/layers/moe.py) instead of the dense `mlp`. `mask_BTS`
  is an attention.MaskSpec (or a dense boolean mask); `pattern` restricts self-attention.
  """
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True
  cross_attention: bool = False
  moe_layer: bool = False
  pattern: patterns_lib.Pattern | None = None  # self-attention's pattern; None: full
  mixer: str = 'attention'  # the self-mixing sublayer (research/layers/mixers.py)

  def _attention(self, name):
    c = self.cfg
    local = self.pattern is not None and not self.pattern.is_full
    return attention.Attention(
        num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
        position=c.position if name == 'attn' else 'none', rope_theta=c.rope_theta,
        rope=c.rope_local if local else c.rope,
        implementation=c.attention.implementation, use_bias=c.use_bias, qkv_bias=c.qkv_bias,
        qk_norm=c.norm if c.qk_norm else '', norm_eps=c.norm_eps,
        softcap=c.attention_softcap, init_std=c.hidden_init_std,
        out_init_std=c.out_init_std, dtype=c.dtype, decode=self.decode, scale=c.attention_scale,
        pattern=self.pattern if name == 'attn' else None, peft=c.peft,
        context_strategy=c.attention.context_strategy,
        context_block_size=c.attention.block_size, name=name)

  def _residual(self, name, x_BTD, sublayer):
    c = self.cfg
    norm = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype, module_name=f'{name}_norm')
    dropout = nn.Dropout(c.dropout)
    if c.peft.adapter_dim:  # a bottleneck adapter on the sublayer's output (PEFT)
      adapter = peft_lib.Adapter(c.peft.adapter_dim, dtype=c.dtype, name=f'{name}_adapter')
      sublayer = lambda h, f=sublayer: adapter(f(h))
    if c.norm_position == 'post':
      return norm(x_BTD + dropout(sublayer(x_BTD), deterministic=self.deterministic))
    if c.norm_position == 'sandwich':
      post_norm = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype,
                                  module_name=f'{name}_post_norm')
      sublayer = lambda h, f=sublayer: post_norm(f(h))
    return x_BTD + dropout(sublayer(norm(x_BTD)), deterministic=self.deterministic)

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask_BTS, bias_HTS=None, encoded_BSD=None,
               cross_mask_BTS=None):
    c = self.cfg
    if self.mixer == 'attention':
      x_BTD = self._residual('attn', x_BTD, lambda h: self._attention('attn')(
          h, positions_BT, mask_BTS, bias_HTS=bias_HTS))
    else:
      layer = mixers.make(self.mixer, c.mixer, d_model=c.d_model, num_heads=c.num_heads,
                          head_dim=c.head_dim, init_std=c.hidden_init_std,
                          out_init_std=c.out_init_std, dtype=c.dtype, decode=self.decode,
                          peft=c.peft, name='mixer')
      x_BTD = self._residual('mixer', x_BTD, lambda h: layer(h, mask_BTS))
    if self.cross_attention:
      x_BTD = self._residual('cross', x_BTD, lambda h: self._attention('cross')(
          h, positions_BT, cross_mask_BTS, kv_BSD=encoded_BSD))
    if self.moe_layer:
      mlp_layer = moe_lib.MoE(c.moe, activation=c.activation, use_bias=c.use_bias,
                              init_std=c.hidden_init_std, out_init_std=c.out_init_std,
                              dtype=c.dtype,
                              decode=self.decode, deterministic=self.deterministic, name='moe')
    else:
      mlp_layer = mlp.MLP(d_ff=c.d_ff, activation=c.activation, use_bias=c.use_bias,
                          init_std=c.hidden_init_std, out_init_std=c.out_init_std,
                          dtype=c.dtype,
                          peft=c.peft, name='mlp')
    x_BTD = self._residual('mlp', x_BTD, mlp_layer)
    return nn.with_logical_constraint(x_BTD, ('batch', 'length', 'act_embed'))


class ScannedBlock(Block):
  """`Block` with the (carry, out) signature that `nn.scan` wants."""

  def __call__(self, x_BTD, *args):
    return super().__call__(x_BTD, *args), None


class Stack(nn.Module):
  """`num_layers` blocks, unrolled or as one `nn.scan` (one compiled layer; faster compiles)."""
  cfg: TransformerConfig
  block: type[Block] = Block
  decode: bool = False
  deterministic: bool = True
  cross_attention: bool = False
  # False for a pipeline chunk: the whole stack already runs in the zig-zag order.
  zigzag: bool = True

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask_BTS, bias_HTS=None, encoded_BSD=None,
               cross_mask_BTS=None):
    """Extra arguments reach every block unchanged (a shared relative bias, encoder outputs).

    Layer i has a mixture-of-experts feed-forward when `cfg.moe.is_moe_layer(i)` and the
    attention pattern `cfg.attention.layer_pattern(i)`; a scanned stack has one layer type, so
    MoE there needs every layer MoE (model.moe.every=1) and one pattern for every layer.

    Over a context-sharded sequence (mesh.context > 1) a causal stack runs in the zig-zag
    order that balances causal attention (research/layers/context_parallel.py): its inputs
    are permuted once here and its output back, and every layer in between either works per
    token or builds its mask from the permuted token indices.
    """
    zigzag = (self.zigzag and not self.decode and isinstance(mask_BTS, attention.MaskSpec)
              and mask_BTS.causal
              and context_parallel.context_size() > 1)
    if not zigzag:
      return self._layers(x_BTD, positions_BT, mask_BTS, bias_HTS, encoded_BSD, cross_mask_BTS)
    if self.cross_attention or bias_HTS is not None:
      raise ValueError('context parallelism supports neither cross-attention nor score biases')
    spec = mask_BTS
    x_BTD, positions_BT, segment_ids_BT, index_BT = context_parallel.to_zigzag(
        x_BTD, positions_BT, spec.q_segment_ids_BT, spec.q_index_BT)
    spec = spec.replace(q_segment_ids_BT=segment_ids_BT, k_segment_ids_BS=segment_ids_BT,
                        q_index_BT=index_BT, k_index_BS=index_BT)
    x_BTD = self._layers(x_BTD, positions_BT, spec)
    return context_parallel.from_zigzag(x_BTD)[0]

  def _layers(self, x_BTD, positions_BT, mask_BTS, bias_HTS=None, encoded_BSD=None,
              cross_mask_BTS=None):
    c = self.cfg
    args = (positions_BT, mask_BTS, bias_HTS, encoded_BSD, cross_mask_BTS)
    kwargs = dict(decode=self.decode, deterministic=self.deterministic,
                  cross_attention=self.cross_attention)
    if self._pipelined(x_BTD):
      return self._pipeline(x_BTD, args)
    if c.scan_layers:
      block_cls = ScannedBlock if self.block is Block else self.block
      layers = _scanned_layers(block_cls, c, c.num_layers, remat=c.remat != 'none')(
          c, name='layers', moe_layer=c.moe.enabled, pattern=_pattern_or_none(c, 0),
          mixer=c.mixer.layer_kind(0), **kwargs)
      x_BTD, _ = layers(x_BTD, *args)
      return x_BTD
    block_cls = self.block
    if c.remat != 'none':
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[c.remat])
    for i in range(c.num_layers):
      x_BTD = block_cls(c, name=f'layer_{i}', moe_layer=c.moe.is_moe_layer(i),
                        pattern=_pattern_or_none(c, i), mixer=c.mixer.layer_kind(i),
                        **kwargs)(x_BTD, *args)
    return x_BTD

  def _pipelined(self, x_BTD) -> bool:
    """Whether this call runs the pipeline schedule. Initialisation (same parameters either
    way), decoding (a KV cache per layer), attention maps (a collection per layer) and a batch
    that the micro-batches do not divide (e.g. a few-shot scoring batch) take the plain stack
    over the same parameters instead: same numbers, no pipelining."""
    c = self.cfg
    return (c.pipeline_stages > 1 and not self.is_initializing() and not self.decode
            and not self.is_mutable_collection(attention.PROBS_COLLECTION)
            and x_BTD.shape[0] % c.pipeline_micro_batches == 0)

  def _pipeline(self, x_BTD, args):
    """The stack as pipeline stages (research/parallel/pipeline.py): each stage applies an
    unbound stack of one chunk's k = L / (R S) layers to its share of this stack's
    parameters (scanned or unrolled, as the stack itself).

    Mixture-of-experts statistics and balancing state come out per chunk, averaged over the
    micro-batches (as gradient accumulation averages them), and are put back in this stack's
    collections in the unpipelined layout, so `moe.moe_aux` reads them unchanged."""
    c = self.cfg
    positions_BT, mask_BTS, bias_HTS, encoded_BSD, cross_mask_BTS = args
    stages, repeats = c.pipeline_stages, c.pipeline_repeats
    # 'full' wraps each stage's whole chunk (pipeline.schedule): a stage keeps only its input
    # per iteration. Other policies name what each layer keeps, so they stay per layer: one
    # checkpoint around the chunk would hold all k layers' unsaved residuals at once in the
    # backward (Llama 3.1 70B: 210 GiB of temporaries a chip for save_qkv_attention).
    chunk_remat = 'none' if c.remat == 'full' else c.remat
    chunk_cfg = dataclasses.replace(c, num_layers=c.num_layers // (stages * repeats),
                                    remat=chunk_remat, pipeline_stages=1, pipeline_repeats=1)
    chunk = Stack(chunk_cfg, block=self.block, deterministic=self.deterministic,
                  cross_attention=self.cross_attention, zigzag=False, parent=None)
    noisy = not self.deterministic and (c.dropout > 0 or c.moe.jitter > 0)
    mutable = [name for name in (moe_lib.AUX_COLLECTION, moe_lib.STATE_COLLECTION)
               if c.moe.enabled and self.is_mutable_collection(name)]
    layout = dict(stages=stages, repeats=repeats, layers=c.num_layers, scanned=c.scan_layers)
    variables_SR = {name: pipeline.stage_params(self.variables[name], **layout) for name in
                    ('params', moe_lib.STATE_COLLECTION) if name in self.variables}

    def chunk_fn(variables, x_bTD, batch_args, rng):
      positions_bT, mask_bTS, encoded_bSD, cross_mask_bTS = batch_args
      rngs = {} if rng is None else {'dropout': rng}
      y_bTD, new = chunk.apply(variables, x_bTD, positions_bT, mask_bTS, bias_HTS, encoded_bSD,
                               cross_mask_bTS, rngs=rngs, mutable=mutable)
      return y_bTD, dict(new)

    y_BTD, new_SR = pipeline.schedule(
        chunk_fn, variables_SR, x_BTD, (positions_BT, mask_BTS, encoded_BSD, cross_mask_BTS),
        stages=stages, repeats=repeats, micro_batches=c.pipeline_micro_batches,
        policy=REMAT_POLICIES['full'], remat=c.remat == 'full',
        rng=self.make_rng('dropout') if noisy else None)
    for name, tree_SR in new_SR.items():
      for key, value in pipeline.unstage_params(tree_SR, **layout).items():
        self.put_variable(name, key, value)
    return y_BTD


def _scanned_layers(block_cls, c: TransformerConfig, length: int, *, remat: bool):
  """`block_cls` as one nn.scan over `length` layers (parameters stacked [length, ...])."""
  if remat:
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[c.remat], prevent_cse=False)
  variable_axes = {'params': 0, 'cache': 0, moe_lib.AUX_COLLECTION: 0,
                   moe_lib.STATE_COLLECTION: 0, attention.PROBS_COLLECTION: 0,
                   moe_lib.ROUTING_COLLECTION: 0}
  return nn.scan(block_cls, variable_axes=variable_axes,
                 split_rngs={'params': True, 'dropout': True},
                 in_axes=(nn.broadcast,) * 5, length=length,
                 metadata_params={nn.PARTITION_NAME: 'layers'})


def _pattern_or_none(c: TransformerConfig, i: int) -> patterns_lib.Pattern | None:
  pattern = c.attention.layer_pattern(i)
  return None if pattern.is_full else pattern
