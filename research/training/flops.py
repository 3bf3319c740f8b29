"""FLOP accounting shared by MFU logging, the planner and the scaling-law module.

FLOPs per token = 6 x matmul parameters (unembedding included; embedding lookups are not matmuls) +
12 x (heads x head_dim) x the sum over layers of their mean attended keys. The 6 counts forward (2)
and backward (4) FLOPs per multiply-add; attention has two matmuls (QK^T and PV), hence 12. The mean
attended keys is (T+1)/2 for causal masks and T for bidirectional ones, so a full causal layer costs
6 x d_model x T per token: the "6 x layers x d_model x context, halved for causal masks" of
docs/ARCHITECTURE.md (FLOP conventions), PaLM's 12·L·H·Q·T before halving. Sparse attention patterns
(`model.attention`, research/layers/patterns.py) count the keys each layer's pattern lets a query
see, exactly, on one unpacked row: about W for a causal window of W (the first queries see fewer),
2W - 1 for a bidirectional one, plus the global tokens (Longformer), the visible blocks (BigBird),
or the chunk (chunked). These are model FLOPs: a block-sparse kernel computes somewhat more (whole
tiles) and a masked dense one the full T.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from research.layers import patterns as patterns_lib
from research.models.transformer import TransformerConfig

# Dense bf16 peak FLOP/s per chip (docs/ARCHITECTURE.md, FLOP conventions).
PEAK_FLOPS = {
    'h100': 989e12, 'h200': 989e12, 'a100': 312e12,
    'tpu v4': 275e12, 'tpu v5 lite': 197e12, 'tpu v5e': 197e12, 'tpu v5p': 459e12,
    'tpu v6 lite': 918e12, 'tpu v6e': 918e12,
}


def _layer_params(cfg: TransformerConfig) -> tuple[int, int]:
  """Matmul parameters of one layer's attention and of its MLP."""
  d, h, g, k = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  attn = d * (h * k) * 2 + d * (g * k) * 2  # query and output; key and value
  mlp = d * cfg.d_ff * (3 if cfg.activation in ('swiglu', 'geglu') else 2)
  return attn, mlp


def _moe_active_mlp_params(cfg: TransformerConfig) -> float:
  """Matmul parameters one token uses in an MoE layer: its experts (top_k; on average
  capacity_factor x (top_k if capacity_per_choice else 1) for expert choice), the shared
  experts and the router. Dropped assignments are not subtracted."""
  m = cfg.moe
  expert = cfg.d_model * m.d_ff * (3 if cfg.activation in ('swiglu', 'geglu') else 2)
  active = m.top_k
  if m.router == 'expert_choice':
    active = m.capacity_factor * (m.top_k if m.capacity_per_choice else 1)
  return (active + m.num_shared_experts) * expert + cfg.d_model * m.num_experts


def matmul_params(cfg: TransformerConfig) -> int:
  """Parameters that take part in a matmul per token: attention, MLP (active experts only for
  MoE layers) and the unembedding."""
  attn, mlp = _layer_params(cfg)
  moe_layers = sum(cfg.moe.is_moe_layer(i) for i in range(cfg.num_layers))
  return int(cfg.num_layers * attn + (cfg.num_layers - moe_layers) * mlp +
             moe_layers * _moe_active_mlp_params(cfg) + cfg.vocab_size * cfg.d_model)


def attention_context(seq_len: int, *, causal: bool = True, window: int | None = None,
                      pattern: patterns_lib.Pattern | None = None) -> float:
  """Keys each query attends to, on average over a sequence of `seq_len`: full attention, a
  causal (or bidirectional: |i - j| < W) window of W keys, or any attention pattern."""
  if pattern is not None:
    return patterns_lib.visible_keys(pattern, seq_len, causal=causal)
  if window is not None and window < seq_len:
    if causal:  # the first W queries see 1..W, the rest see W
      return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len
    return patterns_lib.visible_keys(patterns_lib.Pattern('sliding', window=window), seq_len,
                                     causal=False)
  return (seq_len + 1) / 2 if causal else float(seq_len)


def layer_contexts(cfg: TransformerConfig, seq_len: int, *, causal: bool = True,
                   num_layers: int | None = None) -> list[float]:
  """Mean attended keys of each self-attention layer, from its pattern (`model.attention`)."""
  n = cfg.num_layers if num_layers is None else num_layers
  return [attention_context(seq_len, causal=causal, pattern=p)
          for p in cfg.attention.layer_patterns(n)]


def flops_per_token(cfg: TransformerConfig, seq_len: int, *, causal: bool = True,
                    window: int | None = None) -> float:
  """Training FLOPs (forward + backward) per token. `window` (a causal sliding window for
  every layer) overrides the config's attention patterns."""
  if window is not None:
    attended = cfg.num_layers * attention_context(seq_len, causal=causal, window=window)
  else:
    attended = sum(layer_contexts(cfg, seq_len, causal=causal))
  attn_flops = 12 * cfg.num_heads * cfg.head_dim * attended
  return 6 * matmul_params(cfg) + attn_flops


def encoder_decoder_flops(cfg: TransformerConfig, inputs_len: int, targets_len: int) -> float:
  """Training FLOPs of one (inputs, targets) example: the encoder over S input tokens, the decoder
  (self-attention, cross-attention to all S, MLP, unembedding) over T target tokens."""
  attn, mlp = _layer_params(cfg)
  enc_layers = cfg.encoder_layers or cfg.num_layers
  dec_layers = cfg.decoder_layers or cfg.num_layers
  s, t, hk = inputs_len, targets_len, cfg.num_heads * cfg.head_dim
  matmuls = s * enc_layers * (attn + mlp) + t * (dec_layers * (2 * attn + mlp) +
                                                 cfg.vocab_size * cfg.d_model)
  # Self-attention by each layer's pattern (full: S^2 and T(T+1)/2); cross-attention sees all S.
  attention = (s * sum(layer_contexts(cfg, s, causal=False, num_layers=enc_layers)) +
               t * sum(layer_contexts(cfg, t, causal=True, num_layers=dec_layers)) +
               dec_layers * t * s)
  return 6 * matmuls + 12 * hk * attention


def flops_per_step(cfg: TransformerConfig, config) -> float:
  """Training FLOPs of one global batch of `config`'s family and objective."""
  c = config
  if c.model.family == 'encoder_decoder':
    from research.objectives import span_corruption  # pylint: disable=g-import-not-at-top
    _, inputs_len, targets_len = span_corruption.lengths(c)
    return c.train.batch_size * encoder_decoder_flops(cfg, inputs_len, targets_len)
  per_token = flops_per_token(cfg, c.data.seq_len, causal=c.model.family != 'encoder')
  return c.train.batch_size * c.data.seq_len * per_token


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
