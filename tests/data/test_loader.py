"""Grain loading and mixtures: batches are pure functions of (seed, step) whether built in the
trainer or by worker processes, restart anywhere, split by process, and mix by weight."""

from __future__ import annotations

import math

import numpy as np
import pytest

from research import config_lib
from research import errors
from research.data import loader
from research.data import pipeline
from research.data import sampler
from research.training import trainer
from tests import helpers


def _config(prepared_corpus, cache_dir, **overrides):
  fields = {'data.source': f'prepared:{prepared_corpus}', 'data.vocab_size': 512,
            'data.num_sentinels': 8, 'data.seq_len': 32, 'data.cache_dir': cache_dir,
            'train.batch_size': 8}
  fields.update(overrides)
  return helpers.tiny_config(**fields)


def _same(a: dict, b: dict):
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_worker_processes_build_the_same_batches(prepared_corpus, tmp_path):
  # Span corruption: the objective's noise runs in the workers, from per-row generators.
  config = _config(prepared_corpus, str(tmp_path), **{
      'model.family': 'encoder_decoder', 'objective.name': 'span_corruption',
      'model.position': 'relative'})
  dataset = pipeline.load_dataset(config.data)
  builder = loader.BatchBuilder(dataset=dataset, config=config)
  inline = list(loader.train_batches(builder, 3, 9))
  workers = loader.train_batches(builder, 3, 9, workers=2)
  parallel = list(workers)
  assert len(inline) == len(parallel) == 6
  for a, b in zip(inline, parallel):
    _same(a, b)
  for step, batch in zip(range(3, 9), inline):
    _same(batch, builder.train(step))


def test_restart_at_any_step_and_process_slices(prepared_corpus, tmp_path):
  config = _config(prepared_corpus, str(tmp_path))
  dataset = pipeline.load_dataset(config.data)
  whole = loader.BatchBuilder(dataset=dataset, config=config)
  uninterrupted = list(loader.train_batches(whole, 0, 6))
  resumed = list(loader.train_batches(whole, 4, 6))
  for a, b in zip(uninterrupted[4:], resumed):
    _same(a, b)
  halves = [loader.BatchBuilder(dataset=dataset, config=config, process_index=i,
                                process_count=2).train(5) for i in range(2)]
  for key, value in uninterrupted[5].items():
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value)


def _two_corpora(tmp_path, make_data_config):
  """Two text corpora that share a tokenizer but not their words, prepared separately."""
  from research.data import prepare
  for name, word in (('upper', 'ALPHA BETA GAMMA'), ('lower', 'delta epsilon zeta')):
    directory = tmp_path / name
    directory.mkdir()
    for i in range(10):
      (directory / f'{i}.txt').write_text(f'{word} {i}\n' * 60)
  both = tmp_path / 'both'
  both.mkdir()
  for name in ('upper', 'lower'):
    for path in (tmp_path / name).iterdir():
      (both / f'{name}{path.name}').write_text(path.read_text())
  prepare.prepare(prepare.Settings(source=f'text:{both}/*.txt', out=str(tmp_path / 'tok'),
                                   vocab_size=320, num_sentinels=0))
  tokenizer = str(tmp_path / 'tok' / 'tokenizer.model')
  for name in ('upper', 'lower'):
    prepare.prepare(prepare.Settings(source=f'text:{tmp_path / name}/*.txt',
                                     out=str(tmp_path / f'{name}_prepared'), tokenizer=tokenizer))
  return make_data_config(
      str(tmp_path / 'cache'), vocab_size=320, num_sentinels=0, seq_len=16,
      sources=f'upper=prepared:{tmp_path}/upper_prepared,lower=prepared:{tmp_path}/lower_prepared',
      mixture='upper=3,lower=1')


