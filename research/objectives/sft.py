"""Supervised fine-tuning: cross-entropy on response tokens only (research/data/sft.py builds
the batches from JSONL prompt/response or chat rows).

Decoders read packed rows (inputs, targets, weights, segment_ids, positions), exactly as causal
LM but with zero weight on prompt tokens; encoder-decoders read the prompt in the encoder and
predict the response, as span corruption's batches.
"""

from __future__ import annotations

import jax.numpy as jnp

from research.objectives import causal_lm, span_corruption


def load_dataset(config, workdir: str):
  from research.data import sft  # pylint: disable=g-import-not-at-top
  return sft.load_sft(config, sft.tokenizer_for(config, workdir))


def window_len(config) -> int:
  return config.data.seq_len + 1


def init_args(batch_size: int, config):
  t = config.data.seq_len
  if config.model.family == 'encoder_decoder':
    return (jnp.zeros((batch_size, t), jnp.int32), jnp.zeros((batch_size, t), jnp.int32))
  return (jnp.zeros((batch_size, t), jnp.int32),)


def make_batch(rows, *, tokenizer=None, config=None, rngs=None):
  """The dataset's rows are already the batch (fixed shapes, response-only weights)."""
  del tokenizer, config, rngs
  return dict(rows)


def loss_fn(model, params, batch, *, rngs=None, model_state=None):
  if 'encoder_inputs' in batch:
    return span_corruption.loss_fn(model, params, batch, rngs=rngs, model_state=model_state)
  return causal_lm.loss_fn(model, params, batch, rngs=rngs, model_state=model_state)
