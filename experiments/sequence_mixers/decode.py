"""Decoding cost: generated tokens per second and cache bytes against context length.

For a model (random weights: speed and memory do not depend on them) and a context of L tokens
(prompt P = L - N plus N generated), the cache is research.inference.decoding.init_cache's tree
for one row of P + N - 1 slots, the size `generate` allocates, summed over its leaves' nbytes:
attention keeps every position's keys and values (linear in L), a sliding window a rolling
cache of W slots, a recurrent mixer its state and convolution window (constant in L).

Prefill: the median time of `generate` with one new token (after a call that compiles it).
Decode rate: the median time of one decoding step (research.inference.decoding's jitted
one-column forward through the cache, the body of `generate`'s token loop) against a cache of
the context's length, over `repeats` x 8 steps: a step's cost depends on the cache's size,
not its contents (attention reads every slot, masked or not), so the cache is init_cache's.
Subtracting two `generate` times instead drowns the loop in the prefill's noise at long
contexts.
"""

from __future__ import annotations

import functools
import time

import flax.linen as nn
import jax
import numpy as np

from research import models
from research.inference import decoding


def cache_bytes(model, length: int, batch: int = 1) -> int:
  """Bytes of the decode cache `generate` builds for `length` slots."""
  decoder = model.clone(decode=True, deterministic=True)
  cache = decoding.init_cache(decoder, batch, length)
  return int(sum(x.nbytes for x in jax.tree.leaves(cache)))


def _timed_generate(model, params, prompt_BP, new_tokens: int, repeats: int) -> float:
  """The median seconds of `repeats` calls after one that compiles."""
  kwargs = dict(max_new_tokens=new_tokens, temperature=0.0)
  jax.block_until_ready(decoding.generate(model, params, prompt_BP, jax.random.key(0), **kwargs))
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(decoding.generate(model, params, prompt_BP, jax.random.key(i + 1),
                                            **kwargs))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _step_seconds(model, params, batch: int, slots: int, position: int, repeats: int) -> float:
  """Median seconds of one decoding step (one new token per row) against a cache of `slots`."""
  decoder = model.clone(decode=True, deterministic=True)
  cache = decoding.init_cache(decoder, batch, slots)
  step = jax.jit(functools.partial(decoding._forward, decoder))  # pylint: disable=protected-access
  tokens_B1 = np.full((batch, 1), 5, np.int32)
  positions_B1 = np.full((batch, 1), position, np.int32)
  segments_B1 = np.ones((batch, 1), np.int32)
  variables = decoding.model_variables(params)
  jax.block_until_ready(step(variables, cache, tokens_B1, positions_B1, segments_B1))
  times = []
  for _ in range(8 * repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(variables, cache, tokens_B1, positions_B1, segments_B1))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure(config, context: int, new_tokens: int, *, batch: int = 1, repeats: int = 3) -> dict:
  """One (model, context) row: cache bytes, prefill seconds, decode tokens/s at the context."""
  model = models.build_model(config)
  prompt_len = context - new_tokens
  rng = np.random.default_rng(context)
  prompt_BP = rng.integers(4, config.model.vocab_size, (batch, prompt_len)).astype(np.int32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), prompt_BP[:, :64])['params'])
  prefill_s = _timed_generate(model, params, prompt_BP, 1, repeats)
  slots = prompt_len + new_tokens - 1
  step_s = _step_seconds(model, params, batch, slots, slots - 1, repeats)
  return {'context': context, 'prompt': prompt_len, 'new_tokens': new_tokens, 'batch': batch,
          'cache_bytes': cache_bytes(model, slots, batch), 'prefill_s': prefill_s,
          'step_s': step_s, 'decode_tokens_per_s': batch / step_s}