def test_mixture_draws_rows_by_weight(tmp_path, make_data_config):
  data_config = _two_corpora(tmp_path, make_data_config)
  dataset = pipeline.load_dataset(data_config)
  assert dataset.weights == {'upper': 0.75, 'lower': 0.25}
  steps, rows = 100, 16
  upper = 0
  for step in range(steps):
    batch = dataset.train_batch(7, step, rows, 16)
    for row in batch:
      text = dataset.tokenizer.decode(row)
      is_upper = 'ALPHA' in text or 'BETA' in text or 'GAMMA' in text
      assert is_upper != ('delta' in text or 'epsilon' in text or 'zeta' in text)
      upper += is_upper
  n = steps * rows
  assert abs(upper / n - 0.75) < 3 * math.sqrt(0.75 * 0.25 / n)
  np.testing.assert_array_equal(dataset.train_batch(7, 3, rows, 16),
                                dataset.train_batch(7, 3, rows, 16))
  halves = [dataset.train_batch(7, 3, rows, 16, process_index=i, process_count=2)
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), dataset.train_batch(7, 3, rows, 16))


def test_mixture_choices_follow_the_weights_over_many_steps():
  weights = [0.7, 0.2, 0.1]
  choices = np.concatenate([sampler.mixture_choices(0, s, 64, weights) for s in range(500)])
  for k, p in enumerate(weights):
    assert abs(np.mean(choices == k) - p) < 3 * math.sqrt(p * (1 - p) / len(choices))


def test_mixture_eval_reports_each_source_and_bits_per_byte(tmp_path, make_data_config):
  data_config = _two_corpora(tmp_path, make_data_config)
  config = helpers.tiny_config(**{f'data.{k}': v for k, v in data_config.items()})
  dataset = pipeline.load_dataset(config.data)
  run = trainer.build_run(config)
  state = trainer.init_state(run, 0)
  metrics = trainer.evaluate(run, state.params, dataset, num_batches=2)
  for name in ('upper', 'lower'):
    split = dataset.components[name].validation
    loss, tokens = metrics[f'eval/{name}/loss'], metrics[f'eval/{name}/tokens']
    # Bytes of the scored text, counted exactly; near the split's average bytes per token.
    assert metrics[f'eval/{name}/bpb'] == pytest.approx(loss / math.log(2) /
                                                        split.bytes_per_token, rel=0.1)
  total = sum(metrics[f'eval/{n}/loss'] * metrics[f'eval/{n}/tokens'] for n in ('upper', 'lower'))
  tokens = metrics['eval/upper/tokens'] + metrics['eval/lower/tokens']
  assert metrics['eval/tokens'] == tokens
  assert metrics['eval/loss'] == pytest.approx(total / tokens, rel=1e-5)
  assert 'eval/bpb' in metrics


def test_mixture_errors_name_the_field(tmp_path, make_data_config):
  config = make_data_config(str(tmp_path), sources='a=prepared:/x', mixture='a=1,b=1')
  with pytest.raises(errors.ConfigError, match=r"^data\.mixture='a=1,b=1': 'b' is not in "
                     r"data\.sources"):
    pipeline.load_dataset(config)
  config = make_data_config(str(tmp_path), sources='a=prepared:/x', mixture='a=-1')
  with pytest.raises(errors.ConfigError, match='positive weights'):
    pipeline.load_dataset(config)
  config = make_data_config(str(tmp_path), sources='a', mixture='a=1')
  with pytest.raises(errors.ConfigError, match=r"^data\.sources='a': use 'NAME=SOURCE"):
    pipeline.load_dataset(config)


def test_base_config_documents_the_data_fields():
  c = config_lib.base_config()
  assert (c.data.mixture, c.data.sources, c.data.workers) == ('', '', 0)


def test_scored_bytes_are_the_utf8_length_of_the_scored_text(make_data_config, tmp_path):
  """Bits per byte divide by the bytes the scored targets spell: a known multilingual text,
  with padding (weight 0) that must not count."""
  data_config = _two_corpora(tmp_path, make_data_config)
  config = helpers.tiny_config(**{f'data.{k}': v for k, v in data_config.items()})
  tokenizer = pipeline.load_dataset(config.data).tokenizer
  text = 'héllo wörld, 東京 and more'
  ids = tokenizer.encode(text)
  targets_BT = np.array([ids + [0, 0]])
  weights_BT = np.array([[1.0] * len(ids) + [0.0, 0.0]])
  assert tokenizer.decode(ids) == text  # the reference: the text itself
  assert trainer.scored_bytes(tokenizer, targets_BT, weights_BT) == len(text.encode('utf-8'))
