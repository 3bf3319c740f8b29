"""T5's relative position bias (Raffel et al. 2020): a learned scalar per head and distance bucket.

Distances (key position - query position) fall into `num_buckets` buckets: exact buckets for
small distances, logarithmically wider ones up to `max_distance`, beyond which all distances share
the last bucket. Bidirectional (encoder) attention gives half the buckets to each direction;
unidirectional (decoder) attention buckets only keys at or before the query. One module per
stack computes the bias once and every layer adds the same bias_HTS to its scores, as in T5.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128):
  """T5's bucket of each `relative_position` (= key position - query position): int32.

  Follows Mesh TensorFlow's `_relative_position_bucket` (as ported to T5X and Hugging Face): the
  logarithmic buckets are computed in float32 and truncated, so the result matches pretrained
  checkpoints bit for bit.
  """
  relative_position = jnp.asarray(relative_position, jnp.int32)
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    # Keys after the query use the upper half of the buckets.
    bucket += (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    # Keys after the query cannot be attended to; they share bucket 0 with distance 0.
    distance = jnp.maximum(-relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # max(distance, 1) keeps log finite where the small branch is taken anyway.
  log_ratio = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
               / jnp.float32(math.log(max_distance / max_exact)))
  if_large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
  if_large = jnp.minimum(if_large, num_buckets - 1)
  return bucket + jnp.where(is_small, distance, if_large)


class RelativePositionBias(nn.Module):
  """Learned [num_buckets, H] table -> float32 bias_HTS for query and key positions.

  Positions are 1-D (shared by the batch): the bias depends only on key - query, which is the same
  for segment-relative and absolute positions within a packed segment, and masked across segments.
  In cached decoding the query positions are the cache index + arange(L) against all S key slots.
  """
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  init_std: float = 0.02

  @nn.compact
  def __call__(self, q_positions_T, k_positions_S):
    table_NH = self.param('embedding', nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), ('relpos_buckets', 'heads')),
                          (self.num_buckets, self.num_heads), jnp.float32)
    relative_TS = k_positions_S[None, :] - q_positions_T[:, None]
    bucket_TS = relative_position_bucket(relative_TS, bidirectional=self.bidirectional,
                                         num_buckets=self.num_buckets,
                                         max_distance=self.max_distance)
    bias_TSH = jnp.take(table_NH, bucket_TS, axis=0)
    return jnp.transpose(bias_TSH, (2, 0, 1))
