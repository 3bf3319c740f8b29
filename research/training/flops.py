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

Recurrent mixers (`model.mixer`, research/layers/mixers.py) replace a layer's attention. Their
matmul parameters are their projections and out-projection (`MixerShape`); convolution taps,
norms and per-head vectors are not matmuls. Per token, per head, with K and V the state's
[K, V], C the chunk and c = (C + 1) / 2 the mean causal context inside a chunk (exactly: the
chunked attention pattern's, for any T), the chunkwise kernel (research/layers/recurrent.py's
`chunked`) does in its forward pass

  additive rule (linear attention, Mamba-2): 2 c (K + V) + 4 K V
      QK^T and scores x values within the chunk (causal, as attention), and the state's read
      Q S_0 and write K^T delta, 2 K V each;
  delta rule (Gated DeltaNet): the above + 2 (c - 1) (2K + V) + 2 K V
      KK^T (strictly causal: c - 1 keys), the triangular solve for U and W (c - 1
      multiply-adds per row and column, V + K columns) and W S_0. These are model FLOPs: the
      kernel inverts I + A by blocks (`recurrent.unit_lower_inverse`, 2 (C^2 - 1) / 3 per
      token and head) and applies the inverse as a dense C x C matmul, as a block-sparse
      kernel computes whole tiles.

x 3 for forward and backward, as everywhere here; a bidirectional stack (encoder) runs it in
both directions. The short causal convolution adds 6 x width x channels per token (2 per
multiply-add, x 3): like a matmul's 6 per weight, since a depthwise tap is a weight used once
per token. Linear attention's values carry one extra column (the normaliser), so its V is
head_dim + 1; Mamba-2's K is state_dim, V is expand x d_model / heads, and the kernel reads
B and C per head (a grouped kernel could share C B^T across heads; this counts what the kernel
computes). Element-wise work (decay masks, feature maps, gates, norms) is not counted, as the
softmax is not. XLA's cost analysis of one chunk of `chunked` (tests/training/test_flops.py) is
1.35x this for the additive rule (it counts the full C x C squares, no causal halving, and
elementwise ops); 1.56x for the delta rule, with the inverse and its dense application.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from research.layers import attention as attention_lib
from research.layers import mixers as mixers_lib
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


@dataclasses.dataclass(frozen=True)
class MixerShape:
  """The widths of one recurrent mixer layer, as research/layers/mixers.py builds it. Widths
  come per head and shared by all heads, so a tensor-parallel shard is `replace(heads=...)`."""
  heads: int
  head_dim: int  # per-head width of the projections and the out-projection's input
  key_dim: int  # K of the per-head state [K, V] (Mamba-2: state_dim)
  value_dim: int  # V (linear attention: head_dim + 1, the normaliser's column of ones)
  proj_per_head: int  # in-projection output columns per head
  proj_shared: int  # ... shared by the heads (Mamba-2's B and C)
  conv_per_head: int  # short-convolution channels per head (0: no convolution)
  conv_shared: int
  convs: int  # convolution modules (each caches its own window's segment ids)
  delta: bool  # the delta rule (Gated DeltaNet) rather than the additive one

  @property
  def projections(self) -> int:
    return self.heads * self.proj_per_head + self.proj_shared

  @property
  def conv_channels(self) -> int:
    return self.heads * self.conv_per_head + self.conv_shared


def mixer_shape(cfg: TransformerConfig, kind: str) -> MixerShape:
  """`kind`'s widths under `cfg` (a recurrent kind of research.layers.mixers.KINDS)."""
  mix, h = cfg.mixer, cfg.num_heads
  k = mixers_lib.head_dim_of(kind, mix, d_model=cfg.d_model, num_heads=h,
                             head_dim=cfg.head_dim)
  if kind == 'linear_attention':  # query, key, value; no convolution
    return MixerShape(h, k, k, k + 1, proj_per_head=3 * k, proj_shared=0, conv_per_head=0,
                      conv_shared=0, convs=0, delta=False)
  if kind == 'mamba2':  # gate z and x [H, P], dt [H], B and C [2, N]; convolutions on x, B, C
    n = mix.state_dim
    return MixerShape(h, k, n, k, proj_per_head=2 * k + 1, proj_shared=2 * n,
                      conv_per_head=k, conv_shared=2 * n, convs=2, delta=False)
  if kind == 'gated_deltanet':  # query, key, value, gate [H, K], beta, dt [H]; conv on q, k, v
    return MixerShape(h, k, k, k, proj_per_head=4 * k + 2, proj_shared=0,
                      conv_per_head=3 * k, conv_shared=0, convs=3, delta=True)
  raise ValueError(f'not a recurrent mixer: {kind!r}')


def mixer_params(cfg: TransformerConfig, kind: str) -> int:
  """Matmul parameters of one layer's sequence mixer: attention's four projections, or a
  recurrent mixer's in-projections and out-projection."""
  if kind == 'attention':
    return _layer_params(cfg)[0]
  shape = mixer_shape(cfg, kind)
  return cfg.d_model * (shape.projections + shape.heads * shape.head_dim)


