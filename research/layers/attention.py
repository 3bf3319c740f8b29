"""Multi-head and grouped-query attention: masks, patterns, kernels, and a KV cache for decoding.

Heads H share G key/value heads (G = H: multi-head; G = 1: multi-query; else grouped-query).

Masks. A model hands its attention a `MaskSpec`: segment ids and token indices of the queries and
keys, whether the stack is causal, and the prefix-LM prefix; each implementation builds only the
part of the mask it needs, so that a sliding-window layer never holds a [B, T, T] array. Packed
examples never see each other (segment ids; 0 is padding) and a prefix attends bidirectionally
within itself. A boolean mask_BTS (True = may attend) is still accepted (cross-attention, tests).

Patterns (research/layers/patterns.py) restrict self-attention per layer: full, sliding window,
Longformer (window + global tokens), BigBird (block-sparse), chunked.

Implementations (`model.attention.implementation`):
  xla        dense scores and mask in einsums: the reference (and, for sparse patterns, the
             mask-only control: full cost, masked). Quadratic in length.
  blockwise  block-sparse XLA (research/layers/blockwise.py): only the key blocks a pattern can
             reach; linear in length for windowed and block-sparse patterns; any backend. Full
             layers run the xla path (no block to skip).
  cudnn      cuDNN flash attention (GPU, bf16/fp16): full causal/bidirectional, and causal sliding
             windows through local_window_size=(W-1, 0). Packed segments add a [B, T, T] mask.
  splash     Pallas splash attention (TPU): full, sliding, Longformer and chunked masks with
             segment ids; not BigBird, prefixes or biases.
  auto       per layer: full -> cuDNN on GPU in half precision, else xla; sparse -> cuDNN for
             causal sliding windows on GPU in half precision, splash on TPU where it applies,
             else blockwise. Never cuDNN or splash on CPU.

Context parallelism. When the ambient mesh's `context` axis is larger than 1, training and
evaluation self-attention runs research/layers/context_parallel.py's kernel over the sharded
sequence (`model.attention.context_strategy`: all-gather or ring), whatever the implementation;
decoding and cross-attention do not.

Decoding. With `decode=True` self-attention keys and values go to a 'cache' collection, each
slot with the segment id (0: empty or padding) and token index of its token, so the cache masks
left-padded prompts for every later query and applies causality and patterns per row. Causal
sliding-window and chunked layers keep a rolling cache of W (or chunk) slots, written at slot
mod W, so memory stays constant in the generated length; other layers keep one slot per token.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from research.errors import ConfigError
from research.layers import blockwise
from research.layers import context_parallel
from research.layers import peft as peft_lib
from research.layers import patterns as patterns_lib
from research.layers import norms
from research.layers import positions as positions_lib
from research.layers.softcap import soft_cap

IMPLEMENTATIONS = ('auto', 'xla', 'blockwise', 'cudnn', 'splash')
_NEG_INF = -1e30  # finite, so fully masked rows (padding) give a uniform, not NaN, softmax
_FIELD = 'model.attention.implementation'
_FULL = patterns_lib.Pattern()
# Attention probabilities are sown here when this collection is mutable (see attention_maps).
PROBS_COLLECTION = 'attention_probs'


def _half(dtype) -> bool:
  return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def splash_available() -> bool:
  """Whether the Pallas TPU splash-attention kernels import here."""
  try:
    from jax.experimental.pallas.ops.tpu import splash_attention  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def supports(impl: str, pattern: patterns_lib.Pattern, *, causal: bool = True,
             prefix: bool = False, bias: bool = False, softcap: bool = False) -> bool:
  """Whether implementation `impl` computes `pattern` exactly in this setting (`softcap`:
  soft-capped scores, which only the XLA paths compute)."""
  if impl in ('xla', 'blockwise'):
    return True
  if softcap:
    return False
  if impl == 'cudnn':
    return pattern.is_full or (pattern.kind == 'sliding' and causal and not prefix and not bias)
  if impl == 'splash':
    return pattern.kind != 'bigbird' and not prefix and not bias
  return False


def resolve_implementation(name: str, dtype, pattern: patterns_lib.Pattern | None = None, *,
                           causal: bool = True, prefix: bool = False, bias: bool = False,
                           softcap: bool = False, backend: str | None = None) -> str:
  """The implementation a layer runs: `name`, or for 'auto' the fastest that applies here.

  'auto': full attention is cuDNN flash attention on GPU in half precision and XLA elsewhere (as
  always); a sparse pattern is cuDNN for causal sliding windows on GPU in half precision, splash
  on TPU (not BigBird, prefixes or biases), else blockwise. An explicit name that cannot compute
  the layer is a ConfigError.
  """
  if name not in IMPLEMENTATIONS:
    raise ConfigError(_FIELD, name, f'choose one of {list(IMPLEMENTATIONS)}')
  pattern = pattern or _FULL
  backend = backend or jax.default_backend()
  kw = dict(causal=causal, prefix=prefix, bias=bias, softcap=softcap)
  if name != 'auto':
    if not supports(name, pattern, **kw):
      raise ConfigError(_FIELD, name, f'cannot compute the {pattern.describe()} pattern '
                        f'({"causal" if causal else "bidirectional"}'
                        f'{", prefix LM" if prefix else ""}{", with a bias" if bias else ""}'
                        f'{", soft-capped" if softcap else ""}): '
                        "use 'auto' or 'blockwise'")
    return name
  gpu_half = backend == 'gpu' and _half(dtype)
  if pattern.is_full:
    return 'cudnn' if gpu_half and supports('cudnn', pattern, **kw) else 'xla'
  if gpu_half and supports('cudnn', pattern, **kw):
    return 'cudnn'
  if backend == 'tpu' and splash_available() and supports('splash', pattern, **kw):
    return 'splash'
  return 'blockwise'


@flax.struct.dataclass
class MaskSpec:
  """What a self-attention mask is made of, without the [B, T, S] array.

  q_segment_ids_BT / k_segment_ids_BS: equal ids may attend (0 is padding); q_index_BT /
  k_index_BS: token indices in the row (causality and patterns); prefix_BT: prefix-LM tokens
  that also see later prefix tokens (causal only; None: none); causal: a static flag.
  """
  q_segment_ids_BT: jax.Array
  k_segment_ids_BS: jax.Array
  q_index_BT: jax.Array
  k_index_BS: jax.Array
  prefix_BT: Any = None
  causal: bool = flax.struct.field(pytree_node=False, default=True)

  @classmethod
  def self_attention(cls, segment_ids_BT, *, causal: bool, prefix_BT=None) -> 'MaskSpec':
    """Queries and keys are the row's tokens 0..T-1."""
    b, t = segment_ids_BT.shape
    index_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return cls(segment_ids_BT, segment_ids_BT, index_BT, index_BT, prefix_BT, causal=causal)

  def dense(self, pattern: patterns_lib.Pattern | None = None):
    """Boolean mask_BTS: the base mask, AND the pattern's predicate (the reference)."""
    mask_BTS = make_mask(self.q_segment_ids_BT, self.k_segment_ids_BS, self.q_index_BT,
                         self.k_index_BS, causal=self.causal, bidirectional_q_BT=self.prefix_BT)
    if pattern is not None and not pattern.is_full:
      mask_BTS &= patterns_lib.allowed(pattern, self.q_index_BT[:, :, None],
                                       self.k_index_BS[:, None, :], causal=self.causal,
                                       length=self.k_index_BS.shape[1])
    return mask_BTS


