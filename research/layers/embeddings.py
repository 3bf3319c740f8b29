"""Token embedding, (tied or untied) unembedding, and the scalar head."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Embed(nn.Module):
  """Token table [V, D]; `attend` reuses it as the unembedding when weights are tied."""
  vocab_size: int
  d_model: int
  init_std: float = 1.0
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.table_VD = self.param(
        'embedding', nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                                  ('vocab', 'embed')),
        (self.vocab_size, self.d_model), jnp.float32)

  def __call__(self, tokens_BT):
    x_BTD = jnp.take(self.table_VD, tokens_BT, axis=0).astype(self.dtype)
    return nn.with_logical_constraint(x_BTD, ('batch', 'length', 'act_embed'))

  def attend(self, x_BTD):
    """Logits against the embedding table, for tied unembedding."""
    return jnp.einsum('btd,vd->btv', x_BTD, self.table_VD.astype(self.dtype))


class Unembed(nn.Module):
  """A separate output projection [D, V], for untied models."""
  vocab_size: int
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTD):
    w_DV = self.param('kernel', nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                                             ('embed', 'vocab')),
                      (x_BTD.shape[-1], self.vocab_size), jnp.float32)
    return jnp.einsum('btd,dv->btv', x_BTD, w_DV.astype(self.dtype))


class ScalarHead(nn.Module):
  """A Dense(D -> 1) with bias on the final-normed hidden states, in float32: one value per
  position (a reward model's score, PPO's value head). Kernel [D, 1] ('embed', None), sharded
  like the residual stream's side of the unembedding; bias [1], replicated."""
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x_BTD):
    w_D1 = self.param('kernel', nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                                             ('embed', None)),
                      (x_BTD.shape[-1], 1), jnp.float32)
    b_1 = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, (None,)), (1,),
                     jnp.float32)
    return jnp.einsum('btd,do->bto', x_BTD.astype(jnp.float32), w_D1)[..., 0] + b_1[0]
