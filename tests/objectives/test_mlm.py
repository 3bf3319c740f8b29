"""MLM batches: 15 % of eligible tokens chosen, 80/10/10 corruption, specials untouched, pure."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.errors import ConfigError
from research.objectives import mlm

VOCAB = 200
SENTINELS = (5, 6, 7)


class Tokenizer:
  """Stand-in with research.data.tokenizer's special layout: pad 0, eos 1, unk 2, bos 3,
  [MASK] 4, then sentinels."""
  pad_id, eos_id, unk_id, bos_id, mask_id = 0, 1, 2, 3, 4
  vocab_size = VOCAB
  num_sentinels = len(SENTINELS)

  def sentinel_id(self, i):
    return SENTINELS[i]


def _windows(b, t, seed=0):
  """Ordinary tokens with every special sprinkled in (eos as document ends)."""
  rng = np.random.default_rng(seed)
  windows = rng.integers(8, VOCAB, (b, t))
  specials = rng.random((b, t)) < 0.1
  windows[specials] = rng.choice([1, 2, 3, 4, *SENTINELS], specials.sum())
  return windows


def _batch(windows, seed=0, **rates):
  config = ml_collections.ConfigDict({'objective': {'name': 'mlm', **rates}})
  rngs = [np.random.default_rng([seed, row]) for row in range(len(windows))]
  return mlm.make_batch(windows, tokenizer=Tokenizer(), config=config, rngs=rngs)


@pytest.fixture(scope='module')
def big():
  windows = _windows(1000, 64)
  return windows, _batch(windows)


def test_fifteen_percent_of_eligible_tokens_are_chosen(big):
  windows, batch = big
  eligible = ~np.isin(windows, [0, 1, 2, 3, 4, *SENTINELS])
  chosen = batch['weights'] > 0
  assert not (chosen & ~eligible).any()  # specials are never chosen
  per_row = np.maximum(1, np.round(0.15 * eligible.sum(1)))
  np.testing.assert_array_equal(chosen.sum(1), per_row)
  assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.005


def test_eighty_ten_ten(big):
  windows, batch = big
  chosen = batch['weights'] > 0
  inputs, originals = batch['inputs'][chosen], windows[chosen]
  masked = inputs == 4
  replaced = ~masked & (inputs != originals)
  kept = inputs == originals
  # ~8,600 chosen tokens: 0.015 is over four standard deviations of each fraction.
  assert abs(masked.mean() - 0.8) < 0.015
  assert abs(replaced.mean() - 0.1) < 0.015  # a random draw equal to the original counts as kept
  assert abs(kept.mean() - 0.1) < 0.015
  assert not np.isin(inputs[replaced], [0, 1, 2, 3, 4, *SENTINELS]).any()
  assert len(np.unique(inputs[replaced])) > 100  # spread over the ordinary vocabulary


def test_only_chosen_positions_are_scored_or_changed(big):
  windows, batch = big
  chosen = batch['weights'] > 0
  np.testing.assert_array_equal(batch['targets'], windows)  # originals everywhere
  np.testing.assert_array_equal(batch['inputs'][~chosen], windows[~chosen])
  assert set(np.unique(batch['weights'])) == {0.0, 1.0}
  for name, array in batch.items():
    assert array.shape == windows.shape, name
    assert array.dtype == (np.float32 if name == 'weights' else np.int32), name


def test_same_rngs_same_batch_other_rngs_other_batch():
  windows = _windows(8, 64)
  a, b, c = _batch(windows), _batch(windows), _batch(windows, seed=1)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
  assert (a['weights'] != c['weights']).any()
  # A row's noise is its own generator's: the same row in a smaller batch is unchanged.
  half = mlm.make_batch(windows[:4], tokenizer=Tokenizer(), config=None,
                        rngs=[np.random.default_rng([0, row]) for row in range(4)])
  np.testing.assert_array_equal(half['inputs'], a['inputs'][:4])


def test_segments_and_positions_follow_eos_and_padding():
  windows = np.array([[10, 11, 1, 12, 13, 14, 1, 15, 0, 0]])
  batch = _batch(windows)
  np.testing.assert_array_equal(batch['segment_ids'], [[1, 1, 1, 2, 2, 2, 2, 3, 0, 0]])
  np.testing.assert_array_equal(batch['positions'][0, :8], [0, 1, 2, 0, 1, 2, 3, 0])


def test_rates_come_from_the_config_and_are_validated():
  windows = _windows(50, 64)
  batch = _batch(windows, mask_rate=0.5, mask_token_rate=1.0, random_token_rate=0.0)
  chosen = batch['weights'] > 0
  assert (batch['inputs'][chosen] == 4).all()
  assert 0.45 < chosen.sum() / (~np.isin(windows, [1, 2, 3, 4, *SENTINELS])).sum() < 0.55
  with pytest.raises(ConfigError, match='objective.mask_rate'):
    _batch(windows, mask_rate=0.0)
  with pytest.raises(ConfigError, match='objective.random_token_rate'):
    _batch(windows, mask_token_rate=0.95, random_token_rate=0.1)


def test_loss_counts_chosen_positions_only():
  windows = _windows(4, 16)
  batch = {k: jnp.asarray(v) for k, v in _batch(windows).items()}
  logits = np.random.default_rng(0).normal(size=(4, 16, VOCAB)).astype(np.float32)

  class Model:
    def apply(self, variables, inputs, positions, segment_ids, token_types, rngs=None):
      del variables, positions, segment_ids, token_types, rngs
      assert inputs.shape == (4, 16)
      return jnp.asarray(logits)

  loss_sum, aux = mlm.loss_fn(Model(), None, batch)
  chosen = np.asarray(batch['weights']) > 0
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_probs, windows[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss_sum), -picked[chosen].sum(), rtol=1e-5)
  assert float(aux['weight_sum']) == chosen.sum()
  assert float(aux['correct']) == (logits.argmax(-1) == windows)[chosen].sum()
  assert mlm.window_len(ml_collections.ConfigDict({'data': {'seq_len': 16}})) == 16  # no shift
