"""Recurrent sequence mixers: linear attention, Mamba-2 and Gated DeltaNet, by name (`model.mixer`).

Each layer of a stack mixes its tokens with softmax attention or with one of these, chosen
cyclically from `model.mixer.pattern` like attention patterns: 'gated_deltanet*3,attention' is
three Gated DeltaNet layers to one attention layer (Qwen3-Next's 3:1), 'mamba2*7,attention'
Jamba's 7:1. A recurrent mixer keeps a constant-size state per head: linear in length to train
(the chunkwise form of research/layers/recurrent.py), constant memory per token to decode (the
step form, with the state in the 'cache' collection).

  linear_attention  Katharopoulos et al. 2020: phi(q) (sum_i phi(k_i) v_i^T), normalised by
                    phi(q) . sum_i phi(k_i); phi by `feature_map` ('elu': elu + 1, 'relu').
                    No decay, no convolution.
  mamba2            Dao & Gu 2024 (SSD): in-projections z, x, B, C, dt; a short causal
                    convolution and SiLU on x, B and C; per-head decay exp(dt A), input dt B x,
                    read C, skip D x; a gated RMSNorm, norm(y * silu(z)), and the out-projection.
                    Heads = model.num_heads over d_inner = `expand` x d_model; one group of B and
                    C with `state_dim` entries.
  gated_deltanet    Yang, Kautz & Hatamizadeh 2024: q, k, v projections through a short
                    convolution and SiLU, L2-normalised q and k (q also by 1/sqrt(K)); writes by
                    the delta rule with strength beta = sigmoid(.) and Mamba-2's decay; a gated
                    RMSNorm, norm(o) * silu(g), and the out-projection. K = V = head_dim.

Segments: packed examples (segment ids) reset the state and the convolution window, so they
never see each other. Bidirectional stacks (encoders): the forward and the reversed recurrence
over the same projections, summed (Caduceus's weight-tied BiMamba); each direction's short
convolution reads its own past (the reversed one the following tokens), so reversing a row
reverses the output; for linear attention with the diagonal counted once, which is exactly
non-causal linear attention. Heads shard on `tensor` like attention's. Prefix LM (a
bidirectional prefix inside a causal stack) and context parallelism are attention-only.

Where the published layers differ from these: Mamba-2's gated norm here is per head (it shards
with the heads; the reference normalises all of d_inner, per group), and Gated DeltaNet's values
keep head_dim (the reference widens them 2x).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from research.errors import ConfigError
from research.layers import patterns
from research.layers import peft as peft_lib
from research.layers import recurrent

KINDS = ('attention', 'linear_attention', 'mamba2', 'gated_deltanet')
RECURRENT = KINDS[1:]
FEATURE_MAPS = ('elu', 'relu')
FIELD = 'model.mixer'
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class MixerConfig:
  """Resolved `model.mixer` (hashable; part of TransformerConfig)."""
  pattern: tuple[str, ...] = ('attention',)  # the cycle of per-layer kinds
  chunk_size: int = 64  # tokens per chunk of the chunkwise-parallel form (<= data.seq_len)
  conv_width: int = 4  # the short causal convolution (mamba2, gated_deltanet); 1: none
  state_dim: int = 64  # Mamba-2's N (entries of B and C)
  expand: int = 2  # Mamba-2's d_inner / d_model
  feature_map: str = 'elu'  # linear attention's phi
  # Recompute the chunkwise kernel's float32 intermediates (chunk-layout copies, [C, C] scores,
  # per-chunk states) in the backward pass instead of keeping them: a third more kernel FLOPs,
  # a few % of the layer's, for about half its activation memory.
  kernel_remat: bool = True

  def layer_kind(self, i: int) -> str:
    """Layer i's mixer (0-based, within its stack): the cycle's entry i mod its length."""
    return self.pattern[i % len(self.pattern)]

  def layer_kinds(self, num_layers: int) -> tuple[str, ...]:
    return tuple(self.layer_kind(i) for i in range(num_layers))

  @property
  def uniform(self) -> bool:
    return len(set(self.pattern)) == 1

  @property
  def has_recurrent(self) -> bool:
    return any(kind != 'attention' for kind in self.pattern)


def parse_pattern(text: str) -> tuple[str, ...]:
  """'gated_deltanet*3,attention' -> ('gated_deltanet',) * 3 + ('attention',)."""
  return patterns.parse_cycle(text, KINDS, f'{FIELD}.pattern', "'gated_deltanet*3,attention'",
                              'mixer')


def check_mixer(mix, *, scan_layers: bool, seq_len: int) -> None:
  """Validates `model.mixer` (a ConfigDict or mapping); raises ConfigError naming the field."""
  kinds = parse_pattern(mix['pattern'])
  for field in ('chunk_size', 'conv_width', 'state_dim', 'expand'):
    if mix[field] < 1:
      raise ConfigError(f'{FIELD}.{field}', mix[field], 'must be a positive integer')
  if mix['feature_map'] not in FEATURE_MAPS:
    raise ConfigError(f'{FIELD}.feature_map', mix['feature_map'],
                      f'choose one of {list(FEATURE_MAPS)}')
  if set(kinds) - {'attention'} and seq_len % min(mix['chunk_size'], seq_len):
    raise ConfigError(f'{FIELD}.chunk_size', mix['chunk_size'],
                      f'must divide the training block data.seq_len={seq_len} (else every step '
                      'pads the last chunk): pick a divisor, e.g. '
                      f'{math.gcd(seq_len, mix["chunk_size"])}')
  if scan_layers and len(set(kinds)) > 1:
    raise ConfigError(f'{FIELD}.pattern', mix['pattern'],
                      'model.scan_layers=True scans one layer type: use one mixer for every '
                      'layer, or model.scan_layers=False to interleave')


def check_config(config) -> None:
  """ConfigErrors for combinations the recurrent mixers do not define (before compiling)."""
  mix = config.model.get('mixer', None)
  if mix is None or set(parse_pattern(mix['pattern'])) == {'attention'}:
    return
  if config.objective.name == 'prefix_lm':
    raise ConfigError('objective.name', 'prefix_lm', f"a prefix LM's prefix is bidirectional "
                      f"inside a causal stack, which the recurrent mixers of "
                      f"{FIELD}.pattern={mix['pattern']!r} do not define: use causal_lm, or "
                      "attention layers only")


def resolve(mix, *, seq_len: int) -> MixerConfig:
  """`model.mixer` (validated; None: every layer attention) -> MixerConfig. A chunk longer
  than the training block is the block."""
  if mix is None:
    return MixerConfig()
  return MixerConfig(pattern=parse_pattern(mix['pattern']),
                     chunk_size=min(int(mix['chunk_size']), seq_len),
                     conv_width=int(mix['conv_width']), state_dim=int(mix['state_dim']),
                     expand=int(mix['expand']), feature_map=str(mix['feature_map']),
                     kernel_remat=bool(mix.get('kernel_remat', True)))


# ----------------------------------------------------------------------------------------------
# Pieces shared by the layers.


def _segments(mask, b: int, t: int):
  """(segment_ids_BT, causal) from a MaskSpec, a dense mask or None (one segment, causal)."""
  spec_segments = getattr(mask, 'q_segment_ids_BT', None)
  if getattr(mask, 'prefix_BT', None) is not None:
    raise ValueError('recurrent mixers are causal or bidirectional, not prefix LM')
  if spec_segments is None:
    return jnp.ones((b, t), jnp.int32), True
  return spec_segments.astype(jnp.int32), bool(mask.causal)


def _reverse(*xs):
  return tuple(None if x is None else jnp.flip(x, axis=1) for x in xs)


def _inverse_softplus(x):
  return x + jnp.log(-jnp.expm1(-x))


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _conv_silu(x_BL_, w_W_, run_BL, t: int):
  """SiLU of the last t outputs of the depthwise causal convolution of x_BL_ (W - 1 leading
  tokens of context), each tap masked to the output token's run. Rematerialised: the backward
  recomputes the taps (a few elementwise ops) instead of keeping a float32 copy and a mask of
  the input per tap, which made the convolution a layer's largest residual."""
  keep = w_W_.shape[0] - 1
  extra = (1,) * (x_BL_.ndim - 2)
  run_BT = run_BL[:, keep:]
  y_BT_ = jnp.zeros(x_BL_.shape[:1] + (t,) + x_BL_.shape[2:], jnp.float32)
  for tap in range(keep + 1):  # tap `tap` reads the token keep - tap before
    same_BT = jax.lax.dynamic_slice_in_dim(run_BL, tap, t, axis=1) == run_BT
    x_tap = jax.lax.dynamic_slice_in_dim(x_BL_, tap, t, axis=1).astype(jnp.float32)
    y_BT_ += jnp.where(same_BT.reshape(same_BT.shape + extra), x_tap * w_W_[tap], 0.0)
  return nn.silu(y_BT_).astype(x_BL_.dtype)


