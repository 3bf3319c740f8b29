"""Normalisation layers, resolved by name (`model.norm`).

Each norm is a pure function under `jax.checkpoint`: the backward recomputes it from its input
instead of keeping the float32 centred and normalised copies that autodiff would save (10-12
bytes per element against the input's 2 in bfloat16). The recomputation is elementwise work
that a GPU or TPU does at memory speed, and it saves the writes and reads of those copies
(BENCHMARKS.md, "Measured: one H200").
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import ConfigError


@functools.partial(jax.checkpoint, static_argnums=(2, 3, 4))
def rms_norm(x_BTD, scale_D, eps: float, dtype, plus_one: bool):
  x = x_BTD.astype(jnp.float32)
  x = x * jnp.reciprocal(jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps))
  return (x * (1.0 + scale_D if plus_one else scale_D)).astype(dtype)


@functools.partial(jax.checkpoint, static_argnums=(3, 4))
def layer_norm(x_BTD, scale_D, bias_D, eps: float, dtype):
  x = x_BTD.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  x = (x - mean) * jnp.reciprocal(jnp.sqrt(var + eps))
  return (x * scale_D + bias_D).astype(dtype)


class RMSNorm(nn.Module):
  """Root-mean-square norm (Zhang & Sennrich 2019): scale only, statistics in float32."""
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  axis: str = 'embed'  # the logical axis of the normalised dimension (QK-norm: 'head_dim')

  @nn.compact
  def __call__(self, x_BTD):
    scale_D = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, (self.axis,)),
                         (x_BTD.shape[-1],), jnp.float32)
    return rms_norm(x_BTD, scale_D, self.eps, self.dtype, False)


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
    return rms_norm(x_BTD, scale_D, self.eps, self.dtype, True)


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
    return layer_norm(x_BTD, scale_D, bias_D, self.eps, self.dtype)


NORMS = {'rmsnorm': RMSNorm, 'rmsnorm_plus_one': RMSNormPlusOne, 'layernorm': LayerNorm}


def make_norm(name: str, *, eps: float, dtype, module_name: str | None = None,
              axis: str = 'embed') -> nn.Module:
  if name not in NORMS:
    raise ConfigError('model.norm', name, f'choose one of {sorted(NORMS)}')
  return NORMS[name](eps=eps, dtype=dtype, axis=axis, name=module_name)
