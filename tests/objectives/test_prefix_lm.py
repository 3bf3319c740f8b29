"""Prefix LM: bidirectional prefix, causal continuation, loss on the continuation only."""

import jax
import jax.numpy as jnp
import numpy as np

from research import models
from research.objectives import prefix_lm
from tests import helpers


def _batch(b=64, t=16, seed=0):
  window = np.random.default_rng(seed).integers(4, 128, (b, t + 1))
  rngs = [np.random.default_rng([seed, i]) for i in range(b)]
  return prefix_lm.make_batch(window, tokenizer=helpers.SyntheticTokenizer(128), rngs=rngs)


def test_split_points_and_weights():
  batch = _batch()
  lengths = batch['prefix'].sum(1)
  assert lengths.min() >= 1 and lengths.max() <= 15 and len(set(lengths)) > 5
  for row, p in enumerate(lengths):
    # Scored: the last prefix position (it predicts the first continuation token) and after.
    np.testing.assert_array_equal(batch['weights'][row], np.arange(16) >= p - 1)
  np.testing.assert_array_equal(_batch()['prefix'], batch['prefix'])  # same rngs, same split


def test_prefix_sees_its_future_but_continuation_stays_causal():
  config = helpers.tiny_config(**{'objective.name': 'prefix_lm'})
  model = models.build_model(config)
  tokens = jax.random.randint(jax.random.key(0), (1, 10), 4, 128)
  prefix = jnp.arange(10)[None] < 4
  params = model.init(jax.random.key(1), tokens)['params']
  run = lambda toks: model.apply({'params': params}, toks, None, None, prefix)
  base = run(tokens)
  # Changing prefix token 3 changes prefix position 0's output (bidirectional prefix).
  changed = run(tokens.at[0, 3].set((tokens[0, 3] + 1) % 128))
  assert float(jnp.abs(changed[0, 0] - base[0, 0]).max()) > 1e-4
  # Changing continuation token 7 leaves positions 0..6 unchanged (causal after the prefix).
  changed = run(tokens.at[0, 7].set((tokens[0, 7] + 1) % 128))
  np.testing.assert_allclose(changed[0, :7], base[0, :7], atol=1e-5)


def test_prefix_lm_trains():
  from research.training import metrics, trainer
  import tempfile
  config = helpers.tiny_config(**{'objective.name': 'prefix_lm', 'train.steps': 30})
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train(config, workdir, dataset=helpers.PatternDataset())
    losses = [m['train/loss'] for m in metrics.read_metrics(workdir) if 'train/loss' in m]
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