def make_mask(segment_ids_q_BT, segment_ids_k_BS, q_index_BT, k_index_BS, *, causal: bool,
              bidirectional_q_BT=None):
  """Boolean mask_BTS: same segment, and (if causal) key index <= query index.

  `bidirectional_q_BT` marks queries (a prefix-LM prefix) that may also see later keys of their
  own prefix; those keys must be marked too, so it is applied to both sides.
  """
  mask_BTS = segment_ids_q_BT[:, :, None] == segment_ids_k_BS[:, None, :]
  if causal:
    causal_BTS = k_index_BS[:, None, :] <= q_index_BT[:, :, None]
    if bidirectional_q_BT is not None:
      both_in_prefix = bidirectional_q_BT[:, :, None] & bidirectional_q_BT[:, None, :]
      causal_BTS = causal_BTS | both_in_prefix
    mask_BTS = mask_BTS & causal_BTS
  return mask_BTS


def _probs_BGRTS(q_BTHK, k_BSGK, mask_BTS, bias_HTS=None, scale=None, softcap=None):
  """float32 softmax probabilities, heads split into (key/value group, heads per group)."""
  b, t, h, k = q_BTHK.shape
  g = k_BSGK.shape[2]
  q_BTGRK = q_BTHK.reshape(b, t, g, h // g, k)
  scores_BGRTS = jnp.einsum('btgrk,bsgk->bgrts', q_BTGRK, k_BSGK,
                            preferred_element_type=jnp.float32)
  scores_BGRTS *= k ** -0.5 if scale is None else scale
  scores_BGRTS = soft_cap(scores_BGRTS, softcap)
  if bias_HTS is not None:
    bias_BHTS = jnp.broadcast_to(bias_HTS, (b, h) + bias_HTS.shape[-2:]).astype(jnp.float32)
    scores_BGRTS += bias_BHTS.reshape(b, g, h // g, t, -1)
  if mask_BTS is not None:
    scores_BGRTS = jnp.where(mask_BTS[:, None, None], scores_BGRTS, _NEG_INF)
  return jax.nn.softmax(scores_BGRTS, axis=-1)


def attention_probs(q_BTHK, k_BSGK, mask_BTS, bias_HTS=None, scale=None, softcap=None):
  """float32 probs_BHTS: what each query head attends to (the weights attend_xla applies)."""
  probs_BGRTS = _probs_BGRTS(q_BTHK, k_BSGK, mask_BTS, bias_HTS, scale, softcap)
  b, g, r, t, s = probs_BGRTS.shape
  return probs_BGRTS.reshape(b, g * r, t, s)


def attend_xla(q_BTHK, k_BSGK, v_BSGK, mask_BTS, bias_HTS=None, scale=None, softcap=None):
  """Reference attention in einsums; scores and softmax in float32.

  `bias_HTS` (or [B, H, T, S]) is added to the scores (T5's relative position bias); `scale`
  multiplies them (default 1/sqrt(head_dim); T5 uses 1, folded into its initialisation);
  `softcap` soft-caps the scaled scores (Gemma 2), before the bias and the mask.
  """
  b, t, h, k = q_BTHK.shape
  probs_BGRTS = _probs_BGRTS(q_BTHK, k_BSGK, mask_BTS, bias_HTS, scale,
                             softcap).astype(v_BSGK.dtype)
  out_BTGRK = jnp.einsum('bgrts,bsgk->btgrk', probs_BGRTS, v_BSGK)
  return out_BTGRK.reshape(b, t, h, k)


def attend_cudnn(q_BTHK, k_BSGK, v_BSGK, mask_BTS, bias_HTS=None, scale=None):
  """cuDNN flash attention (GPU, bf16/fp16): never materialises the score matrix in HBM."""
  mask = None if mask_BTS is None else mask_BTS[:, None]
  bias = None if bias_HTS is None else jnp.broadcast_to(
      bias_HTS, (q_BTHK.shape[0], q_BTHK.shape[2]) + bias_HTS.shape[-2:]).astype(q_BTHK.dtype)
  return jax.nn.dot_product_attention(q_BTHK, k_BSGK, v_BSGK, bias=bias, mask=mask, scale=scale,
                                      implementation='cudnn')


def attend_cudnn_window(q_BTHK, k_BSGK, v_BSGK, window: int, *, segment_ids_BT=None, scale=None,
                        implementation: str = 'cudnn'):
  """Causal sliding window of `window` keys (the query and window - 1 before it) with cuDNN's
  sliding-window flash attention: local_window_size=(W-1, 0), linear in length.

  Packed segments (`segment_ids_BT`) add a dense [B, 1, T, T] segment mask, which cuDNN reads as
  a bias: quadratic memory, as for full attention on this path; None: one example per row.
  `implementation='xla'` runs jax's XLA version of the same call (to check the arguments on
  machines without cuDNN).
  """
  mask = None
  if segment_ids_BT is not None:
    mask = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
  return jax.nn.dot_product_attention(q_BTHK, k_BSGK, v_BSGK, mask=mask, scale=scale,
                                      is_causal=True, local_window_size=(window - 1, 0),
                                      implementation=implementation)


@functools.lru_cache(maxsize=32)
def _splash_kernel(pattern: patterns_lib.Pattern, length: int, causal: bool, heads: int,
                   block: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks  # pylint: disable=g-import-not-at-top

  class PatternMask(masks._ComputableMask):  # pylint: disable=protected-access
    """The pattern (and causality) as a mask function splash evaluates per block."""

    def __init__(self):
      self.key = (pattern, causal, length)

      def fn(q_ids, kv_ids):
        ok = patterns_lib.allowed(pattern, q_ids, kv_ids, causal=causal, length=length)
        return ok & (kv_ids <= q_ids) if causal else ok
      super().__init__(shape=(length, length), mask_function=fn)

    def __eq__(self, other):  # splash caches its block analysis by mask
      return isinstance(other, PatternMask) and self.key == other.key

    def __hash__(self):
      return hash((PatternMask, self.key))

  if pattern.is_full:
    mask = masks.CausalMask((length, length)) if causal else masks.FullMask((length, length))
  elif pattern.kind == 'sliding':
    w = pattern.window - 1
    mask = masks.LocalMask((length, length), (w, 0 if causal else w), 0)
  elif pattern.kind == 'chunked' and causal:
    mask = masks.ChunkedCausalMask((length, length), pattern.chunk)
  else:
    mask = PatternMask()
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  return splash.make_splash_mqa_single_device(masks.MultiHeadMask([mask] * heads),
                                              block_sizes=sizes, interpret=interpret)


def attend_splash(q_BTHK, k_BSGK, v_BSGK, pattern: patterns_lib.Pattern, *, segment_ids_BT,
                  causal: bool, scale=None, interpret: bool = False):
  """Pallas splash attention (TPU): the pattern as a static block-sparse mask, segment ids fused.

  Grouped-query heads run as multi-query kernels, one per key/value head. `interpret=True`
  runs the kernel in the Pallas interpreter (any backend; tests).
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  b, t, h, k = q_BTHK.shape
  g = k_BSGK.shape[2]
  block = next((c for c in (512, 256, 128) if t % c == 0), None)
  if block is None:
    raise ConfigError(_FIELD, 'splash', f'needs a length divisible by 128, got {t}: use '
                      "'blockwise'")
  kernel = _splash_kernel(pattern, t, causal, h // g, block, interpret)
  scale = k ** -0.5 if scale is None else scale
  q_BGRTK = (q_BTHK * scale).reshape(b, t, g, h // g, k).transpose(0, 2, 3, 1, 4)
  k_BGSK = k_BSGK.transpose(0, 2, 1, 3)
  v_BGSK = v_BSGK.transpose(0, 2, 1, 3)
  segment_ids_BT = segment_ids_BT.astype(jnp.int32)

  def one_row(q_GRTK, k_GSK, v_GSK, seg_T):
    ids = splash.SegmentIds(q=seg_T, kv=seg_T)
    return jax.vmap(lambda q_, k_, v_: kernel(q_, k_, v_, segment_ids=ids))(q_GRTK, k_GSK, v_GSK)

  out_BGRTK = jax.vmap(one_row)(q_BGRTK, k_BGSK, v_BGSK, segment_ids_BT)
  return out_BGRTK.transpose(0, 3, 1, 2, 4).reshape(b, t, h, k).astype(q_BTHK.dtype)


def attend(impl: str, q_BTHK, k_BSGK, v_BSGK, mask, pattern: patterns_lib.Pattern | None = None,
           bias_HTS=None, scale=None, softcap=None):
  """Self- or cross-attention by implementation name. `mask` is a MaskSpec, a boolean mask_BTS,
  or None (every key); a sparse `pattern` needs a MaskSpec, except on the xla path, where a
  dense mask is AND-ed with the pattern over row indices."""
  pattern = pattern or _FULL
  if not isinstance(mask, MaskSpec):
    if not pattern.is_full:
      if impl != 'xla':
        raise ValueError(f'the {impl} implementation of {pattern.describe()} needs a MaskSpec')
      t, s = q_BTHK.shape[1], k_BSGK.shape[1]
      allowed_TS = patterns_lib.allowed(pattern, jnp.arange(t)[:, None], jnp.arange(s)[None, :],
                                        causal=True, length=s)
      mask = allowed_TS[None] if mask is None else mask & allowed_TS[None]
    if impl == 'cudnn':
      return attend_cudnn(q_BTHK, k_BSGK, v_BSGK, mask, bias_HTS, scale)
    return attend_xla(q_BTHK, k_BSGK, v_BSGK, mask, bias_HTS, scale, softcap)
  if impl == 'xla' or (impl == 'blockwise' and pattern.is_full):
    # Full attention has no blocks to skip: gathering every block would only add copies.
    return attend_xla(q_BTHK, k_BSGK, v_BSGK, mask.dense(pattern), bias_HTS, scale, softcap)
  if impl == 'blockwise':
    return blockwise.attend_blockwise(q_BTHK, k_BSGK, v_BSGK, pattern,
                                      segment_ids_BT=mask.q_segment_ids_BT, causal=mask.causal,
                                      prefix_BT=mask.prefix_BT, bias_HTS=bias_HTS, scale=scale,
                                      softcap=softcap)
  if impl == 'cudnn':
    if pattern.is_full:
      return attend_cudnn(q_BTHK, k_BSGK, v_BSGK, mask.dense(), bias_HTS, scale)
    return attend_cudnn_window(q_BTHK, k_BSGK, v_BSGK, pattern.window,
                               segment_ids_BT=mask.q_segment_ids_BT, scale=scale)
  if impl == 'splash':
    return attend_splash(q_BTHK, k_BSGK, v_BSGK, pattern, segment_ids_BT=mask.q_segment_ids_BT,
                         causal=mask.causal, scale=scale)
  raise ConfigError(_FIELD, impl, f'choose one of {list(IMPLEMENTATIONS)}')


def rolling_span(pattern: patterns_lib.Pattern | None) -> int:
  """Cache slots a causal layer of `pattern` needs (0: one per position)."""
  if pattern is None:
    return 0
  if pattern.kind == 'sliding':
    return pattern.window
  if pattern.kind == 'chunked':
    return pattern.chunk
  return 0


class Attention(nn.Module):
  """Self- or cross-attention. With `decode=True` keys and values go to a cache.

  `pattern` (None: full) restricts self-attention; cross-attention ignores it.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  position: str = 'rope'
  rope_theta: float = 10_000.0
  rope: positions_lib.Rope | None = None  # base and frequency scaling; None: rope_theta
  implementation: str = 'auto'
  use_bias: bool = False
  qkv_bias: bool = False  # biases on the query, key and value projections only (Qwen2)
  qk_norm: str = ''  # a norm (research/layers/norms.py) over head_dim of queries, keys (Qwen3)
  norm_eps: float = 1e-6
  softcap: float = 0.0  # soft-capped scores (Gemma 2); 0: none
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  decode: bool = False
  scale: float | None = None  # score scale; None: 1/sqrt(head_dim)
  pattern: patterns_lib.Pattern | None = None
  peft: peft_lib.PeftConfig = peft_lib.PeftConfig()  # LoRA deltas on the projections
  # Over a context-sharded sequence (mesh.context > 1): the strategy and the kernel's tile.
  context_strategy: str = 'all_gather'
  context_block_size: int = 64

  def _proj(self, name, x_BTD, heads, axis_name):
    d = x_BTD.shape[-1]
    w_DHK = self.param(name, nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), ('embed', axis_name, 'head_dim')),
                       (d, heads, self.head_dim), jnp.float32)
    y_BTHK = jnp.einsum('btd,dhk->bthk', x_BTD, w_DHK.astype(self.dtype))
    delta_BTHK = peft_lib.lora_delta(self, self.peft, name, x_BTD, (d,), (heads, self.head_dim),
                                     self.dtype)
    if delta_BTHK is not None:
      y_BTHK += delta_BTHK
    if self.use_bias or self.qkv_bias:
      y_BTHK += self.param(name + '_bias', nn.with_logical_partitioning(
          nn.initializers.zeros, (axis_name, 'head_dim')), (heads, self.head_dim),
                           jnp.float32).astype(self.dtype)
    return y_BTHK

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask_BTS, kv_BSD=None, kv_positions_BS=None,
               bias_HTS=None):
    """Self-attention, or cross-attention to `kv_BSD` when given.

    `mask_BTS` is a MaskSpec, a boolean [B, T, S] mask, or None for every key; `bias_HTS` is
    added to the scores. In decode mode self-attention keys and values go to the cache, which
    masks itself; cross-attention (to encoder outputs computed once) needs no cache.
    """
    cross = kv_BSD is not None
    kv_BSD = x_BTD if kv_BSD is None else kv_BSD
    kv_positions_BS = positions_BT if kv_positions_BS is None else kv_positions_BS
    q_BTHK = self._proj('query', x_BTD, self.num_heads, 'heads')
    k_BSGK = self._proj('key', kv_BSD, self.num_kv_heads, 'kv_heads')
    v_BSGK = self._proj('value', kv_BSD, self.num_kv_heads, 'kv_heads')
    if self.qk_norm:  # per head, before RoPE
      q_BTHK = norms.make_norm(self.qk_norm, eps=self.norm_eps, dtype=self.dtype,
                               module_name='query_norm', axis='head_dim')(q_BTHK)
      k_BSGK = norms.make_norm(self.qk_norm, eps=self.norm_eps, dtype=self.dtype,
                               module_name='key_norm', axis='head_dim')(k_BSGK)
    if self.position == 'rope':
      rope = self.rope or positions_lib.Rope(theta=self.rope_theta)
      q_BTHK = positions_lib.apply_rope(q_BTHK, positions_BT, rope=rope)
      k_BSGK = positions_lib.apply_rope(k_BSGK, kv_positions_BS, rope=rope)
    q_BTHK = nn.with_logical_constraint(q_BTHK, ('batch', 'length', 'heads', 'head_dim'))
    k_BSGK = nn.with_logical_constraint(k_BSGK, ('batch', 'length', 'kv_heads', 'head_dim'))
    v_BSGK = nn.with_logical_constraint(v_BSGK, ('batch', 'length', 'kv_heads', 'head_dim'))
    q_BTHK = checkpoint_name(q_BTHK, 'query_proj')
    k_BSGK = checkpoint_name(k_BSGK, 'key_proj')
    v_BSGK = checkpoint_name(v_BSGK, 'value_proj')

    pattern = None if cross else self.pattern
    if self.decode and not cross:
      # One-token decode steps against a masked cache are XLA's case, not flash attention's.
      k_BSGK, v_BSGK, mask = self._update_cache(k_BSGK, v_BSGK, mask_BTS, bias_HTS is None)
      out_BTHK = attend_xla(q_BTHK, k_BSGK, v_BSGK, mask, bias_HTS, self.scale, self.softcap)
    elif not cross and isinstance(mask_BTS, MaskSpec) and context_parallel.context_size() > 1:
      out_BTHK = self._attend_context(q_BTHK, k_BSGK, v_BSGK, mask_BTS, pattern, bias_HTS)
    else:
      spec = mask_BTS if isinstance(mask_BTS, MaskSpec) else None
      impl = resolve_implementation(
          self.implementation, self.dtype, pattern,
          causal=True if spec is None else spec.causal,
          prefix=spec is not None and spec.prefix_BT is not None, bias=bias_HTS is not None,
          softcap=bool(self.softcap))
      if spec is None and impl not in ('xla', 'cudnn'):
        impl = 'xla'  # a dense mask (cross-attention, tests): the einsum path
      out_BTHK = attend(impl, q_BTHK, k_BSGK, v_BSGK, mask_BTS, pattern, bias_HTS, self.scale,
                        self.softcap)
      if self.is_mutable_collection(PROBS_COLLECTION) and not self.is_initializing():
        # Only when asked for (plots, notebooks): a dense [B, H, T, S] array per layer.
        dense = spec.dense(pattern) if spec is not None else mask_BTS
        self.sow(PROBS_COLLECTION, 'probs_BHTS',
                 attention_probs(q_BTHK, k_BSGK, dense, bias_HTS, self.scale, self.softcap))
    out_BTHK = checkpoint_name(out_BTHK, 'attention_out')

    w_out_HKD = self.param('out', nn.with_logical_partitioning(
        nn.initializers.normal(self.out_init_std), ('heads', 'head_dim', 'embed')),
                           (self.num_heads, self.head_dim, x_BTD.shape[-1]), jnp.float32)
    y_BTD = jnp.einsum('bthk,hkd->btd', out_BTHK, w_out_HKD.astype(self.dtype))
    delta_BTD = peft_lib.lora_delta(self, self.peft, 'out', out_BTHK, w_out_HKD.shape[:2],
                                    w_out_HKD.shape[2:], self.dtype)
    if delta_BTD is not None:
      y_BTD += delta_BTD
    if self.use_bias:
      y_BTD += self.param('out_bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   ('embed',)),
                          (x_BTD.shape[-1],), jnp.float32).astype(self.dtype)
    return y_BTD

  def _attend_context(self, q_BTHK, k_BSGK, v_BSGK, spec, pattern, bias_HTS):
    """Self-attention over a context-sharded sequence (research/layers/context_parallel.py)."""
    if bias_HTS is not None or self.softcap:
      raise ValueError('context parallelism supports neither score biases nor soft-capping')
    if self.is_mutable_collection(PROBS_COLLECTION) and not self.is_initializing():
      raise ValueError('attention maps are dense [B, H, T, S]: take them with mesh.context=1')
    return context_parallel.attend(q_BTHK, k_BSGK, v_BSGK, spec, pattern,
                                   strategy=self.context_strategy,
                                   block_size=self.context_block_size, scale=self.scale)

  def _update_cache(self, k_BLGK, v_BLGK, mask, may_roll: bool):
    """Writes L new keys/values; returns (keys, values, mask_BLS) for the L queries.

    The cache's length S is fixed by the `init` call (whose input length is the longest sequence
    to decode); on that call nothing is written. Next to each slot's key and value the cache
    keeps the segment id and token index of the token it holds (the key side of a MaskSpec), so
    that the mask of every later query comes from the cache: an empty slot has segment 0 and
    is never visible, and a left-padded prompt's padding (segment 0) is masked for good.
    Causality and the pattern read token indices, not slots, so each row of a left-padded
    batch is masked as if it were alone (chunk boundaries and global tokens included).

    `mask` is a MaskSpec whose query side describes the L new tokens (segment ids, 0 = padding;
    token indices), or None: every token is real and its index is its slot.

    Causal sliding-window (chunked) layers without a score bias keep a rolling cache of min(S, W)
    slots: the token of slot s lives in slot s mod W. Other layers keep S slots.
    """
    pattern = self.pattern or _FULL
    span = rolling_span(pattern) if may_roll else 0
    initialised = self.has_variable('cache', 'key')
    b, l = k_BLGK.shape[:2]
    slots = min(span, l) if span and not initialised else l
    key = self.variable('cache', 'key', jnp.zeros, (b, slots) + k_BLGK.shape[2:], k_BLGK.dtype)
    value = self.variable('cache', 'value', jnp.zeros, (b, slots) + v_BLGK.shape[2:],
                          v_BLGK.dtype)
    segment = self.variable('cache', 'segment_ids', jnp.zeros, (b, slots), jnp.int32)
    token_index = self.variable('cache', 'token_index', jnp.zeros, (b, slots), jnp.int32)
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    if not initialised:
      return k_BLGK, v_BLGK, None
    s = key.value.shape[1]
    start = index.value
    index.value = start + l
    q_segment_BL, q_index_BL = _decode_queries(mask, start, b, l)
    k_BLGK = k_BLGK.astype(key.value.dtype)
    v_BLGK = v_BLGK.astype(value.value.dtype)
    new = (k_BLGK, v_BLGK, q_segment_BL, q_index_BL)
    cached = (key, value, segment, token_index)
    if span:
      # Rolling: attend to the slots as they were (the last s tokens) and the L new ones, then
      # keep the last min(L, s) new ones.
      attended = [jnp.concatenate([c.value, x], axis=1) for c, x in zip(cached, new)]
      keep = min(l, s)
      slot_ids = jnp.mod(start + jnp.arange(l - keep, l, dtype=jnp.int32), s)
      for c, x in zip(cached, new):
        c.value = c.value.at[:, slot_ids].set(x[:, l - keep:])
    else:
      for c, x in zip(cached, new):
        c.value = jax.lax.dynamic_update_slice_in_dim(c.value, x, start, axis=1)
      attended = [c.value for c in cached]
    keys, values, k_segment_BS, k_index_BS = attended
    spec = MaskSpec(q_segment_BL, k_segment_BS, q_index_BL, k_index_BS, causal=True)
    return keys, values, spec.dense(pattern)


def _decode_queries(mask, start, b: int, l: int):
  """(segment ids, token indices) of L decode-mode queries: a MaskSpec's query side, or for
  None real tokens whose index is their slot (start + 0..L-1)."""
  if isinstance(mask, MaskSpec):
    return mask.q_segment_ids_BT.astype(jnp.int32), mask.q_index_BT.astype(jnp.int32)
  if mask is not None:
    raise ValueError('a decode-mode self-attention mask must be a MaskSpec or None (the cache '
                     'builds the dense mask)')
  index_BL = jnp.broadcast_to(start + jnp.arange(l, dtype=jnp.int32), (b, l))
  return jnp.ones((b, l), jnp.int32), index_BL