def matmul_params(cfg: TransformerConfig) -> int:
  """Parameters that take part in a matmul per token: each layer's mixer (attention or
  recurrent), MLP (active experts only for MoE layers) and the unembedding."""
  _, mlp = _layer_params(cfg)
  mixing = sum(mixer_params(cfg, kind) for kind in cfg.mixer.layer_kinds(cfg.num_layers))
  moe_layers = sum(cfg.moe.is_moe_layer(i) for i in range(cfg.num_layers))
  return int(mixing + (cfg.num_layers - moe_layers) * mlp +
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
  """Mean attended keys of each self-attention layer, from its pattern (`model.attention`);
  0 for a recurrent layer (`model.mixer`), which attends to no keys (`recurrent_flops`)."""
  n = cfg.num_layers if num_layers is None else num_layers
  return [attention_context(seq_len, causal=causal, pattern=p) if kind == 'attention' else 0.0
          for p, kind in zip(cfg.attention.layer_patterns(n), cfg.mixer.layer_kinds(n))]


def kernel_flops(shape: MixerShape, context: float) -> float:
  """Forward FLOPs per token of the chunkwise kernel over all heads, at a mean within-chunk
  causal `context` (module docstring)."""
  k, v, c = shape.key_dim, shape.value_dim, context
  per_head = 2 * c * (k + v) + 4 * k * v  # intra-chunk QK^T and scores x values; state I/O
  if shape.delta:
    per_head += 2 * (c - 1) * (2 * k + v) + 2 * k * v  # KK^T, the solve for U and W; W S_0
  return shape.heads * per_head


def recurrent_flops(cfg: TransformerConfig, kind: str, seq_len: int, *,
                    causal: bool = True) -> float:
  """Training FLOPs per token of one recurrent layer's sequence mixing (its matmuls are in
  `matmul_params`): the short convolution and the kernel, x 3 for forward + backward; a
  bidirectional layer runs the kernel both ways over one convolution."""
  shape = mixer_shape(cfg, kind)
  chunk = patterns_lib.Pattern('chunked', chunk=cfg.mixer.chunk_size)
  context = patterns_lib.visible_keys(chunk, seq_len, causal=True)
  conv = 2 * cfg.mixer.conv_width * shape.conv_channels
  return 3 * (conv + kernel_flops(shape, context) * (1 if causal else 2))


def _recurrent_flops(cfg: TransformerConfig, seq_len: int, *, causal: bool,
                     num_layers: int) -> float:
  """Sum of `recurrent_flops` over a stack's recurrent layers (0 when all are attention)."""
  return sum(recurrent_flops(cfg, kind, seq_len, causal=causal)
             for kind in cfg.mixer.layer_kinds(num_layers) if kind != 'attention')


def flops_per_token(cfg: TransformerConfig, seq_len: int, *, causal: bool = True,
                    window: int | None = None) -> float:
  """Training FLOPs (forward + backward) per token. `window` (a causal sliding window for
  every attention layer) overrides the config's attention patterns."""
  if window is not None:
    attention_layers = cfg.mixer.layer_kinds(cfg.num_layers).count('attention')
    attended = attention_layers * attention_context(seq_len, causal=causal, window=window)
  else:
    attended = sum(layer_contexts(cfg, seq_len, causal=causal))
  attn_flops = 12 * cfg.num_heads * cfg.head_dim * attended
  mixing = _recurrent_flops(cfg, seq_len, causal=causal, num_layers=cfg.num_layers)
  return 6 * matmul_params(cfg) + attn_flops + mixing


def encoder_decoder_flops(cfg: TransformerConfig, inputs_len: int, targets_len: int) -> float:
  """Training FLOPs of one (inputs, targets) example: the encoder over S input tokens, the decoder
  (self-attention, cross-attention to all S, MLP, unembedding) over T target tokens."""
  attn, mlp = _layer_params(cfg)
  enc_layers = cfg.encoder_layers or cfg.num_layers
  dec_layers = cfg.decoder_layers or cfg.num_layers
  s, t, hk = inputs_len, targets_len, cfg.num_heads * cfg.head_dim
  mixing = lambda n: sum(mixer_params(cfg, kind) for kind in cfg.mixer.layer_kinds(n))
  matmuls = (s * (mixing(enc_layers) + enc_layers * mlp) +
             t * (mixing(dec_layers) + dec_layers * (attn + mlp) + cfg.vocab_size * cfg.d_model))
  # Self-attention by each layer's pattern (full: S^2 and T(T+1)/2); cross-attention sees all S.
  attention = (s * sum(layer_contexts(cfg, s, causal=False, num_layers=enc_layers)) +
               t * sum(layer_contexts(cfg, t, causal=True, num_layers=dec_layers)) +
               dec_layers * t * s)
  recurrent = (s * _recurrent_flops(cfg, s, causal=False, num_layers=enc_layers) +
               t * _recurrent_flops(cfg, t, causal=True, num_layers=dec_layers))
  return 6 * matmuls + 12 * hk * attention + recurrent


def cache_bytes(cfg: TransformerConfig, batch: int, length: int) -> int:
  """Bytes of a decoder's decoding cache (research.inference.decoding.init_cache) for `batch`
  rows of up to `length` tokens: what each decoded token reads and writes besides the weights.

  Attention layers: keys and values, 2 x B x slots x G x K in the compute dtype, and each slot's
  segment id and token index (int32); slots = length, or min(length, W) for a causal sliding
  window (chunk) of W, which rolls. Recurrent layers, independent of length: the float32 state
  B x H x K x V and its row's segment id, and each convolution's last width - 1 inputs (compute
  dtype) with their segment ids."""
  a = jnp.dtype(cfg.dtype).itemsize
  total = 0
  for i, kind in enumerate(cfg.mixer.layer_kinds(cfg.num_layers)):
    if kind == 'attention':
      span = attention_lib.rolling_span(cfg.attention.layer_pattern(i))
      slots = min(span, length) if span else length
      kv = 2 * cfg.num_kv_heads * cfg.head_dim * a
      total += batch * slots * (kv + 4 + 4) + 4  # + the write index, a scalar
    else:
      shape = mixer_shape(cfg, kind)
      window = cfg.mixer.conv_width - 1
      total += batch * (shape.heads * shape.key_dim * shape.value_dim * 4 + 4)
      if window:
        total += batch * window * (shape.conv_channels * a + 4 * shape.convs)
  return total


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
