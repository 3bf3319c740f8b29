"""Encoder-only masked language model (BERT / RoBERTa shape).

A bidirectional stack: every token attends to every token of its own segment (packed examples
never see each other; segment id 0 is padding), or, with `model.attention.pattern`, to those its
layer's pattern allows (a bidirectional local window, Longformer's global tokens, BigBird). The MLM head projects back onto the token
embedding table (tied), so the logits are scores for the original token at every position.

BERT's extras are switchable, so one module is both the BERT reference and a modern pre-norm /
RMSNorm / RoPE encoder:

  type_vocab_size  token-type (segment A/B) embeddings added to the input; 0: none
  embed_norm       a norm on the summed input embeddings, before dropout (BERT's embedding
                   LayerNorm); pre-norm stacks normalise inside every block instead
  head_transform   dense D -> D with bias, activation, norm before the tied unembedding
  output_bias      a [V] bias on the logits

Each is a module attribute; left at None it comes from the TransformerConfig field of the same
name (and is off while TransformerConfig has no such field). Post-norm stacks (BERT) end with
the last block's norm; pre-norm stacks get a final norm, as the decoder does.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from research.errors import ConfigError
from research.layers import attention, embeddings, mlp, norms, positions as positions_lib
from research.models.transformer import Stack, TransformerConfig, scale_readout

# Off unless a config or attribute asks: the plain encoder is the modern shape.
_DEFAULTS = {'type_vocab_size': 0, 'embed_norm': False, 'head_transform': False,
             'output_bias': False}
_SUPPORTED_POSITIONS = ('rope', 'learned', 'sinusoidal', 'none')


class TokenTypes(nn.Module):
  """BERT's segment A/B embeddings: a [types, D] table added to the input embeddings."""
  type_vocab_size: int
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, token_types_BT):
    # Replicated over the first axis: a 2-row table need not divide the tensor axis.
    type_table = self.param('embedding', nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), (None, 'embed')),
                          (self.type_vocab_size, x_BTD.shape[-1]), jnp.float32)
    return x_BTD + jnp.take(type_table, token_types_BT, axis=0).astype(self.dtype)


class HeadTransform(nn.Module):
  """BERT's MLM transform: norm(act(x W + b)), applied before the tied unembedding."""
  activation: str
  norm: str
  norm_eps: float
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD):
    d = x_BTD.shape[-1]
    # Column-parallel like an MLP's input matrix; the norm then gathers D.
    w_DD = self.param('kernel', nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), ('embed', 'mlp')), (d, d), jnp.float32)
    b_D = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
                     (d,), jnp.float32)
    h_BTD = jnp.dot(x_BTD, w_DD.astype(self.dtype)) + b_D.astype(self.dtype)
    h_BTD = mlp.ACTIVATIONS[self.activation](h_BTD)
    return norms.make_norm(self.norm, eps=self.norm_eps, dtype=self.dtype,
                           module_name='norm')(h_BTD)