class ShortConv(nn.Module):
  """Depthwise causal convolution over time of `width` taps, then SiLU. Taps never reach into
  another segment (run). Decoding keeps the last width - 1 inputs and their segment ids.
  `reverse`: the mirror image, over the row read backwards (taps on the following tokens), for
  the backward recurrence of a bidirectional layer."""
  width: int
  axes: tuple[str, ...]  # logical axes of the channel dimensions
  decode: bool = False

  @nn.compact
  def __call__(self, x_BT_, segment_ids_BT, *, reverse: bool = False):
    channels = x_BT_.shape[2:]
    w_W_ = self.param('kernel', nn.with_logical_partitioning(
        nn.initializers.normal(self.width ** -0.5), ('conv_width',) + self.axes),
                      (self.width,) + channels, jnp.float32)
    if reverse:
      if self.decode:
        raise ValueError('a reversed (anti-causal) convolution does not decode')
      x_BT_, segment_ids_BT = _reverse(x_BT_, segment_ids_BT)
    b, t = x_BT_.shape[:2]
    keep = self.width - 1
    if self.decode and keep:
      window = self.variable('cache', 'window', jnp.zeros, (b, keep) + channels, x_BT_.dtype)
      window_segments = self.variable('cache', 'window_segment_ids', jnp.zeros, (b, keep),
                                      jnp.int32)
      x_BL_ = jnp.concatenate([window.value, x_BT_], axis=1)
      segment_ids_BL = jnp.concatenate([window_segments.value, segment_ids_BT], axis=1)
      if not self.is_initializing():
        window.value = x_BL_[:, -keep:]
        window_segments.value = segment_ids_BL[:, -keep:]
    else:
      x_BL_ = jnp.pad(x_BT_, [(0, 0), (keep, 0)] + [(0, 0)] * len(channels))
      segment_ids_BL = jnp.pad(segment_ids_BT, [(0, 0), (keep, 0)], constant_values=-1)
    y_BT_ = _conv_silu(x_BL_, w_W_, recurrent.runs(segment_ids_BL), t)
    return _reverse(y_BT_)[0] if reverse else y_BT_


