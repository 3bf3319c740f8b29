"""Normalisation layers, resolved by name (`model.norm`)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from research.errors import ConfigError


class RMSNorm(nn.Module):
  """Root-mean-square norm (Zhang & Sennrich 2019): scale only, statistics in float32."""
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  axis: str = 'embed'  # the logical axis of the normalised dimension (QK-norm: 'head_dim')

  @nn.compact
  def __call__(self, x_BTD):
    scale_D = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, (self.axis,)),
                         (x_BTD.shape[-1],), jnp.float32)
    x = x_BTD.astype(jnp.float32)
    x = x * jnp.reciprocal(jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps))
    return (x * scale_D).astype(self.dtype)


class RMSNormPlusOne(nn.Module):
  """RMSNorm scaled by (1 + scale), scale initialised at 0 (Gemma): the stored weights are
  Gemma's own, so imports and exports copy them exactly."""
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  axis: str = 'embed'  # the logical axis of the normalised dimension (QK-norm: 'head_dim')

  @nn.compact
  def __call__(self, x_BTD):
    scale_D = self.param('scale', nn.with_logical_partitioning(nn.initializers.zeros, (self.axis,)),
                         (x_BTD.shape[-1],), jnp.float32)
    x = x_BTD.astype(jnp.float32)
    x = x * jnp.reciprocal(jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps))
    return (x * (1.0 + scale_D)).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with bias, statistics in float32."""
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  axis: str = 'embed'  # the logical axis of the normalised dimension (QK-norm: 'head_dim')

  @nn.compact
  def __call__(self, x_BTD):
    d = x_BTD.shape[-1]
    scale_D = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, (self.axis,)),
                         (d,), jnp.float32)
    bias_D = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, (self.axis,)),
                        (d,), jnp.float32)
    x = x_BTD.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    x = (x - mean) * jnp.reciprocal(jnp.sqrt(var + self.eps))
    return (x * scale_D + bias_D).astype(self.dtype)


NORMS = {'rmsnorm': RMSNorm, 'rmsnorm_plus_one': RMSNormPlusOne, 'layernorm': LayerNorm}


def make_norm(name: str, *, eps: float, dtype, module_name: str | None = None,
              axis: str = 'embed') -> nn.Module:
  if name not in NORMS:
    raise ConfigError('model.norm', name, f'choose one of {sorted(NORMS)}')
  return NORMS[name](eps=eps, dtype=dtype, axis=axis, name=module_name)
