"""Token embedding and (tied or untied) unembedding."""

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
