"""Soft-capping (Gemma 2): cap x tanh(x / cap) bounds attention scores or logits to (-cap, cap)
smoothly, keeping small values almost unchanged. A cap of 0 (or None) leaves x as it is."""

from __future__ import annotations

import jax.numpy as jnp


def soft_cap(x, cap: float | None):
  if not cap:
    return x
  return cap * jnp.tanh(x / cap)