class _Recurrent(nn.Module):
  """What the three layers share: the projections, the kernel (chunked, or step by step for
  single-token decoding), the cached state, the bidirectional form."""
  cfg: MixerConfig
  num_heads: int
  head_dim: int
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  decode: bool = False
  peft: peft_lib.PeftConfig = peft_lib.PeftConfig()  # LoRA deltas on the projections

  def _proj(self, name, x_BTD, shape, axes):
    d = x_BTD.shape[-1]
    w = self.param(name, nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), ('embed',) + axes), (d,) + shape, jnp.float32)
    letters = 'hkn'[:len(shape)]
    y = jnp.einsum(f'btd,d{letters}->bt{letters}', x_BTD, w.astype(self.dtype))
    delta = peft_lib.lora_delta(self, self.peft, name, x_BTD, (d,), shape, self.dtype)
    return y if delta is None else y + delta

  def _out(self, o_BTHV, d: int):
    w_HVD = self.param('out', nn.with_logical_partitioning(
        nn.initializers.normal(self.out_init_std), ('heads', 'head_dim', 'embed')),
                       o_BTHV.shape[2:] + (d,), jnp.float32)
    o_BTHV = o_BTHV.astype(self.dtype)
    y_BTD = jnp.einsum('bthv,hvd->btd', o_BTHV, w_HVD.astype(self.dtype))
    delta_BTD = peft_lib.lora_delta(self, self.peft, 'out', o_BTHV, w_HVD.shape[:2], (d,),
                                    self.dtype)
    return y_BTD if delta_BTD is None else y_BTD + delta_BTD

  def _decay_params(self, h: int):
    """Mamba-2's A (log, per head: A in [1, 16]) and dt bias (dt in [1e-3, 1e-1])."""
    a_log_H = self.param('a_log', nn.with_logical_partitioning(
        lambda rng, s: jnp.log(jax.random.uniform(rng, s, minval=1.0, maxval=16.0)),
        ('heads',)), (h,))
    dt_bias_H = self.param('dt_bias', nn.with_logical_partitioning(
        lambda rng, s: _inverse_softplus(jnp.exp(jax.random.uniform(
            rng, s, minval=math.log(1e-3), maxval=math.log(1e-1)))), ('heads',)), (h,))
    return a_log_H, dt_bias_H

  def _mix(self, q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH, segment_ids_BT, causal, *,
           delta: bool, backward_qkv=None):
    """o_BTHV: the recurrence over the row (and back, when bidirectional). `backward_qkv`: the
    (q, k, v) the backward recurrence reads, where they come from reversed convolutions (each
    direction convolves over its own past); None: the forward ones."""
    if self.decode:
      return self._mix_cached(q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH, segment_ids_BT,
                              delta=delta)
    kernel = lambda *xs: recurrent.chunked(*xs[:5], delta=delta, chunk_size=self.cfg.chunk_size,
                                           segment_ids_BT=xs[5])[0]
    if self.cfg.kernel_remat:
      kernel = jax.checkpoint(kernel)
    xs = (q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH, segment_ids_BT)
    o_BTHV = kernel(*xs)
    if not causal:
      if backward_qkv is not None:
        xs = tuple(backward_qkv) + xs[3:]
      o_BTHV = o_BTHV + _reverse(kernel(*_reverse(*xs)))[0]
    return o_BTHV

  def _mix_cached(self, q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH, segment_ids_BT, *,
                  delta: bool):
    """Decoding: continues each row from the cached state (its last token's segment too)."""
    b, t, h, k = q_BTHK.shape
    state = self.variable('cache', 'state', jnp.zeros, (b, h, k, v_BTHV.shape[-1]), jnp.float32)
    segment = self.variable('cache', 'segment_id', jnp.zeros, (b,), jnp.int32)
    kw = dict(delta=delta, segment_ids_BT=segment_ids_BT, initial_state_BHKV=state.value,
              initial_segment_B=segment.value)
    xs = (q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH)
    if t == 1:
      o_BTHV, new_state = recurrent.recurrent(*xs, **kw)
    else:
      o_BTHV, new_state = recurrent.chunked(*xs, chunk_size=self.cfg.chunk_size, **kw)
    if not self.is_initializing():
      state.value = new_state
      segment.value = segment_ids_BT[:, -1]
    return o_BTHV

  def _gated_norm(self, y_BTHV, gate_BTHV, *, norm_first: bool):
    """RMSNorm per head with a SiLU gate: norm(y) * silu(g) or norm(y * silu(g))."""
    scale_HV = self.param('norm', nn.with_logical_partitioning(
        nn.initializers.ones, ('heads', 'head_dim')), y_BTHV.shape[2:], jnp.float32)
    gate = nn.silu(gate_BTHV.astype(jnp.float32))
    y = y_BTHV.astype(jnp.float32)
    if not norm_first:
      y = y * gate
    y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + _EPS) * scale_HV
    return y * gate if norm_first else y

  def _named(self, q, k, v):
    return (checkpoint_name(q, 'query_proj'), checkpoint_name(k, 'key_proj'),
            checkpoint_name(v, 'value_proj'))


