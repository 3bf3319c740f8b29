"""load_dataset end to end on Shakespeare and on local text files (prepared into the cache)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from research import errors
from research.data import pipeline
from research.data import prepare
from research.data import tokenizer as tokenizer_lib


def test_shakespeare_end_to_end(shakespeare_dataset):
  ds = shakespeare_dataset
  assert ds.tokenizer.vocab_size == 512
  assert (ds.train.num_documents, ds.validation.num_documents) == (38, 4)
  # At 512 ids Shakespeare is about 1.6 characters per token.
  assert 2_500_000 < ds.train.num_tokens < 3_500_000
  assert 0.05 < ds.validation.num_tokens / (ds.train.num_tokens + ds.validation.num_tokens) < 0.2
  batch = ds.train_batch(seed=0, step=0, global_batch=8, seq_len=64)
  assert batch.shape == (8, 65) and batch.dtype == np.int32
  assert 0 <= batch.min() and batch.max() < 512
  text = ds.tokenizer.decode(batch[0])
  assert len(text) > 64 and '\ufffd' not in text


def test_train_batches_depend_only_on_seed_and_step(shakespeare_dataset):
  ds = shakespeare_dataset
  batch = ds.train_batch(3, 10, 8, 64)
  np.testing.assert_array_equal(batch, ds.train_batch(3, 10, 8, 64))
  assert not np.array_equal(batch, ds.train_batch(3, 11, 8, 64))
  halves = [ds.train_batch(3, 10, 8, 64, process_index=i, process_count=2) for i in range(2)]
  assert halves[0].shape == (4, 65)
  np.testing.assert_array_equal(np.concatenate(halves), batch)


def test_eval_batches_read_validation_in_order(shakespeare_dataset):
  ds = shakespeare_dataset
  num_batches = ds.num_eval_batches(global_batch=16, seq_len=64)
  assert num_batches == (ds.validation.num_tokens - 1) // 64 // 16
  first = ds.eval_batch(0, 16, 64)
  assert first.shape == (16, 65) and first.dtype == np.int32
  np.testing.assert_array_equal(first[0], ds.validation.read(0, 65))
  np.testing.assert_array_equal(first[1, 0], first[0, -1])  # Targets tile the stream.
  quarters = [ds.eval_batch(1, 16, 64, process_index=i, process_count=4) for i in range(4)]
  np.testing.assert_array_equal(np.concatenate(quarters), ds.eval_batch(1, 16, 64))


def test_tokenizer_is_copied_to_the_workdir_and_reused(
    shakespeare_dataset, cache_dir, workdir, make_data_config, monkeypatch
):
  path = os.path.join(workdir, 'tokenizer.model')
  with open(path, 'rb') as f:
    assert f.read() == shakespeare_dataset.tokenizer.model_proto
  assert pipeline.load_tokenizer_from_workdir(workdir).model_proto == (
      shakespeare_dataset.tokenizer.model_proto
  )

  def no_training(*args, **kwargs):
    raise AssertionError('the tokenizer was trained again')

  monkeypatch.setattr(tokenizer_lib, 'train_tokenizer', no_training)
  # A fresh cache too: only the workdir can supply the tokenizer, as on a resumed run elsewhere.
  resumed = pipeline.load_dataset(
      make_data_config(os.path.join(cache_dir, 'elsewhere')), workdir=workdir
  )
  assert resumed.tokenizer.model_proto == shakespeare_dataset.tokenizer.model_proto
  n = shakespeare_dataset.validation.num_tokens
  np.testing.assert_array_equal(resumed.validation.read(0, n),
                                shakespeare_dataset.validation.read(0, n))


def test_a_second_run_hits_every_cache(
    shakespeare_dataset, cache_dir, make_data_config, monkeypatch, tmp_path
):
  monkeypatch.setattr(
      tokenizer_lib, 'train_tokenizer', lambda *a, **k: pytest.fail('tokenizer retrained')
  )
  monkeypatch.setattr(prepare, 'prepare', lambda *a, **k: pytest.fail('prepared again'))
  again = pipeline.load_dataset(make_data_config(cache_dir), workdir=str(tmp_path / 'new_run'))
  assert again.tokenizer.model_proto == shakespeare_dataset.tokenizer.model_proto
  assert (tmp_path / 'new_run' / 'tokenizer.model').exists()


def test_configured_tokenizer_path_is_used(
    small_tokenizer, cache_dir, make_data_config, tmp_path
):
  config = make_data_config(cache_dir, tokenizer=small_tokenizer.name)
  ds = pipeline.load_dataset(config)
  assert ds.tokenizer.model_proto == small_tokenizer.model_proto


def test_workdir_tokenizer_of_another_size_is_an_error(
    shakespeare_dataset, cache_dir, workdir, make_data_config
):
  del shakespeare_dataset  # Its workdir holds a 512-id tokenizer.
  with pytest.raises(errors.ConfigError, match=r'^data\.vocab_size=1024: .*data\.vocab_size=512'):
    pipeline.load_dataset(make_data_config(cache_dir, vocab_size=1024), workdir=workdir)


def test_seq_len_longer_than_a_split_is_an_error(make_data_config, tmp_path):
  files = {f'{i}.txt': f'Speak the speech, I pray you, {i}.\n' * 3 for i in range(10)}
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  config = make_data_config(
      str(tmp_path / 'cache'), source=f'text:{tmp_path}/*.txt', vocab_size=300, num_sentinels=2,
      seq_len=4096,
  )
  with pytest.raises(errors.ConfigError, match=r'^data\.seq_len=4096: the train split'):
    pipeline.load_dataset(config)


def test_text_source_end_to_end(make_data_config, tmp_path):
  lines = [f'Line {i}: now is the winter of our discontent.\n' for i in range(400)]
  for i in range(20):
    (tmp_path / f'part{i:02d}.txt').write_text(''.join(lines[i * 20 : (i + 1) * 20]))
  config = make_data_config(
      str(tmp_path / 'cache'), source=f'text:{tmp_path}/*.txt', vocab_size=320, num_sentinels=4,
      seq_len=32,
  )
  ds = pipeline.load_dataset(config, workdir=str(tmp_path / 'run'))
  assert (ds.train.num_documents, ds.validation.num_documents) == (18, 2)
  assert ds.tokenizer.num_sentinels == 4 and ds.tokenizer.vocab_size == 320
  assert ds.train_batch(0, 0, 4, 32).shape == (4, 33)
  assert ds.num_eval_batches(4, 32) >= 1
  assert (tmp_path / 'run' / 'tokenizer.model').exists()


def test_cache_dir_defaults(monkeypatch):
  monkeypatch.setenv('LMFORGE_CACHE', '/scratch/lmforge')
  assert pipeline.resolve_cache_dir('') == '/scratch/lmforge'
  assert pipeline.resolve_cache_dir('/data/cache') == '/data/cache'
  monkeypatch.delenv('LMFORGE_CACHE')
  assert pipeline.resolve_cache_dir('') == os.path.expanduser('~/.cache/lmforge')


def test_bad_config_values_are_config_errors(make_data_config, tmp_path):
  with pytest.raises(errors.ConfigError, match=r"^data\.tokenizer_type='wordpiece'"):
    pipeline.load_dataset(make_data_config(str(tmp_path), tokenizer_type='wordpiece'))
  with pytest.raises(errors.ConfigError, match=r'^data\.seq_len=0'):
    pipeline.load_dataset(make_data_config(str(tmp_path), seq_len=0))
  with pytest.raises(errors.ConfigError, match=r"^data\.source='c4'"):
    pipeline.load_dataset(make_data_config(str(tmp_path), source='c4'))
