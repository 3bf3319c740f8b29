"""FLOP accounting shared by MFU logging, the planner and the scaling-law module.

FLOPs per token = 6 x matmul parameters (unembedding included; embedding lookups are not
matmuls) + 12 x layers x (heads x head_dim) x mean attended keys. The 6 counts forward (2) and
backward (4) FLOPs per multiply-add; attention has two matmuls (QK^T and PV), hence 12. The mean
attended keys is (T+1)/2 for causal masks, T for bidirectional ones and about W for a window of
W, so a causal layer costs 6 x d_model x T per token: DESIGN.md's "6 x layers x d_model x
context, halved for causal masks" (PaLM's 12·L·H·Q·T before halving).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from research.models.transformer import TransformerConfig

# Dense bf16 peak FLOP/s per chip (DESIGN.md).
PEAK_FLOPS = {
    'h100': 989e12, 'h200': 989e12, 'a100': 312e12,
    'tpu v4': 275e12, 'tpu v5 lite': 197e12, 'tpu v5e': 197e12, 'tpu v5p': 459e12,
    'tpu v6 lite': 918e12, 'tpu v6e': 918e12,
}


def matmul_params(cfg: TransformerConfig) -> int:
  """Parameters that take part in a matmul per token: attention, MLP and the unembedding."""
  d, h, g, k = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  attn = d * (h * k) * 2 + d * (g * k) * 2  # query and output; key and value
  mlp = d * cfg.d_ff * (3 if cfg.activation in ('swiglu', 'geglu') else 2)
  return cfg.num_layers * (attn + mlp) + cfg.vocab_size * d


def attention_context(seq_len: int, *, causal: bool = True, window: int | None = None) -> float:
  """Keys each query attends to, on average over a sequence of `seq_len`."""
  if window is not None and window < seq_len:
    # Causal sliding window of W keys: the first W queries see 1..W, the rest see W.
    if causal:
      return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len
    return float(window)
  return (seq_len + 1) / 2 if causal else float(seq_len)


def flops_per_token(cfg: TransformerConfig, seq_len: int, *, causal: bool = True,
                    window: int | None = None) -> float:
  """Training FLOPs (forward + backward) per token."""
  attended = attention_context(seq_len, causal=causal, window=window)
  attn_flops = 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * attended * 2
  return 6 * matmul_params(cfg) + attn_flops


def flops_6nd(num_params: float, tokens: float) -> float:
  """Kaplan's approximation C = 6ND."""
  return 6.0 * num_params * tokens


def device_peak_flops(device=None) -> float | None:
  """Peak dense bf16 FLOP/s of one device, or None where unknown (CPU)."""
  device = device or jax.devices()[0]
  kind = device.device_kind.lower()
  for name, peak in PEAK_FLOPS.items():
    if name in kind:
      return peak
  return None


@functools.lru_cache(maxsize=None)
def measured_matmul_peak(n: int = 1024, repeats: int = 4) -> float:
  """FLOP/s of a large float32 matmul on this device: the ceiling MFU is taken against on CPU."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = f(a)
  out.block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def peak_flops() -> tuple[float, str]:
  """(peak FLOP/s per device, where it came from): published bf16 peaks, else measured (CPU)."""
  peak = device_peak_flops()
  if peak is not None:
    return peak, 'published_bf16'
  return measured_matmul_peak(), 'measured_f32_matmul'
