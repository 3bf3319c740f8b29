"""Multi-head and grouped-query attention with masks, RoPE and a KV cache for decoding.

Heads H share G key/value heads (G = H: multi-head; G = 1: multi-query; else grouped-query).
Masks are boolean [B, T, S] (True = may attend), built from segment ids and token indices so
that packed examples never see each other and cached decoding masks empty cache slots.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from research.errors import ConfigError
from research.layers import positions as positions_lib

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn')
_NEG_INF = -1e30  # finite, so fully masked rows (padding) give a uniform, not NaN, softmax


def resolve_implementation(name: str, dtype) -> str:
  """'auto' picks cuDNN flash attention on GPU for half-precision compute, XLA elsewhere."""
  if name not in IMPLEMENTATIONS:
    raise ConfigError('model.attention_impl', name, f'choose one of {list(IMPLEMENTATIONS)}')
  if name != 'auto':
    return name
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return 'cudnn' if jax.default_backend() == 'gpu' and half else 'xla'


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


def attend_xla(q_BTHK, k_BSGK, v_BSGK, mask_BTS, bias_HTS=None, scale=None):
  """Reference attention in einsums; scores and softmax in float32.

  `bias_HTS` (or [B, H, T, S]) is added to the scores (T5's relative position bias); `scale`
  multiplies them (default 1/sqrt(head_dim); T5 uses 1, folded into its initialisation).
  """
  b, t, h, k = q_BTHK.shape
  g = k_BSGK.shape[2]
  q_BTGRK = q_BTHK.reshape(b, t, g, h // g, k)
  scores_BGRTS = jnp.einsum('btgrk,bsgk->bgrts', q_BTGRK, k_BSGK,
                            preferred_element_type=jnp.float32)
  scores_BGRTS *= k ** -0.5 if scale is None else scale
  if bias_HTS is not None:
    bias_BHTS = jnp.broadcast_to(bias_HTS, (b, h) + bias_HTS.shape[-2:]).astype(jnp.float32)
    scores_BGRTS += bias_BHTS.reshape(b, g, h // g, t, -1)
  if mask_BTS is not None:
    scores_BGRTS = jnp.where(mask_BTS[:, None, None], scores_BGRTS, _NEG_INF)
  probs_BGRTS = jax.nn.softmax(scores_BGRTS, axis=-1).astype(v_BSGK.dtype)
  out_BTGRK = jnp.einsum('bgrts,bsgk->btgrk', probs_BGRTS, v_BSGK)
  return out_BTGRK.reshape(b, t, h, k)


def attend_cudnn(q_BTHK, k_BSGK, v_BSGK, mask_BTS, bias_HTS=None, scale=None):
  """cuDNN flash attention (GPU, bf16/fp16): never materialises the score matrix in HBM."""
  mask = None if mask_BTS is None else mask_BTS[:, None]
  bias = None if bias_HTS is None else jnp.broadcast_to(
      bias_HTS, (q_BTHK.shape[0], q_BTHK.shape[2]) + bias_HTS.shape[-2:]).astype(q_BTHK.dtype)
  return jax.nn.dot_product_attention(q_BTHK, k_BSGK, v_BSGK, bias=bias, mask=mask, scale=scale,
                                      implementation='cudnn')


ATTEND = {'xla': attend_xla, 'cudnn': attend_cudnn}


class Attention(nn.Module):
  """Self- or cross-attention. With `decode=True` keys and values go to a cache."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  position: str = 'rope'
  rope_theta: float = 10_000.0
  implementation: str = 'auto'
  use_bias: bool = False
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  decode: bool = False
  scale: float | None = None  # score scale; None: 1/sqrt(head_dim)

  def _proj(self, name, x_BTD, heads, axis_name):
    d = x_BTD.shape[-1]
    w_DHK = self.param(name, nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), ('embed', axis_name, 'head_dim')),
                       (d, heads, self.head_dim), jnp.float32)
    y_BTHK = jnp.einsum('btd,dhk->bthk', x_BTD, w_DHK.astype(self.dtype))
    if self.use_bias:
      y_BTHK += self.param(name + '_bias', nn.with_logical_partitioning(
          nn.initializers.zeros, (axis_name, 'head_dim')), (heads, self.head_dim),
                           jnp.float32).astype(self.dtype)
    return y_BTHK

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask_BTS, kv_BSD=None, kv_positions_BS=None,
               bias_HTS=None):
    """Self-attention, or cross-attention to `kv_BSD` when given.

    `mask_BTS` is boolean, or None for full attention; `bias_HTS` is added to the scores. In
    decode mode self-attention keys and values go to the cache, which masks itself; cross-
    attention (to encoder outputs computed once) needs no cache.
    """
    cross = kv_BSD is not None
    kv_BSD = x_BTD if kv_BSD is None else kv_BSD
    kv_positions_BS = positions_BT if kv_positions_BS is None else kv_positions_BS
    q_BTHK = self._proj('query', x_BTD, self.num_heads, 'heads')
    k_BSGK = self._proj('key', kv_BSD, self.num_kv_heads, 'kv_heads')
    v_BSGK = self._proj('value', kv_BSD, self.num_kv_heads, 'kv_heads')
    if self.position == 'rope':
      q_BTHK = positions_lib.apply_rope(q_BTHK, positions_BT, theta=self.rope_theta)
      k_BSGK = positions_lib.apply_rope(k_BSGK, kv_positions_BS, theta=self.rope_theta)
    q_BTHK = nn.with_logical_constraint(q_BTHK, ('batch', 'length', 'heads', 'head_dim'))
    k_BSGK = nn.with_logical_constraint(k_BSGK, ('batch', 'length', 'kv_heads', 'head_dim'))
    v_BSGK = nn.with_logical_constraint(v_BSGK, ('batch', 'length', 'kv_heads', 'head_dim'))
    q_BTHK = checkpoint_name(q_BTHK, 'query_proj')
    k_BSGK = checkpoint_name(k_BSGK, 'key_proj')
    v_BSGK = checkpoint_name(v_BSGK, 'value_proj')

    if self.decode and not cross:
      k_BSGK, v_BSGK, mask_BTS = self._update_cache(k_BSGK, v_BSGK, mask_BTS)

    # One-token decode steps against a masked cache are XLA's case, not flash attention's.
    impl = 'xla' if self.decode else resolve_implementation(self.implementation, self.dtype)
    out_BTHK = ATTEND[impl](q_BTHK, k_BSGK, v_BSGK, mask_BTS, bias_HTS, self.scale)
    out_BTHK = checkpoint_name(out_BTHK, 'attention_out')

    w_out_HKD = self.param('out', nn.with_logical_partitioning(
        nn.initializers.normal(self.out_init_std), ('heads', 'head_dim', 'embed')),
                           (self.num_heads, self.head_dim, x_BTD.shape[-1]), jnp.float32)
    y_BTD = jnp.einsum('bthk,hkd->btd', out_BTHK, w_out_HKD.astype(self.dtype))
    if self.use_bias:
      y_BTD += self.param('out_bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   ('embed',)),
                          (x_BTD.shape[-1],), jnp.float32).astype(self.dtype)
    return y_BTD

  def _update_cache(self, k_BLGK, v_BLGK, mask_BLS):
    """Writes L new keys/values at the cache index; queries see every filled slot up to theirs.

    The cache's length S is fixed by the `init` call (whose input length is the longest sequence
    to decode); on that call nothing is written. `mask_BLS`, if given, must span the S slots.
    """
    initialised = self.has_variable('cache', 'key')
    key = self.variable('cache', 'key', jnp.zeros, k_BLGK.shape, k_BLGK.dtype)
    value = self.variable('cache', 'value', jnp.zeros, v_BLGK.shape, v_BLGK.dtype)
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    if not initialised:
      return k_BLGK, v_BLGK, mask_BLS
    b, l = k_BLGK.shape[:2]
    s = key.value.shape[1]
    start = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k_BLGK.astype(key.value.dtype),
                                             (0, start, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_BLGK.astype(value.value.dtype),
                                               (0, start, 0, 0))
    index.value = start + l
    q_index_BL = jnp.broadcast_to(start + jnp.arange(l), (b, l))
    causal_BLS = jnp.arange(s)[None, None, :] <= q_index_BL[:, :, None]
    mask_BLS = causal_BLS if mask_BLS is None else causal_BLS & mask_BLS
    return key.value, value.value, mask_BLS
