"""Positional encodings, by `model.position`: RoPE (default), learned absolute, sinusoidal.

RoPE rotates queries and keys inside attention; the absolute kinds add a [T, D] table to the token
embeddings. All take explicit integer positions so that packed segments restart at zero and cached
decoding continues from the cache index.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError

POSITIONS = ('rope', 'learned', 'sinusoidal', 'relative', 'none')
# `model.rope_scaling.kind`: how RoPE's frequencies stretch past the pre-training context.
ROPE_SCALINGS = ('none', 'linear', 'llama3')


def check_position(name: str) -> None:
  if name not in POSITIONS:
    raise ConfigError('model.position', name, f'choose one of {list(POSITIONS)}')


@dataclasses.dataclass(frozen=True)
class Rope:
  """RoPE's base and frequency scaling (`model.rope_theta`, `model.rope_scaling`).

  'linear' divides every frequency by `factor` (position interpolation; Gemma 3's global
  layers). 'llama3' (Llama 3.1+) divides only the low frequencies, whose wavelength exceeds
  original_max_len / low_freq_factor, by `factor`, keeps those shorter than
  original_max_len / high_freq_factor, and interpolates smoothly between.
  """
  theta: float = 10_000.0
  scaling: str = 'none'
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_len: int = 8192

  def inv_freq(self, head_dim: int) -> np.ndarray:
    """float32 [K/2] angular frequencies."""
    inv_freq = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    if self.scaling == 'linear':
      return (inv_freq / self.factor).astype(np.float32)
    if self.scaling == 'llama3':
      return self._llama3(inv_freq.astype(np.float32))
    return inv_freq.astype(np.float32)

  def _llama3(self, inv_freq):
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = self.original_max_len / self.low_freq_factor
    high_freq_wavelen = self.original_max_len / self.high_freq_factor
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / self.factor, inv_freq)
    smooth = ((self.original_max_len / wavelen - self.low_freq_factor) /
              (self.high_freq_factor - self.low_freq_factor))
    smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_of(model_cfg, *, local: bool = False) -> Rope:
  """The Rope of `config.model` for global layers, or (`local`) for sliding-window layers:
  `model.rope_local_theta` > 0 gives those their own base and no scaling (Gemma 2/3)."""
  if local and model_cfg.get('rope_local_theta', 0):
    return Rope(theta=float(model_cfg.rope_local_theta))
  s = model_cfg.get('rope_scaling', None) or {'kind': 'none'}
  kind = s.get('kind', 'none')
  if kind not in ROPE_SCALINGS:
    raise ConfigError('model.rope_scaling.kind', kind, f'choose one of {list(ROPE_SCALINGS)}')
  if kind == 'none':
    return Rope(theta=float(model_cfg.rope_theta))
  if s['factor'] <= 0:
    raise ConfigError('model.rope_scaling.factor', s['factor'], 'must be > 0 (1: no scaling)')
  if kind == 'llama3' and not s['high_freq_factor'] > s['low_freq_factor'] > 0:
    raise ConfigError('model.rope_scaling.high_freq_factor', s['high_freq_factor'],
                      f"must exceed model.rope_scaling.low_freq_factor={s['low_freq_factor']} > 0 "
                      '(Llama 3.1: 4 and 1)')
  return Rope(theta=float(model_cfg.rope_theta), scaling=kind, factor=float(s['factor']),
              low_freq_factor=float(s['low_freq_factor']),
              high_freq_factor=float(s['high_freq_factor']),
              original_max_len=int(s['original_max_len']))


def apply_rope(x_BTHK, positions_BT, *, theta: float = 10_000.0, rope: Rope | None = None):
  """Rotates pairs (x[..., i], x[..., i + K/2]) by position-dependent angles (GPT-NeoX layout,
  HF's rotate_half). `rope` (frequency scaling) overrides `theta`."""
  k = x_BTHK.shape[-1]
  if k % 2:
    raise ConfigError('model.head_dim', k, 'RoPE needs an even head dimension')
  inv_freq_K2 = (rope or Rope(theta=theta)).inv_freq(k)
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