class EncoderLM(nn.Module):
  """tokens_BT -> float32 logits_BTV, bidirectional within each segment.

  `segment_ids_BT` (0 = padding; default: one segment) keeps packed examples apart;
  `positions_BT` (default 0..T-1) restart per segment; `token_types_BT` (default 0) index the
  token-type table when the model has one. With `model.scalar_head`, `scalars` reads one
  float32 value per position off the final hidden states instead of the MLM head (a reward
  model's score): a Dense(D -> 1) with bias, parameters 'scalar_head'. `decode` exists for
  `build_model`'s signature only: an encoder has no KV cache.
  """
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True
  type_vocab_size: int | None = None
  embed_norm: bool | None = None
  head_transform: bool | None = None
  output_bias: bool | None = None

  def option(self, name: str):
    """The attribute, else the TransformerConfig field of the same name, else off."""
    value = getattr(self, name)
    return getattr(self.cfg, name, _DEFAULTS[name]) if value is None else value

  def _check(self, token_types_BT):
    c = self.cfg
    if self.decode:
      raise ValueError('EncoderLM has no decode mode: an encoder reads the whole sequence at once')
    if c.position not in _SUPPORTED_POSITIONS:
      raise ConfigError('model.position', c.position,
                        f'the encoder family supports {list(_SUPPORTED_POSITIONS)}')
    if token_types_BT is not None and not self.option('type_vocab_size'):
      raise ConfigError('model.type_vocab_size', 0,
                        'token types were given: set it to the number of types (BERT: 2)')

  def _embed_inputs(self, embed, tokens_BT, positions_BT, token_types_BT):
    """Token + position (+ token-type) embeddings, then the optional norm, then dropout."""
    c = self.cfg
    x_BTD = embed(tokens_BT)
    if c.position in ('learned', 'sinusoidal'):
      x_BTD = positions_lib.AbsolutePositions(c.position, c.max_len, init_std=c.init_std,
                                              dtype=c.dtype, name='positions')(x_BTD, positions_BT)
    if type_vocab_size := self.option('type_vocab_size'):
      if token_types_BT is None:
        token_types_BT = jnp.zeros_like(tokens_BT)
      x_BTD = TokenTypes(type_vocab_size, init_std=c.init_std, dtype=c.dtype,
                         name='token_types')(x_BTD, token_types_BT)
    if self.option('embed_norm'):
      x_BTD = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype,
                              module_name='embed_norm')(x_BTD)
    return nn.Dropout(c.dropout)(x_BTD, deterministic=self.deterministic)

  def _logits(self, embed, x_BTD):
    """The MLM head: optional transform, tied (or untied) unembedding, optional bias."""
    c = self.cfg
    if self.option('head_transform'):
      x_BTD = HeadTransform(c.activation, c.norm, c.norm_eps, init_std=c.hidden_init_std,
                            dtype=c.dtype, name='head_transform')(x_BTD)
    if c.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      logits_BTV = embeddings.Unembed(c.vocab_size, init_std=c.init_std, dtype=c.dtype,
                                      name='unembed')(x_BTD)
    logits_BTV = scale_readout(c, logits_BTV.astype(jnp.float32))
    if self.option('output_bias'):
      logits_BTV += self.param('output_bias', nn.with_logical_partitioning(
          nn.initializers.zeros, ('vocab',)), (c.vocab_size,), jnp.float32)
    return nn.with_logical_constraint(logits_BTV, ('batch', 'length', 'vocab'))

  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, token_types_BT=None):
    return self._forward(tokens_BT, positions_BT, segment_ids_BT, token_types_BT, 'logits')

  def scalars(self, tokens_BT, positions_BT=None, segment_ids_BT=None):
    """float32 values_BT: the scalar head (model.scalar_head) at every position of the
    final-normed hidden states; every position has seen its whole segment (bidirectional)."""
    if not self.cfg.scalar_head:
      raise ConfigError('model.scalar_head', False, 'this model has no scalar head: train one '
                        'with objective.name=reward (configs/finetune/reward.py)')
    return self._forward(tokens_BT, positions_BT, segment_ids_BT, None, 'scalars')

  @nn.compact
  def _forward(self, tokens_BT, positions_BT, segment_ids_BT, token_types_BT, output: str):
    """The one compact method (its submodules are the parameter tree): `output` 'logits' or
    'scalars'. `init` (through either) creates the MLM head and, with model.scalar_head, the
    scalar head."""
    c = self.cfg
    self._check(token_types_BT)
    b, t = tokens_BT.shape
    index_BT = jnp.broadcast_to(jnp.arange(t), (b, t))
    positions_BT = index_BT if positions_BT is None else positions_BT
    segment_ids_BT = jnp.ones_like(tokens_BT) if segment_ids_BT is None else segment_ids_BT
    mask = attention.MaskSpec(segment_ids_BT, segment_ids_BT, index_BT, index_BT, causal=False)
    embed = embeddings.Embed(c.vocab_size, c.d_model, init_std=c.init_std, dtype=c.dtype,
                             name='embed')
    x_BTD = self._embed_inputs(embed, tokens_BT, positions_BT, token_types_BT)
    x_BTD = Stack(c, deterministic=self.deterministic, name='stack')(x_BTD, positions_BT, mask)
    if c.norm_position == 'pre':  # post-norm blocks already end normalised
      x_BTD = norms.make_norm(c.norm, eps=c.norm_eps, dtype=c.dtype,
                              module_name='final_norm')(x_BTD)
    values_BT = logits_BTV = None
    if c.scalar_head and (output == 'scalars' or self.is_initializing()):
      values_BT = scale_readout(c, embeddings.ScalarHead(init_std=c.init_std,
                                                         name='scalar_head')(x_BTD))
    if output == 'logits' or self.is_initializing():
      logits_BTV = self._logits(embed, x_BTD)
    return values_BT if output == 'scalars' else logits_BTV
