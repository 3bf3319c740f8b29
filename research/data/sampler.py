"""Where each batch's windows start: a pure function of (seed, step), never iterator state.

A training batch is `global_batch` windows of `window` tokens at uniformly random starts in the
split's token stream (documents joined by eos, so a window may span documents). The starts depend
only on (seed, step, global_batch, num_tokens, window): resuming needs only the step, and a run on
any number of processes sees the same global batch, each process taking its `process_slice`.

Evaluation reads the validation stream in order. Consecutive windows overlap by exactly one
token, so that the targets (tokens 1..window-1 of each window) tile the stream: every token after
the first is predicted exactly once per pass. Only whole batches are evaluated; the last windows
that do not fill one are skipped, except that a split holding less than one batch wraps around to
its start to fill it (so a tiny split is still evaluated, some windows twice).
"""

from __future__ import annotations

import numpy as np

from research import errors

_MIXTURE_STREAM = 2**31 - 2  # keeps the mixture's draws apart from the window starts


def train_window_starts(
    seed: int, step: int, global_batch: int, num_tokens: int, window: int
) -> np.ndarray:
  """Start offsets [global_batch] of the training windows of `step`."""
  _check_window(num_tokens, window)
  if seed < 0 or step < 0:
    raise errors.UserError(f'seed={seed}, step={step}: both must be >= 0')
  rng = np.random.default_rng([seed, step])
  return rng.integers(0, num_tokens - window + 1, size=global_batch, dtype=np.int64)


def window_starts(key: tuple[int, ...], global_batch: int, num_tokens: int,
                  window: int) -> np.ndarray:
  """Uniform start offsets [global_batch] drawn from the generator seeded with `key`."""
  _check_window(num_tokens, window)
  return np.random.default_rng(list(key)).integers(0, num_tokens - window + 1, size=global_batch,
                                                   dtype=np.int64)


def mixture_choices(seed: int, step: int, global_batch: int, weights) -> np.ndarray:
  """Which source [global_batch] each row of `step` reads: independent draws by weight."""
  rng = np.random.default_rng([seed, step, _MIXTURE_STREAM])
  return rng.choice(len(weights), size=global_batch, p=np.asarray(weights) / np.sum(weights))


def num_eval_windows(num_tokens: int, window: int) -> int:
  """Windows in one ordered pass over a split (consecutive windows share one token)."""
  _check_window(num_tokens, window)
  return (num_tokens - 1) // (window - 1)


def num_eval_batches(global_batch: int, num_tokens: int, window: int) -> int:
  """Whole batches in one pass; at least 1 (a split smaller than a batch wraps around)."""
  return max(1, num_eval_windows(num_tokens, window) // global_batch)


def eval_window_starts(
    batch_index: int, global_batch: int, num_tokens: int, window: int
) -> np.ndarray:
  """Start offsets [global_batch] of evaluation batch `batch_index` (wraps past the end)."""
  num_windows = num_eval_windows(num_tokens, window)
  indices_B = batch_index * global_batch + np.arange(global_batch, dtype=np.int64)
  return (indices_B % num_windows) * (window - 1)


def process_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  """The rows of the global batch that process `process_index` loads."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise errors.UserError(
        f'process_index={process_index} is not in [0, process_count={process_count})'
    )
  if global_batch % process_count:
    raise errors.UserError(
        f'global batch size {global_batch} is not divisible by process_count={process_count}: '
        f'use a multiple of {process_count}'
    )
  rows = global_batch // process_count
  return slice(process_index * rows, (process_index + 1) * rows)


def _check_window(num_tokens: int, window: int):
  if window < 2:
    raise errors.UserError(f'window={window}: needs at least 2 tokens (an input and a target)')
  if num_tokens < window:
    raise errors.UserError(f'{num_tokens} tokens cannot hold a window of {window}')
