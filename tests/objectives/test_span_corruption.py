"""T5 span corruption: T5's lengths, noise statistics, sentinels, and exact reconstruction."""

from __future__ import annotations

import numpy as np
import pytest

from research import config_lib
from research.errors import ConfigError
from research.objectives import span_corruption as sc

VOCAB = 1000
FIRST_TEXT_ID = 200  # above every special and sentinel id of the stand-in tokenizer


class SentinelTokenizer:
  """The ids span corruption reads: pad 0, eos 1, and sentinels <extra_id_i> = 5 + i."""
  pad_id, eos_id, unk_id, bos_id = 0, 1, 2, 3

  def __init__(self, vocab_size=VOCAB, num_sentinels=100):
    self.vocab_size, self.num_sentinels = vocab_size, num_sentinels

  def sentinel_id(self, i):
    assert 0 <= i < self.num_sentinels
    return 5 + i


def config_for(seq_len, **objective):
  c = config_lib.base_config()
  c.data.seq_len = seq_len
  c.objective.name = 'span_corruption'
  for key, value in objective.items():
    c.objective[key] = value
  return c


def corrupt_batch(seq_len, batch=32, seed=0, tokenizer=None, **objective):
  config = config_for(seq_len, **objective)
  window_len = sc.window_len(config)
  rng = np.random.default_rng(seed)
  windows = rng.integers(FIRST_TEXT_ID, VOCAB, (batch, window_len)).astype(np.int32)
  rngs = [np.random.default_rng([seed, row]) for row in range(batch)]
  out = sc.make_batch(windows, tokenizer=tokenizer or SentinelTokenizer(), config=config,
                      rngs=rngs)
  return config, windows, out


