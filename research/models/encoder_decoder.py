"""Encoder-decoder language model (T5 / T5 v1.1 shape): span corruption and seq2seq tasks.

A bidirectional encoder reads the inputs once; a causal decoder attends to its own past and,
through cross-attention, to the encoder outputs. Both share the token embedding. T5's choices are
config: RMSNorm pre-norm (`model.norm='rmsnorm'`), unscaled attention (`model.attention_scale=1`),
no biases, a relative position bias per stack (`model.position='relative'`), and either a tied
unembedding with the decoder output scaled by d_model**-0.5 (T5 1.0) or an untied one (v1.1).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from research.layers import attention, embeddings, norms, positions as positions_lib
from research.layers import relative_bias
from research.models.transformer import Stack, TransformerConfig, scale_readout


def stack_layers(cfg: TransformerConfig) -> tuple[int, int]:
  """(encoder, decoder) depths: `encoder_layers` / `decoder_layers` when set, else num_layers."""
  encoder = cfg.encoder_layers or cfg.num_layers
  decoder = cfg.decoder_layers or cfg.num_layers
  return encoder, decoder


def segment_ids_or_default(tokens_BT, segment_ids_BT, *, pad_id: int | None):
  """Given segment ids, else 1 for every token (0 where the token is `pad_id`, if given)."""
  if segment_ids_BT is not None:
    return segment_ids_BT
  if pad_id is None:
    return jnp.ones_like(tokens_BT, jnp.int32)
  return (tokens_BT != pad_id).astype(jnp.int32)


class DecodeIndex(nn.Module):
  """Positions of decode-mode queries: the cache index onwards, against the cache's S slots.

  Mirrors the attention cache: the `init` call (whose length is the cache length S) writes
  nothing; every later call of L tokens advances the index by L. Only the shape of 'slots'
  matters (it records S), so an all-zero cache built from `eval_shape` is a valid empty cache.
  """

  @nn.compact
  def __call__(self, length: int):
    initialised = self.has_variable('cache', 'index')
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    slots = self.variable('cache', 'slots', lambda: jnp.zeros((length,), jnp.bool_))
    start = index.value
    if initialised:
      index.value = start + length
    num_slots = slots.value.shape[0]
    return start + jnp.arange(length, dtype=jnp.int32), jnp.arange(num_slots, dtype=jnp.int32)


class EncoderDecoderLM(nn.Module):
  """(encoder_tokens_BS, decoder_tokens_BT) -> float32 logits_BTV.

  Segment ids (0 = padding) keep packed examples apart: encoder tokens attend within their
  segment, decoder tokens causally within theirs, and cross-attention joins decoder segment k to
  encoder segment k only. Without encoder segment ids, encoder padding is token 0 (T5X's rule);
  without decoder segment ids every decoder token is real (its start token is also 0). Positions
  are token indices within the row: relative, RoPE and no positions depend only on offsets, so a
  packed example is computed exactly as it would be alone; learned or sinusoidal tables are not.

  `encode` and `decode_logits` split the forward pass so that inference runs the encoder once.
  With `decode=True` the decoder's self-attention keys and values go to the 'cache' collection;
  the encoder never caches. (The method is not called `decode`: that name is the mode flag.)
  """
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True

  def setup(self):
    c = self.cfg
    encoder_layers, decoder_layers = stack_layers(c)
    self.embed = embeddings.Embed(c.vocab_size, c.d_model, init_std=c.init_std, dtype=c.dtype)
    self.encoder = Stack(dataclasses.replace(c, num_layers=encoder_layers),
                         deterministic=self.deterministic)
    self.decoder = Stack(dataclasses.replace(c, num_layers=decoder_layers), decode=self.decode,
                         deterministic=self.deterministic, cross_attention=True)
    self.encoder_norm = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype)
    self.decoder_norm = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype)
    self.dropout = nn.Dropout(c.dropout)
    if c.position == 'relative':
      make_bias = lambda bidirectional: relative_bias.RelativePositionBias(
          num_heads=c.num_heads, num_buckets=c.relative_buckets,
          max_distance=c.relative_max_distance, bidirectional=bidirectional,
          init_std=c.init_std)
      self.encoder_relative_bias = make_bias(True)
      self.decoder_relative_bias = make_bias(False)
    elif c.position in ('learned', 'sinusoidal'):
      make_table = lambda: positions_lib.AbsolutePositions(c.position, c.max_len,
                                                           init_std=c.init_std, dtype=c.dtype)
      self.encoder_positions = make_table()
      self.decoder_positions = make_table()
    if not c.tie_embeddings:
      self.unembed = embeddings.Unembed(c.vocab_size, init_std=c.init_std, dtype=c.dtype)
    if self.decode:
      self.decode_index = DecodeIndex()

  def __call__(self, encoder_tokens_BS, decoder_tokens_BT, encoder_segment_ids_BS=None,
               decoder_segment_ids_BT=None):
    encoder_segment_ids_BS = segment_ids_or_default(encoder_tokens_BS, encoder_segment_ids_BS,
                                                    pad_id=0)
    encoded_BSD = self.encode(encoder_tokens_BS, encoder_segment_ids_BS)
    return self.decode_logits(encoded_BSD, decoder_tokens_BT, encoder_segment_ids_BS,
                              decoder_segment_ids_BT)

  def _embed(self, tokens_BT, positions_BT, table):
    x_BTD = self.embed(tokens_BT)
    if self.cfg.position in ('learned', 'sinusoidal'):
      x_BTD = table(x_BTD, positions_BT)
    return self.dropout(x_BTD, deterministic=self.deterministic)

  def encode(self, encoder_tokens_BS, encoder_segment_ids_BS=None):
    """Bidirectional encoder: tokens_BS -> encoded_BSD (after the final norm)."""
    c = self.cfg
    b, s = encoder_tokens_BS.shape
    segment_ids_BS = segment_ids_or_default(encoder_tokens_BS, encoder_segment_ids_BS, pad_id=0)
    index_S = jnp.arange(s, dtype=jnp.int32)
    index_BS = jnp.broadcast_to(index_S, (b, s))
    mask = attention.MaskSpec(segment_ids_BS, segment_ids_BS, index_BS, index_BS, causal=False)
    bias_HSS = self.encoder_relative_bias(index_S, index_S) if c.position == 'relative' else None
    x_BSD = self._embed(encoder_tokens_BS, index_BS,
                        getattr(self, 'encoder_positions', None))
    x_BSD = self.encoder(x_BSD, index_BS, mask, bias_HSS)
    x_BSD = self.encoder_norm(x_BSD)
    return self.dropout(x_BSD, deterministic=self.deterministic)

  def decode_logits(self, encoded_BSD, decoder_tokens_BT, encoder_segment_ids_BS=None,
                    decoder_segment_ids_BT=None):
    """Causal decoder over `decoder_tokens_BT`, attending to `encoded_BSD`: float32 logits_BTV.

    `encoder_segment_ids_BS=None` means no encoder padding. In decode mode the tokens continue
    from the cache index and `decoder_segment_ids_BT` is ignored (one example per row).
    """
    c = self.cfg
    b, t = decoder_tokens_BT.shape
    s = encoded_BSD.shape[1]
    if encoder_segment_ids_BS is None:
      encoder_segment_ids_BS = jnp.ones((b, s), jnp.int32)
    if self.decode:
      q_index_T, k_index_S = self.decode_index(t)
      decoder_segment_ids_BT = jnp.ones((b, t), jnp.int32)
      self_mask = None  # the cache builds the causal (pattern) mask over its slots
    else:
      q_index_T = k_index_S = jnp.arange(t, dtype=jnp.int32)
      decoder_segment_ids_BT = segment_ids_or_default(decoder_tokens_BT, decoder_segment_ids_BT,
                                                      pad_id=None)
      index_BT = jnp.broadcast_to(q_index_T, (b, t))
      self_mask = attention.MaskSpec(decoder_segment_ids_BT, decoder_segment_ids_BT, index_BT,
                                     index_BT, causal=True)
    positions_BT = jnp.broadcast_to(q_index_T, (b, t))
    cross_mask_BTS = decoder_segment_ids_BT[:, :, None] == encoder_segment_ids_BS[:, None, :]
    bias_HTS = (self.decoder_relative_bias(q_index_T, k_index_S) if c.position == 'relative'
                else None)
    x_BTD = self._embed(decoder_tokens_BT, positions_BT, getattr(self, 'decoder_positions', None))
    x_BTD = self.decoder(x_BTD, positions_BT, self_mask, bias_HTS, encoded_BSD, cross_mask_BTS)
    x_BTD = self.decoder_norm(x_BTD)
    x_BTD = self.dropout(x_BTD, deterministic=self.deterministic)
    if c.tie_embeddings:
      # T5 1.0 rescales before the tied unembedding: the table also serves as the (unscaled)
      # input embedding, so its norm is not the output layer's. Under μP at the base width's
      # value: μP's own 1/w multiplier follows (scale_readout).
      logits_BTV = self.embed.attend(x_BTD * c.base_d_model ** -0.5)
    else:
      logits_BTV = self.unembed(x_BTD)
    logits_BTV = nn.with_logical_constraint(logits_BTV, ('batch', 'length', 'vocab'))
    return scale_readout(c, logits_BTV.astype(jnp.float32))
