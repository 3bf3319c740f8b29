"""Positional encodings, by `model.position`: RoPE (default), learned absolute, sinusoidal.

RoPE rotates queries and keys inside attention; the absolute kinds add a [T, D] table to the token
embeddings. All take explicit integer positions so that packed segments restart at zero and cached
decoding continues from the cache index.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError

POSITIONS = ('rope', 'learned', 'sinusoidal', 'relative', 'none')


def check_position(name: str) -> None:
  if name not in POSITIONS:
    raise ConfigError('model.position', name, f'choose one of {list(POSITIONS)}')


def apply_rope(x_BTHK, positions_BT, *, theta: float = 10_000.0):
  """Rotates pairs (x[..., i], x[..., i + K/2]) by position-dependent angles (GPT-NeoX layout)."""
  k = x_BTHK.shape[-1]
  if k % 2:
    raise ConfigError('model.head_dim', k, 'RoPE needs an even head dimension')
  inv_freq_K2 = 1.0 / (theta ** (np.arange(0, k, 2, dtype=np.float32) / k))
  angles_BTK2 = positions_BT[..., None].astype(jnp.float32) * inv_freq_K2
  sin_BT1K2 = jnp.sin(angles_BTK2)[:, :, None, :]
  cos_BT1K2 = jnp.cos(angles_BTK2)[:, :, None, :]
  x1, x2 = jnp.split(x_BTHK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos_BT1K2 - x2 * sin_BT1K2, x2 * cos_BT1K2 + x1 * sin_BT1K2], -1)
  return rotated.astype(x_BTHK.dtype)


def sinusoidal_table(max_len: int, d: int, *, max_timescale: float = 10_000.0) -> np.ndarray:
  """The Transformer's fixed table (Vaswani et al. 2017): sin in the first half, cos in the second."""
  half = d // 2
  inv_timescales = np.exp(-np.log(max_timescale) * np.arange(half) / max(half - 1, 1))
  angles_TD2 = np.arange(max_len)[:, None] * inv_timescales[None, :]
  table = np.zeros((max_len, d), np.float32)
  table[:, :half], table[:, half:2 * half] = np.sin(angles_TD2), np.cos(angles_TD2)
  return table


class AbsolutePositions(nn.Module):
  """Adds a learned or sinusoidal position embedding to x_BTD at `positions_BT`."""
  kind: str
  max_len: int
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, positions_BT):
    d = x_BTD.shape[-1]
    if self.kind == 'learned':
      table_LD = self.param('embedding', nn.with_logical_partitioning(
          nn.initializers.normal(self.init_std), (None, 'embed')), (self.max_len, d), jnp.float32)
    else:
      table_LD = jnp.asarray(sinusoidal_table(self.max_len, d))
    return x_BTD + jnp.take(table_LD, positions_BT, axis=0).astype(self.dtype)
