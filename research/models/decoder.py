"""Decoder-only language model (GPT / Llama shape): causal LM and prefix LM."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from research.errors import ConfigError
from research.layers import attention, embeddings, norms, positions as positions_lib
from research.layers.softcap import soft_cap
from research.models.transformer import Stack, TransformerConfig, scale_readout


class DecoderLM(nn.Module):
  """tokens_BT -> float32 logits_BTV, in two halves that a chunked loss calls separately:
  `hidden` (tokens -> final-normed hidden states x_BTD, compute dtype) and `logits`
  (x_BTD -> float32 logits_BTV, the tied or untied unembedding). With `model.scalar_head`,
  `scalars` reads one float32 value per position off the same hidden states (a reward model's
  score, PPO's value head): a Dense(D -> 1) with bias, parameters 'scalar_head'.

  `segment_ids_BT` (0 = padding) keeps packed examples apart; `positions_BT` restart per
  segment. `prefix_BT` marks prefix-LM tokens that attend bidirectionally within the prefix.
  With `decode=True`, keys and values go to the 'cache' collection and masks come from it; give
  `positions_BT` (the token indices, counted from each row's first real token) and, for
  left-padded rows, `segment_ids_BT` (0 on the padding), as research.inference.decoding does.
  Attention patterns per layer (`model.attention`) come with the TransformerConfig.

  `loss_chunk_size` is read by the objectives (research.objectives.causal_lm.model_loss):
  0 scores the whole [B, T, V] logits at once; N > 0 scores N sequence positions at a time and
  never holds more than [B, N, V] logits. None takes TransformerConfig's field of that name
  (0 while it has none).
  """
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True
  loss_chunk_size: int | None = None

  def setup(self):
    c = self.cfg
    self.embed = embeddings.Embed(c.vocab_size, c.d_model, init_std=c.init_std, dtype=c.dtype)
    if c.position in ('learned', 'sinusoidal'):
      self.positions = positions_lib.AbsolutePositions(c.position, c.max_len,
                                                       init_std=c.init_std, dtype=c.dtype)
    # The name the compact version gave it: its dropout masks (keyed by path) stay the same.
    self.embed_dropout = nn.Dropout(c.dropout, name='Dropout_0')
    self.stack = Stack(c, decode=self.decode, deterministic=self.deterministic)
    self.final_norm = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype)
    if not c.tie_embeddings:
      self.unembed = embeddings.Unembed(c.vocab_size, init_std=c.init_std, dtype=c.dtype)
    if c.scalar_head:
      self.scalar_head = embeddings.ScalarHead(init_std=c.init_std)
    if c.peft.prompt_tokens:  # prompt tuning: learned embeddings ahead of every sequence
      self.soft_prompt = self.param('soft_prompt', nn.initializers.normal(c.init_std),
                                    (c.peft.prompt_tokens, c.d_model), jnp.float32)

  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, prefix_BT=None):
    x_BTD = self.hidden(tokens_BT, positions_BT, segment_ids_BT, prefix_BT)
    if self.cfg.scalar_head and self.is_initializing():
      self.scalar_head(x_BTD)  # `init` runs __call__ only: create the head's parameters too
    return self.logits(x_BTD)

  def scalars(self, tokens_BT, positions_BT=None, segment_ids_BT=None):
    """float32 values_BT: the scalar head (model.scalar_head) at every position of the
    final-normed hidden states; position t has seen tokens 0..t (causal)."""
    if not self.cfg.scalar_head:
      raise ConfigError('model.scalar_head', False, 'this model has no scalar head: train one '
                        'with objective.name=reward (configs/finetune/reward.py)')
    x_BTD = self.hidden(tokens_BT, positions_BT, segment_ids_BT)
    if self.is_initializing():
      self.logits(x_BTD)  # `init` through this method still creates the whole model
    return self.scalar_readout(x_BTD)

  def scalar_readout(self, x_BTD):
    """x_BTD (final-normed hidden states, any positions) -> float32 values_BT: `scalars`'
    second half, as `logits` is the logits' (PPO reads both off one `hidden` pass)."""
    return scale_readout(self.cfg, self.scalar_head(x_BTD))

  def hidden(self, tokens_BT, positions_BT=None, segment_ids_BT=None, prefix_BT=None):
    """Final-normed hidden states x_BTD in the compute dtype (what the unembedding reads)."""
    c = self.cfg
    b, t = tokens_BT.shape
    index_BT = jnp.broadcast_to(jnp.arange(t), (b, t))
    if positions_BT is None:
      positions_BT = index_BT
    if self.decode:
      # The new tokens' side of the mask; the cache holds the keys' side. Token indices are the
      # positions, which the decoding loop counts per row from the row's first real token
      # (research.inference.decoding), so left padding shifts nothing.
      segment_ids_BT = jnp.ones_like(tokens_BT) if segment_ids_BT is None else segment_ids_BT
      mask = attention.MaskSpec(segment_ids_BT, segment_ids_BT, positions_BT, positions_BT,
                                causal=True)
    else:
      # Segment ids and indices, not a [B, T, T] mask: each attention implementation builds
      # only the mask blocks it needs (a sliding-window layer stays linear in T).
      segment_ids_BT = jnp.ones_like(tokens_BT) if segment_ids_BT is None else segment_ids_BT
      mask = attention.MaskSpec(segment_ids_BT, segment_ids_BT, index_BT, index_BT, prefix_BT,
                                causal=True)
    x_BTD = self.embed(tokens_BT)
    if c.embed_scale:  # Gemma: the normaliser is rounded to the compute dtype, as in HF
      x_BTD = x_BTD * jnp.asarray(c.base_d_model ** 0.5, dtype=x_BTD.dtype)
    if c.position in ('learned', 'sinusoidal'):
      x_BTD = self.positions(x_BTD, positions_BT)
    x_BTD = self.embed_dropout(x_BTD, deterministic=self.deterministic)
    if c.peft.prompt_tokens:
      return self._hidden_with_soft_prompt(x_BTD, positions_BT, segment_ids_BT, prefix_BT)
    x_BTD = self.stack(x_BTD, positions_BT, mask)
    return self.final_norm(x_BTD)

  def _hidden_with_soft_prompt(self, x_BTD, positions_BT, segment_ids_BT, prefix_BT):
    """P soft-prompt vectors lead each row: they take positions 0..P-1 (the tokens' shift by
    P) and the segment of the row's first token, so one example per row (no packing) sees them.
    Only the tokens' hidden states come back."""
    if self.decode:
      raise NotImplementedError('prompt tuning does not decode with a KV cache')
    p = self.cfg.peft.prompt_tokens
    b, t = segment_ids_BT.shape
    prompt_BPD = jnp.broadcast_to(self.soft_prompt.astype(x_BTD.dtype), (b, p, x_BTD.shape[-1]))
    x_BLD = jnp.concatenate([prompt_BPD, x_BTD], axis=1)
    positions_BL = jnp.concatenate(
        [jnp.broadcast_to(jnp.arange(p), (b, p)), positions_BT + p], axis=1)
    segment_ids_BL = jnp.concatenate(
        [jnp.broadcast_to(segment_ids_BT[:, :1], (b, p)), segment_ids_BT], axis=1)
    index_BL = jnp.broadcast_to(jnp.arange(p + t), (b, p + t))
    prefix_BL = None if prefix_BT is None else jnp.concatenate(
        [jnp.ones((b, p), prefix_BT.dtype), prefix_BT], axis=1)
    mask = attention.MaskSpec(segment_ids_BL, segment_ids_BL, index_BL, index_BL, prefix_BL,
                              causal=True)
    x_BLD = self.stack(x_BLD, positions_BL, mask)
    return self.final_norm(x_BLD[:, p:])

  def logits(self, x_BTD):
    """x_BTD (any number of positions) -> float32 logits_BTV. Reads only `head_params`."""
    if self.cfg.tie_embeddings:
      logits_BTV = self.embed.attend(x_BTD)
    else:
      logits_BTV = self.unembed(x_BTD)
    logits_BTV = nn.with_logical_constraint(logits_BTV, ('batch', 'length', 'vocab'))
    logits_BTV = scale_readout(self.cfg, logits_BTV.astype(jnp.float32))
    return soft_cap(logits_BTV, self.cfg.final_softcap)

  def head_param_names(self) -> tuple[str, ...]:
    """The top-level parameter collections `logits` reads (callable on an unbound module)."""
    return ('embed',) if self.cfg.tie_embeddings else ('unembed',)
