"""Cost of attention patterns and implementations: forward + backward time and memory vs length.

One case is (pattern, implementation); one measurement is a jitted gradient of
sum(attention(q, k, v) * cotangent) with respect to q, k and v, for one causal self-attention
of B x T x H x K (the attention alone: no projections, which are linear in T anyway). Time is
the median over `repeats` calls after `warmup` calls of the compiled executable; memory is XLA's
compiled estimate (temporaries + arguments + outputs), the same number on every backend, plus
the device's own peak where it reports one (GPU, TPU).

Quadratic cases (full attention, the mask-only control) are skipped with a note past the
length whose score matrices would exceed `max_dense_bytes`. Implementations that this backend
cannot run (cuDNN off GPU, splash off TPU) are skipped with a note.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.layers import attention
from research.layers import patterns as patterns_lib

QUADRATIC = ('xla',)  # dense scores: full attention and the mask-only control


@dataclasses.dataclass(frozen=True)
class Case:
  pattern: str  # a patterns.KINDS name
  implementation: str  # an attention.IMPLEMENTATIONS name, not 'auto'

  @property
  def name(self) -> str:
    label = {'xla': 'xla (mask-only control)' if self.pattern != 'full' else 'xla'}
    return f'{self.pattern}/{label.get(self.implementation, self.implementation)}'


def parse_cases(text: str) -> list[Case]:
  """'full:xla,sliding:blockwise,...' -> cases."""
  from research.errors import ConfigError  # pylint: disable=g-import-not-at-top
  cases = []
  for item in str(text).split(','):
    pattern, _, impl = item.strip().partition(':')
    if pattern not in patterns_lib.KINDS or impl not in attention.IMPLEMENTATIONS[1:]:
      raise ConfigError('sparse_attention.cases', text,
                        f"'{item.strip()}': write PATTERN:IMPLEMENTATION with a pattern of "
                        f'{list(patterns_lib.KINDS)} and an implementation of '
                        f'{list(attention.IMPLEMENTATIONS[1:])}')
    cases.append(Case(pattern, impl))
  return cases


def pattern_of(case: Case, att) -> patterns_lib.Pattern:
  """The case's pattern with the shared fields of `model.attention`-like `att`."""
  return patterns_lib.Pattern(kind=case.pattern, window=att.window,
                              global_tokens=att.global_tokens, block_size=att.block_size,
                              random_blocks=att.random_blocks, chunk=att.chunk, seed=att.seed)


def unavailable(case: Case, pattern: patterns_lib.Pattern, *, causal: bool,
                backend: str | None = None) -> str | None:
  """Why this backend cannot run the case, or None."""
  backend = backend or jax.default_backend()
  if not attention.supports(case.implementation, pattern, causal=causal):
    return f'{case.implementation} cannot compute {pattern.describe()}'
  if case.implementation == 'cudnn' and backend != 'gpu':
    return 'cuDNN needs a GPU'
  if case.implementation == 'splash' and (backend != 'tpu' or not attention.splash_available()):
    return 'splash attention needs a TPU'
  return None


def dense_bytes(batch: int, heads: int, length: int) -> int:
  """Float32 score-sized arrays a dense forward + backward keeps: scores, probabilities and
  their gradient (about 3 x B x H x T^2 x 4 bytes)."""
  return 3 * batch * heads * length * length * 4


def attention_fn(case: Case, pattern: patterns_lib.Pattern, *, causal: bool) -> Callable:
  """(q, k, v, segment_ids) -> out for the case."""
  def fn(q, k, v, segment_ids_BT):
    spec = attention.MaskSpec.self_attention(segment_ids_BT, causal=causal)
    if case.implementation == 'cudnn' and not pattern.is_full:
      # One example per row: no segment mask, so cuDNN's path stays linear.
      return attention.attend_cudnn_window(q, k, v, pattern.window)
    if case.implementation == 'cudnn':
      return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation='cudnn')
    if case.implementation == 'splash':
      return attention.attend_splash(q, k, v, pattern, segment_ids_BT=segment_ids_BT,
                                     causal=causal)
    return attention.attend(case.implementation, q, k, v, spec, pattern)
  return fn


def _device_peak_bytes() -> int | None:
  stats = getattr(jax.devices()[0], 'memory_stats', lambda: None)()
  return None if not stats else stats.get('peak_bytes_in_use')


def time_compiled(step, args, *, warmup: int, repeats: int) -> dict:
  """Compiles jitted `step` for `args` and times it: the median, min and max of `repeats` calls
  after `warmup`, XLA's compiled memory estimate and the device's peak (other studies time their
  own kernels through this too, so every cost line is measured alike)."""
  start = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  xla_bytes = None
  if analysis is not None:
    xla_bytes = int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes +
                    analysis.output_size_in_bytes)
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return {'time_s': float(np.median(times)), 'time_min_s': float(min(times)),
          'time_max_s': float(max(times)), 'repeats': repeats, 'memory_bytes': xla_bytes,
          'device_peak_bytes': _device_peak_bytes(), 'compile_s': compile_s}


def measure(case: Case, pattern: patterns_lib.Pattern, length: int, *, batch: int, heads: int,
            kv_heads: int, head_dim: int, dtype, causal: bool = True, warmup: int = 1,
            repeats: int = 3) -> dict:
  """Times one forward + backward; returns a row (seconds, bytes, FLOPs)."""
  ks = jax.random.split(jax.random.key(length), 4)
  q = jax.random.normal(ks[0], (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(ks[1], (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(ks[2], (batch, length, kv_heads, head_dim), dtype)
  cot = jax.random.normal(ks[3], (batch, length, heads, head_dim), dtype)
  seg = jnp.ones((batch, length), jnp.int32)
  fn = attention_fn(case, pattern, causal=causal)

  def loss(q, k, v, seg):
    return jnp.sum(fn(q, k, v, seg).astype(jnp.float32) * cot.astype(jnp.float32))

  step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  timing = time_compiled(step, (q, k, v, seg), warmup=warmup, repeats=repeats)
  attended = patterns_lib.visible_keys(pattern, length, causal=causal)
  # Model FLOPs of attention's two matmuls, forward and backward: 3 x 2 x 2 x B x T x keys x H x K.
  flops = 12 * batch * length * attended * heads * head_dim
  return {'pattern': case.pattern, 'implementation': case.implementation, 'case': case.name,
          'length': length, **timing, 'attended_keys': attended, 'model_flops': flops,
          'tflops_per_s': flops / timing['time_s'] / 1e12, 'note': ''}
