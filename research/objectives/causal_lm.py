"""Causal language modelling: predict token t+1 from tokens <= t."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def segments_from_eos(tokens_BT: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Segment ids (1, 2, ...) and per-segment positions for a window of concatenated documents.

  A document's EOS belongs to it; the next token starts a new segment whose positions restart at
  zero, so attention never crosses a document boundary inside a window.
  """
  is_eos = tokens_BT == eos_id
  starts_BT = np.zeros_like(is_eos)
  starts_BT[:, 1:] = is_eos[:, :-1]
  segment_ids_BT = np.cumsum(starts_BT, axis=1).astype(np.int32) + 1
  index_BT = np.broadcast_to(np.arange(tokens_BT.shape[1]), tokens_BT.shape)
  start_index_BT = np.maximum.accumulate(np.where(starts_BT, index_BT, 0), axis=1)
  positions_BT = (index_BT - start_index_BT).astype(np.int32)
  return segment_ids_BT, positions_BT


def window_len(config) -> int:
  return config.data.seq_len + 1


def init_args(batch_size: int, config):
  return (jnp.zeros((batch_size, config.data.seq_len), jnp.int32),)


def make_batch(window_BT1: np.ndarray, *, tokenizer, config=None, rngs=None
               ) -> dict[str, np.ndarray]:
  """[B, T+1] token windows -> inputs, targets, weights, segment ids and positions [B, T]."""
  del config, rngs  # no noise: the windows are the examples
  eos_id = tokenizer.eos_id
  inputs_BT = window_BT1[:, :-1].astype(np.int32)
  targets_BT = window_BT1[:, 1:].astype(np.int32)
  segment_ids_BT, positions_BT = segments_from_eos(inputs_BT, eos_id)
  # The token after an EOS starts a new document: it is not predictable from the old one.
  weights_BT = (inputs_BT != eos_id).astype(np.float32)
  return dict(inputs=inputs_BT, targets=targets_BT, weights=weights_BT,
              segment_ids=segment_ids_BT, positions=positions_BT)


def cross_entropy(logits_BTV, targets_BT, weights_BT):
  """Sum of token cross-entropies (float32), sum of weights, and number of correct argmaxes."""
  logits_BTV = logits_BTV.astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  loss_sum = jnp.sum((log_z_BT - target_logit_BT) * weights_BT)
  correct = jnp.sum((jnp.argmax(logits_BTV, -1) == targets_BT) * weights_BT)
  return loss_sum, jnp.sum(weights_BT), correct


def loss_fn(model, params, batch, *, rngs=None):
  """Returns (loss_sum, aux) so that micro-batches and hosts can be summed before dividing."""
  logits_BTV = model.apply({'params': params}, batch['inputs'], batch['positions'],
                           batch['segment_ids'], rngs=rngs)
  loss_sum, weight_sum, correct = cross_entropy(logits_BTV, batch['targets'], batch['weights'])
  return loss_sum, dict(loss_sum=loss_sum, weight_sum=weight_sum, correct=correct)