class LinearAttention(_Recurrent):
  """Linear attention with a feature map (module docstring)."""

  @nn.compact
  def __call__(self, x_BTD, mask=None):
    b, t, d = x_BTD.shape
    h, k = self.num_heads, self.head_dim
    segment_ids_BT, causal = _segments(mask, b, t)
    phi = (lambda x: nn.elu(x) + 1.0) if self.cfg.feature_map == 'elu' else nn.relu
    axes = ('heads', 'head_dim')
    q_BTHK, k_BTHK, v_BTHK = self._named(*(self._proj(n, x_BTD, (h, k), axes)
                                           for n in ('query', 'key', 'value')))
    q_BTHK = phi(q_BTHK.astype(jnp.float32))
    k_BTHK = phi(k_BTHK.astype(jnp.float32))
    # A column of ones carries the normaliser sum_i phi(k_i) through the same recurrence.
    v_BTHV = jnp.concatenate([v_BTHK.astype(jnp.float32), jnp.ones((b, t, h, 1))], axis=-1)
    zeros_BTH = jnp.zeros((b, t, h), jnp.float32)
    o_BTHV = self._mix(q_BTHK, k_BTHK, v_BTHV, zeros_BTH, zeros_BTH + 1.0, segment_ids_BT,
                       causal, delta=False)
    if not causal:  # the two directions both counted token t itself
      o_BTHV -= jnp.einsum('bthk,bthk->bth', q_BTHK, k_BTHK)[..., None] * v_BTHV
    o_BTHK = o_BTHV[..., :k] / (o_BTHV[..., k:] + _EPS)
    o_BTHK = checkpoint_name(o_BTHK.astype(self.dtype), 'attention_out')
    return self._out(o_BTHK, d)


