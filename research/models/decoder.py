"""Decoder-only language model (GPT / Llama shape): causal LM and prefix LM."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from research.layers import attention, embeddings, norms, positions as positions_lib
from research.models.transformer import Stack, TransformerConfig


class DecoderLM(nn.Module):
  """tokens_BT -> float32 logits_BTV.

  `segment_ids_BT` (0 = padding) keeps packed examples apart; `positions_BT` restart per
  segment. `prefix_BT` marks prefix-LM tokens that attend bidirectionally within the prefix.
  With `decode=True`, keys and values go to the 'cache' collection and masks come from it.
  """
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, prefix_BT=None):
    c = self.cfg
    b, t = tokens_BT.shape
    index_BT = jnp.broadcast_to(jnp.arange(t), (b, t))
    if positions_BT is None:
      positions_BT = index_BT
    if self.decode:
      mask_BTS = None  # the cache builds the causal mask over its slots
    else:
      segment_ids_BT = jnp.ones_like(tokens_BT) if segment_ids_BT is None else segment_ids_BT
      mask_BTS = attention.make_mask(segment_ids_BT, segment_ids_BT, index_BT, index_BT,
                                     causal=True, bidirectional_q_BT=prefix_BT)
    embed = embeddings.Embed(c.vocab_size, c.d_model, init_std=c.init_std, dtype=c.dtype,
                             name='embed')
    x_BTD = embed(tokens_BT)
    if c.position in ('learned', 'sinusoidal'):
      x_BTD = positions_lib.AbsolutePositions(c.position, c.max_len, init_std=c.init_std,
                                              dtype=c.dtype, name='positions')(x_BTD, positions_BT)
    x_BTD = nn.Dropout(c.dropout)(x_BTD, deterministic=self.deterministic)
    x_BTD = Stack(c, decode=self.decode, deterministic=self.deterministic,
                  name='stack')(x_BTD, positions_BT, mask_BTS)
    x_BTD = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype, module_name='final_norm')(x_BTD)
    if c.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      logits_BTV = embeddings.Unembed(c.vocab_size, init_std=c.init_std, dtype=c.dtype,
                                      name='unembed')(x_BTD)
    logits_BTV = nn.with_logical_constraint(logits_BTV, ('batch', 'length', 'vocab'))
    return logits_BTV.astype(jnp.float32)
