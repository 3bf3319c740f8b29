"""The transformer stack shared by every family: config, block, and the (scanned) layer stack."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.layers import attention, mlp, norms, positions

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
  attention_impl: str = 'auto'
  init_std: float = 0.02

  @property
  def out_init_std(self) -> float:
    """GPT-2's scaling of residual-branch output projections by 1/sqrt(2 x layers)."""
    return self.init_std / (2 * self.num_layers) ** 0.5


def transformer_config(model_cfg, *, seq_len: int) -> TransformerConfig:
  """Validates `config.model` and fills its derived fields (0 means 'derive')."""
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
  if m.remat not in REMAT_POLICIES:
    raise ConfigError('model.remat', m.remat, f'choose one of {sorted(REMAT_POLICIES)}')
  mlp.check_activation(m.activation)
  positions.check_position(m.position)
  if m.norm not in norms.NORMS:
    raise ConfigError('model.norm', m.norm, f'choose one of {sorted(norms.NORMS)}')
  attention.resolve_implementation(m.attention_impl, jnp.float32)  # validates the name
  max_len = m.max_len or seq_len
  if m.position in ('learned', 'sinusoidal') and max_len < seq_len:
    raise ConfigError('model.max_len', max_len, f'must be >= data.seq_len={seq_len}')
  head_dim = m.head_dim or m.d_model // m.num_heads
  d_ff = m.d_ff or (4 * m.d_model if m.activation not in mlp.GATED
                    else 256 * -(-int(8 * m.d_model / 3) // 256))
  return TransformerConfig(
      vocab_size=m.vocab_size, d_model=m.d_model, num_layers=m.num_layers,
      num_heads=m.num_heads, num_kv_heads=kv_heads, head_dim=head_dim, d_ff=d_ff,
      activation=m.activation, norm=m.norm, norm_eps=m.norm_eps, position=m.position,
      rope_theta=m.rope_theta, max_len=max_len, tie_embeddings=m.tie_embeddings,
      use_bias=m.use_bias, dropout=m.dropout, dtype=resolve_dtype(m.dtype),
      scan_layers=m.scan_layers, remat=m.remat, attention_impl=m.attention_impl,
      init_std=m.init_std)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask_BTS):
    c = self.cfg
    h_BTD = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype, module_name='attn_norm')(x_BTD)
    h_BTD = attention.Attention(
        num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
        position=c.position, rope_theta=c.rope_theta, implementation=c.attention_impl,
        use_bias=c.use_bias, init_std=c.init_std, out_init_std=c.out_init_std, dtype=c.dtype,
        decode=self.decode, name='attn')(h_BTD, positions_BT, mask_BTS)
    x_BTD = x_BTD + nn.Dropout(c.dropout)(h_BTD, deterministic=self.deterministic)
    h_BTD = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype, module_name='mlp_norm')(x_BTD)
    h_BTD = mlp.MLP(d_ff=c.d_ff, activation=c.activation, use_bias=c.use_bias,
                    init_std=c.init_std, out_init_std=c.out_init_std, dtype=c.dtype,
                    name='mlp')(h_BTD)
    x_BTD = x_BTD + nn.Dropout(c.dropout)(h_BTD, deterministic=self.deterministic)
    x_BTD = nn.with_logical_constraint(x_BTD, ('batch', 'length', 'act_embed'))
    return x_BTD


class ScannedBlock(Block):
  """`Block` with the (carry, out) signature that `nn.scan` wants."""

  def __call__(self, x_BTD, positions_BT, mask_BTS):
    return super().__call__(x_BTD, positions_BT, mask_BTS), None


class Stack(nn.Module):
  """`num_layers` blocks, unrolled or as one `nn.scan` (one compiled layer; faster compiles)."""
  cfg: TransformerConfig
  block: type[Block] = Block
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask_BTS):
    c = self.cfg
    policy = REMAT_POLICIES[c.remat]
    if c.scan_layers:
      block_cls = ScannedBlock if self.block is Block else self.block
      if c.remat != 'none':
        block_cls = nn.remat(block_cls, policy=policy, prevent_cse=False)
      scanned = nn.scan(block_cls, variable_axes={'params': 0, 'cache': 0},
                        split_rngs={'params': True, 'dropout': True},
                        in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
                        metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BTD, _ = scanned(c, decode=self.decode, deterministic=self.deterministic,
                         name='layers')(x_BTD, positions_BT, mask_BTS)
      return x_BTD
    block_cls = self.block
    if c.remat != 'none':
      block_cls = nn.remat(block_cls, policy=policy)
    for i in range(c.num_layers):
      x_BTD = block_cls(c, decode=self.decode, deterministic=self.deterministic,
                        name=f'layer_{i}')(x_BTD, positions_BT, mask_BTS)
    return x_BTD
