"""Batches as a pure function of (seed, step)."""

from __future__ import annotations

import numpy as np
import pytest

from research import errors
from research.data import sampler

NUM_TOKENS, WINDOW, BATCH = 10_000, 65, 16


def test_same_seed_and_step_give_the_same_starts():
  a = sampler.train_window_starts(3, 7, BATCH, NUM_TOKENS, WINDOW)
  b = sampler.train_window_starts(3, 7, BATCH, NUM_TOKENS, WINDOW)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (BATCH,)


def test_different_steps_or_seeds_give_different_starts():
  base = sampler.train_window_starts(3, 7, BATCH, NUM_TOKENS, WINDOW)
  assert not np.array_equal(base, sampler.train_window_starts(3, 8, BATCH, NUM_TOKENS, WINDOW))
  assert not np.array_equal(base, sampler.train_window_starts(4, 7, BATCH, NUM_TOKENS, WINDOW))


def test_starts_stay_in_bounds_and_reach_both_ends():
  starts = np.concatenate(
      [sampler.train_window_starts(0, step, 64, 100, 10) for step in range(200)]
  )
  assert starts.min() == 0
  assert starts.max() == 100 - 10  # The last window ends exactly at the last token.


def test_two_process_slices_concatenate_to_the_global_batch():
  starts = sampler.train_window_starts(1, 5, BATCH, NUM_TOKENS, WINDOW)
  halves = [starts[sampler.process_slice(BATCH, i, 2)] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), starts)
  assert sampler.process_slice(BATCH, 0, 1) == slice(0, BATCH)


def test_process_slice_rejects_indivisible_batches_and_bad_indices():
  with pytest.raises(errors.UserError, match='not divisible by process_count=3'):
    sampler.process_slice(16, 0, 3)
  with pytest.raises(errors.UserError, match='process_index=2'):
    sampler.process_slice(16, 2, 2)


def test_eval_windows_tile_the_stream_in_order():
  num_tokens, window, batch = 1000, 11, 8
  windows = sampler.num_eval_windows(num_tokens, window)
  assert windows == 99  # (1000 - 1) // 10: every token after the first is a target once.
  batches = sampler.num_eval_batches(batch, num_tokens, window)
  assert batches == 12  # 3 trailing windows do not fill a batch and are skipped.
  starts = np.concatenate(
      [sampler.eval_window_starts(i, batch, num_tokens, window) for i in range(batches)]
  )
  np.testing.assert_array_equal(starts, np.arange(96) * 10)
  assert starts.max() + window <= num_tokens


def test_eval_wraps_when_the_split_is_smaller_than_a_batch():
  assert sampler.num_eval_batches(8, 31, 11) == 1
  np.testing.assert_array_equal(
      sampler.eval_window_starts(0, 8, 31, 11), [0, 10, 20, 0, 10, 20, 0, 10]
  )


def test_too_few_tokens_for_a_window_is_an_error():
  with pytest.raises(errors.UserError, match='cannot hold a window of 65'):
    sampler.train_window_starts(0, 0, 4, 64, 65)