class Mamba2(_Recurrent):
  """Mamba-2's SSD layer (module docstring); head_dim here is d_inner / num_heads."""

  @nn.compact
  def __call__(self, x_BTD, mask=None):
    b, t, d = x_BTD.shape
    h, p, n = self.num_heads, self.head_dim, self.cfg.state_dim
    segment_ids_BT, causal = _segments(mask, b, t)
    z_BTHP = self._proj('gate', x_BTD, (h, p), ('heads', 'head_dim'))
    x_BTHP = self._proj('value', x_BTD, (h, p), ('heads', 'head_dim'))
    bc_BT2N = self._proj('key_query', x_BTD, (2, n), (None, 'state'))
    dt_BTH = self._proj('dt', x_BTD, (h,), ('heads',))
    value_conv = ShortConv(self.cfg.conv_width, ('heads', 'head_dim'), decode=self.decode,
                           name='value_conv')
    key_query_conv = ShortConv(self.cfg.conv_width, (None, 'state'), decode=self.decode,
                               name='key_query_conv')

    def qkv(reverse):  # C, B, x through the convolutions (reversed: over the row backwards)
      bc_BT2N_ = key_query_conv(bc_BT2N, segment_ids_BT, reverse=reverse)
      k_BTHN = jnp.broadcast_to(bc_BT2N_[:, :, None, 0], (b, t, h, n))
      q_BTHN = jnp.broadcast_to(bc_BT2N_[:, :, None, 1], (b, t, h, n))
      return self._named(q_BTHN, k_BTHN, value_conv(x_BTHP, segment_ids_BT, reverse=reverse))

    a_log_H, dt_bias_H = self._decay_params(h)
    skip_H = self.param('skip', nn.with_logical_partitioning(nn.initializers.ones, ('heads',)),
                        (h,))
    dt_BTH = jax.nn.softplus(dt_BTH.astype(jnp.float32) + dt_bias_H)
    log_alpha_BTH = -jnp.exp(a_log_H) * dt_BTH
    q_BTHN, k_BTHN, x_conv_BTHP = qkv(False)
    backward = None if causal else qkv(True)
    y_BTHP = self._mix(q_BTHN, k_BTHN, x_conv_BTHP, log_alpha_BTH, dt_BTH, segment_ids_BT,
                       causal, delta=False, backward_qkv=backward)
    skip_BTHP = x_conv_BTHP.astype(jnp.float32)
    if backward is not None:  # the skip of both directions' inputs, averaged
      skip_BTHP = 0.5 * (skip_BTHP + backward[2].astype(jnp.float32))
    y_BTHP = y_BTHP + skip_H[:, None] * skip_BTHP
    y_BTHP = self._gated_norm(y_BTHP, z_BTHP, norm_first=False)
    y_BTHP = checkpoint_name(y_BTHP.astype(self.dtype), 'attention_out')
    return self._out(y_BTHP, d)