def t5_random_spans_helper(inputs_length, noise_density, mean_noise_span_length):
  """T5's `random_spans_helper` (t5/data/preprocessors.py), one sentinel per span each side."""

  def lengths_of(tokens_length):
    num_noise_tokens = int(round(tokens_length * noise_density))
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
    return num_nonnoise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1

  tokens_length = inputs_length - 1
  while lengths_of(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  inputs_length, targets_length = lengths_of(tokens_length)
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def test_lengths_match_t5_random_spans_helper():
  # The T5 paper's pre-training lengths: 512 inputs from 568 raw tokens, 114 targets.
  assert sc.random_spans_helper(512, 0.15, 3.0) == (568, 114)
  assert sc.window_len(config_for(512)) == 568
  for density, mean_span in [(0.15, 3.0), (0.5, 3.0), (0.3, 8.0), (0.15, 1.0)]:
    for seq_len in range(16, 1100, 7):
      assert sc.random_spans_helper(seq_len, density, mean_span) == t5_random_spans_helper(
          seq_len, density, mean_span), (seq_len, density, mean_span)


@pytest.mark.parametrize('seq_len', [8, 33, 64, 128, 512])
def test_static_shapes_equal_the_computed_lengths(seq_len):
  config, windows, out = corrupt_batch(seq_len, batch=8)
  raw, inputs_len, targets_len = sc.lengths(config)
  assert windows.shape[1] == raw and inputs_len == seq_len
  assert out['encoder_inputs'].shape == (8, seq_len)
  for key in ('decoder_inputs', 'targets', 'weights', 'decoder_segment_ids'):
    assert out[key].shape == (8, targets_len), key
  # The raw window is the longest whose inputs fit: no padding is ever needed.
  assert np.all(out['encoder_segment_ids'] == 1)
  assert np.all(out['weights'] == 1)
  assert np.all(out['encoder_inputs'][:, -1] == 1) and np.all(out['targets'][:, -1] == 1)


def test_noise_density_and_mean_span_length():
  length, density, mean_span = 568, 0.15, 3.0
  rng = np.random.default_rng(0)
  noise_fraction, spans, span_lengths = [], [], []
  for _ in range(200):
    mask = sc.random_spans_noise_mask(length, density, mean_span, rng)
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    ends = np.flatnonzero(mask & ~np.concatenate([mask[1:], [False]]))
    noise_fraction.append(mask.mean())
    spans.append(len(starts))
    span_lengths.extend(ends - starts + 1)
    assert not mask[0] and mask[-1]  # T5: a non-noise span first, a noise span last
  assert np.allclose(noise_fraction, 85 / 568)  # round(568 * 0.15) tokens, exactly
  assert set(spans) == {28}  # round(85 / 3) spans, exactly
  assert abs(np.mean(span_lengths) - 3.0) < 0.05
  # Span lengths are random (T5 partitions uniformly), not all equal to the mean.
  assert min(span_lengths) == 1 and max(span_lengths) >= 8


def reconstruct(inputs, targets, sentinel_ids, eos_id=1):
  """Fills each sentinel in `inputs` with the span that follows it in `targets`."""
  spans, current = {}, None
  for token in targets:
    if token == eos_id:
      break
    if token in sentinel_ids:
      current = int(token)
      spans[current] = []
    else:
      spans[current].append(int(token))
  out = []
  for token in inputs:
    if token == eos_id:
      break
    out.extend(spans.pop(int(token)) if token in sentinel_ids else [int(token)])
  assert not spans, 'every target span is used once'
  return np.array(out)


@pytest.mark.parametrize('seq_len,mean_span', [(64, 3.0), (128, 3.0), (100, 1.0), (96, 8.0)])
def test_filling_sentinels_restores_the_window(seq_len, mean_span):
  tokenizer = SentinelTokenizer()
  sentinels = {tokenizer.sentinel_id(i) for i in range(tokenizer.num_sentinels)}
  _, windows, out = corrupt_batch(seq_len, tokenizer=tokenizer, mean_span_length=mean_span)
  for row in range(len(windows)):
    restored = reconstruct(out['encoder_inputs'][row], out['targets'][row], sentinels)
    np.testing.assert_array_equal(restored, windows[row])


def test_sentinels_count_up_from_extra_id_0():
  tokenizer = SentinelTokenizer()
  _, _, out = corrupt_batch(128, tokenizer=tokenizer)
  for inputs, targets in zip(out['encoder_inputs'], out['targets']):
    in_sentinels = inputs[(inputs >= 5) & (inputs < 105)]
    target_sentinels = targets[(targets >= 5) & (targets < 105)]
    expected = [tokenizer.sentinel_id(i) for i in range(len(in_sentinels))]
    np.testing.assert_array_equal(in_sentinels, expected)
    np.testing.assert_array_equal(target_sentinels, expected)
    assert targets[0] == tokenizer.sentinel_id(0)


def test_decoder_inputs_are_targets_shifted_behind_the_pad_start_token():
  _, _, out = corrupt_batch(64)
  assert np.all(out['decoder_inputs'][:, 0] == 0)
  np.testing.assert_array_equal(out['decoder_inputs'][:, 1:], out['targets'][:, :-1])


def test_noise_comes_only_from_the_row_generators():
  _, _, a = corrupt_batch(64, seed=3)
  _, _, b = corrupt_batch(64, seed=3)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  config = config_for(64)
  windows = np.full((2, sc.window_len(config)), 300, np.int32)
  windows[:, ::2] = 301
  out = sc.make_batch(windows, tokenizer=SentinelTokenizer(), config=config,
                      rngs=[np.random.default_rng(7), np.random.default_rng(7)])
  np.testing.assert_array_equal(out['encoder_inputs'][0], out['encoder_inputs'][1])
  out = sc.make_batch(windows, tokenizer=SentinelTokenizer(), config=config,
                      rngs=[np.random.default_rng(7), np.random.default_rng(8)])
  assert not np.array_equal(out['encoder_inputs'][0], out['encoder_inputs'][1])


def test_too_few_sentinels_is_a_config_error():
  with pytest.raises(ConfigError, match='data.num_sentinels'):
    corrupt_batch(512, tokenizer=SentinelTokenizer(num_sentinels=10))


@pytest.mark.parametrize('settings,field', [
    (dict(noise_density=0.0), 'noise_density'), (dict(noise_density=1.5), 'noise_density'),
    (dict(mean_span_length=0.5), 'mean_span_length'),
    (dict(noise_density=0.9, mean_span_length=1.0), 'noise_density')])
def test_bad_settings_name_the_field(settings, field):
  with pytest.raises(ConfigError, match=f'objective.{field}'):
    sc.window_len(config_for(64, **settings))
