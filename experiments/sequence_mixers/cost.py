"""Cost of the recurrent mixers' sequence mixing: forward + backward time and memory vs length.

One measurement is a jitted gradient of sum(o * cotangent) with respect to every input of
research.layers.recurrent.chunked (q, k, v, log decay, write strength) for one layer's heads, at
the shapes and in the form its layer uses it (research/layers/mixers.py), without projections,
convolutions or norms (linear in T anyway):

  linear_attention  K = head_dim, V = head_dim + 1 (the normaliser's column), additive, no decay
  mamba2            K = state_dim (B and C), V = head_dim, additive, decay exp(dt A)
  gated_deltanet    K = V = head_dim, L2-normalised keys, the delta rule, decay

Timing and memory go through experiments/sparse_attention/cost.time_compiled, the harness that
times the attention cases, so the mixers and attention are measured alike on one plot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.sparse_attention import cost as attention_cost
from research.layers import mixers, recurrent


def kernel_shapes(kind: str, *, head_dim: int, state_dim: int) -> tuple[int, int, bool]:
  """(K, V, delta rule) of the recurrence as layer `kind` runs it."""
  if kind == 'linear_attention':
    return head_dim, head_dim + 1, False
  if kind == 'mamba2':
    return state_dim, head_dim, False
  if kind == 'gated_deltanet':
    return head_dim, head_dim, True
  raise ValueError(f'not a recurrent mixer: {kind}; one of {list(mixers.RECURRENT)}')


def inputs(kind: str, length: int, *, batch: int, heads: int, head_dim: int, state_dim: int,
           dtype):
  """Random inputs in the ranges the layer gives the kernel (positive features for linear
  attention, unit keys and beta in (0, 1) for the delta rule, decays below 1)."""
  k_dim, v_dim, delta = kernel_shapes(kind, head_dim=head_dim, state_dim=state_dim)
  ks = jax.random.split(jax.random.key(length), 6)
  q = jax.random.normal(ks[0], (batch, length, heads, k_dim), dtype)
  k = jax.random.normal(ks[1], (batch, length, heads, k_dim), dtype)
  v = jax.random.normal(ks[2], (batch, length, heads, v_dim), dtype)
  gate = jax.random.normal(ks[3], (batch, length, heads), jnp.float32)
  log_alpha = -jax.nn.softplus(gate - 4.0)
  beta = jax.nn.sigmoid(jax.random.normal(ks[4], (batch, length, heads), jnp.float32))
  if kind == 'linear_attention':
    q, k = jax.nn.elu(q) + 1.0, jax.nn.elu(k) + 1.0
    log_alpha, beta = jnp.zeros_like(log_alpha), jnp.ones_like(beta)
  if delta:
    q = q * jax.lax.rsqrt(jnp.sum(q * q, -1, keepdims=True)) * k_dim ** -0.5
    k = k * jax.lax.rsqrt(jnp.sum(k * k, -1, keepdims=True))
  cot = jax.random.normal(ks[5], (batch, length, heads, v_dim), jnp.float32)
  return (q, k, v, log_alpha.astype(dtype), beta.astype(dtype)), cot, delta


def measure(kind: str, length: int, *, chunk_size: int, batch: int, heads: int, head_dim: int,
            state_dim: int, dtype, warmup: int = 1, repeats: int = 3) -> dict:
  """Times one forward + backward of the chunkwise kernel; returns a row like attention's."""
  args, cot, delta = inputs(kind, length, batch=batch, heads=heads, head_dim=head_dim,
                            state_dim=state_dim, dtype=dtype)

  def loss(*xs):
    o, _ = recurrent.chunked(*xs, delta=delta, chunk_size=chunk_size)
    return jnp.sum(o * cot)

  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
  timing = attention_cost.time_compiled(step, args, warmup=warmup, repeats=repeats)
  return {'case': case_name(kind, chunk_size), 'pattern': kind, 'implementation': 'chunked',
          'length': length, **timing, 'note': ''}


def case_name(kind: str, chunk_size: int) -> str:
  return f'{kind}/chunked C={chunk_size}'