class GatedDeltaNet(_Recurrent):
  """Gated DeltaNet (module docstring)."""

  @nn.compact
  def __call__(self, x_BTD, mask=None):
    b, t, d = x_BTD.shape
    h, k = self.num_heads, self.head_dim
    segment_ids_BT, causal = _segments(mask, b, t)
    axes = ('heads', 'head_dim')
    projected = [(self._proj(name, x_BTD, (h, k), axes),
                  ShortConv(self.cfg.conv_width, axes, decode=self.decode, name=f'{name}_conv'))
                 for name in ('query', 'key', 'value')]
    l2 = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + _EPS)

    def qkv(reverse):  # through the convolutions (reversed: over the row backwards)
      q_BTHK, k_BTHK, v_BTHK = self._named(*(conv(y_BTHK, segment_ids_BT, reverse=reverse)
                                             for y_BTHK, conv in projected))
      return l2(q_BTHK.astype(jnp.float32)) * k ** -0.5, l2(k_BTHK.astype(jnp.float32)), v_BTHK

    q_BTHK, k_BTHK, v_BTHK = qkv(False)
    beta_BTH = jax.nn.sigmoid(self._proj('beta', x_BTD, (h,), ('heads',)).astype(jnp.float32))
    a_log_H, dt_bias_H = self._decay_params(h)
    dt_BTH = jax.nn.softplus(self._proj('dt', x_BTD, (h,), ('heads',)).astype(jnp.float32) +
                             dt_bias_H)
    o_BTHK = self._mix(q_BTHK, k_BTHK, v_BTHK, -jnp.exp(a_log_H) * dt_BTH, beta_BTH,
                       segment_ids_BT, causal, delta=True,
                       backward_qkv=None if causal else qkv(True))
    gate_BTHK = self._proj('gate', x_BTD, (h, k), axes)
    o_BTHK = self._gated_norm(o_BTHK, gate_BTHK, norm_first=True)
    o_BTHK = checkpoint_name(o_BTHK.astype(self.dtype), 'attention_out')
    return self._out(o_BTHK, d)


LAYERS = {'linear_attention': LinearAttention, 'mamba2': Mamba2, 'gated_deltanet': GatedDeltaNet}


def head_dim_of(kind: str, cfg: MixerConfig, *, d_model: int, num_heads: int,
                head_dim: int) -> int:
  """The per-head width a mixer uses: head_dim, or Mamba-2's expand x d_model / num_heads."""
  if kind == 'mamba2':
    return cfg.expand * d_model // num_heads
  return head_dim


def make(kind: str, cfg: MixerConfig, *, d_model: int, num_heads: int, head_dim: int,
         init_std: float, out_init_std: float, dtype, decode: bool, name: str,
         peft: peft_lib.PeftConfig = peft_lib.PeftConfig()) -> nn.Module:
  """The recurrent mixer layer `kind` of a block."""
  return LAYERS[kind](cfg, num_heads=num_heads,
                      head_dim=head_dim_of(kind, cfg, d_model=d_model, num_heads=num_heads,
                                           head_dim=head_dim),
                      init_std=init_std, out_init_std=out_init_std, dtype=dtype, decode=decode,
                      peft=peft, name=name)
