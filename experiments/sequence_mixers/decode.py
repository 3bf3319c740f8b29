"""Decoding cost: generated tokens per second and cache bytes against context length.

For a model (random weights: speed and memory do not depend on them) and a context of L tokens
(prompt P = L - N plus N generated), the cache is research.inference.decoding.init_cache's tree
for one row of P + N - 1 slots, the size `generate` allocates, summed over its leaves' nbytes:
attention keeps every position's keys and values (linear in L), a sliding window a rolling
cache of W slots, a recurrent mixer its state and convolution window (constant in L).

`generate` is one compiled program: prefill, then a loop of one token per step. Timing it with
N tokens and with 1 token (each after a warm-up call that compiles it) separates the two: the
prefill is the 1-token time, and the decode rate is (N - 1) / (time(N) - time(1)).
"""

from __future__ import annotations

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


def measure(config, context: int, new_tokens: int, *, batch: int = 1, repeats: int = 3) -> dict:
  """One (model, context) row: cache bytes, prefill seconds, decode tokens/s."""
  model = models.build_model(config)
  prompt_len = context - new_tokens
  rng = np.random.default_rng(context)
  prompt_BP = rng.integers(4, config.model.vocab_size, (batch, prompt_len)).astype(np.int32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), prompt_BP[:, :64])['params'])
  prefill_s = _timed_generate(model, params, prompt_BP, 1, repeats)
  total_s = _timed_generate(model, params, prompt_BP, new_tokens, repeats)
  loop_s = total_s - prefill_s  # > 0 but for timing noise on tiny models (then: no rate)
  return {'context': context, 'prompt': prompt_len, 'new_tokens': new_tokens, 'batch': batch,
          'cache_bytes': cache_bytes(model, prompt_len + new_tokens - 1, batch),
          'prefill_s': prefill_s, 'generate_s': total_s,
          'decode_tokens_per_s': batch * (new_tokens - 1) / loop_s if loop_s > 0 else None}
