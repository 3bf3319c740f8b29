"""The Beam preparation: shards equal the tokenized documents, outputs are reproducible, bad
input is counted, and an incomplete or mismatched directory is never read as complete."""

from __future__ import annotations

import filecmp
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import make_corpus
from research import errors
from research.data import pipeline
from research.data import prepare
from research.data import prepared
from research.data import sources
from research.data import tokenizer as tokenizer_lib
from tests import helpers


def _stream(directory: str, split: str) -> np.ndarray:
  manifest = prepared.read_manifest(directory)
  data = prepared.open_split(directory, manifest, split)
  return data.read(0, data.num_tokens)


def test_corpus_generator_is_deterministic_and_zipfian(tmp_path):
  a = make_corpus.make_corpus(str(tmp_path / 'a'), 0.0003, seed=3)
  b = make_corpus.make_corpus(str(tmp_path / 'b'), 0.0003, seed=3)
  assert [open(p, 'rb').read() for p in a] == [open(p, 'rb').read() for p in b]
  texts = [json.loads(line)['text'] for line in gzip.open(a[0], 'rt')]
  words = ' '.join(texts).lower().replace('.', '').split()
  counts = np.sort(np.unique(words, return_counts=True)[1])[::-1]
  # Zipf-Mandelbrot (offset 2.7): rank 1 is (10 + 2.7) / (1 + 2.7) = 3.4x as frequent as rank 10.
  assert 2.5 < counts[0] / counts[9] < 4.5
  lengths = [len(t.split()) for t in texts]
  assert min(lengths) >= make_corpus.MIN_WORDS and np.median(lengths) < 2 * np.mean(lengths)


def test_shards_hold_each_documents_ids_and_eos(jsonl_corpus, prepared_corpus):
  manifest = prepared.read_manifest(prepared_corpus)
  tokenizer = tokenizer_lib.load_tokenizer(os.path.join(prepared_corpus, 'tokenizer.model'))
  assert manifest['tokenizer_sha256'] == tokenizer.sha256
  source = f'jsonl:{jsonl_corpus}/*.jsonl.gz'
  for split in sources.SPLITS:
    documents = sources.load_documents(source, split, data_dir=None, validation_fraction=0.05)
    expected = np.concatenate([np.append(tokenizer.encode(d), tokenizer.eos_id)
                               for d in documents])
    np.testing.assert_array_equal(_stream(prepared_corpus, split), expected)
    entry = manifest['splits'][split]
    assert entry['documents'] == len(documents)
    assert entry['bytes'] == sum(len(d.encode()) for d in documents)
    assert entry['tokens'] == sum(s['tokens'] for s in entry['shards']) == len(expected)
  # 200,000-token shards: the train split rolls over to several files.
  assert len(manifest['splits']['train']['shards']) > 1
  fraction = manifest['splits']['validation']['documents'] / sum(
      manifest['splits'][s]['documents'] for s in sources.SPLITS)
  assert 0.02 < fraction < 0.1  # 5 % held out by key hash


def test_windows_read_across_records_and_shards(prepared_corpus):
  manifest = prepared.read_manifest(prepared_corpus)
  train = prepared.open_split(prepared_corpus, manifest, 'train')
  stream = train.read(0, train.num_tokens)
  first_shard_end = manifest['splits']['train']['shards'][0]['tokens']
  for start in (0, 999, 1000, 1995, first_shard_end - 37, train.num_tokens - 65):
    np.testing.assert_array_equal(train.read(start, 65), stream[start:start + 65])
  with pytest.raises(IndexError):
    train.read(train.num_tokens - 10, 11)


@pytest.mark.slow
def test_a_second_run_writes_the_same_bytes_with_two_workers(jsonl_corpus, prepared_corpus,
                                                             tmp_path):
  again = tmp_path / 'again'
  prepare.prepare(prepare.Settings(source=f'jsonl:{jsonl_corpus}/*.jsonl.gz', out=str(again),
                                   vocab_size=512, num_sentinels=8, validation_fraction=0.05,
                                   record_tokens=1000, shard_tokens=200_000, workers=2))
  names = sorted(os.listdir(prepared_corpus))
  assert names == sorted(os.listdir(again))
  match, mismatch, errors_ = filecmp.cmpfiles(prepared_corpus, again, names, shallow=False)
  assert not mismatch and not errors_ and len(match) == len(names)


def test_bad_input_is_counted_with_its_first_place(tmp_path):
  rows = [json.dumps({'text': f'Good document number {i}.\nWith a second line.'})
          for i in range(40)]
  lines = rows[:3] + ['{not json', json.dumps({'body': 'no text field'}),
                      json.dumps({'text': '   '})] + rows[3:]
  (tmp_path / 'a.jsonl').write_bytes('\n'.join(lines).encode() + b'\n' +
                                     b'{"text": "bad \xff byte"}\n')
  (tmp_path / 'b.jsonl.gz').write_bytes(gzip.compress(b'{"text": "cut"}\n' * 200)[:30])
  out = tmp_path / 'out'
  manifest = prepare.prepare(prepare.Settings(source=f'jsonl:{tmp_path}/*.jsonl*', out=str(out),
                                              vocab_size=300, num_sentinels=0,
                                              validation_fraction=0.2))
  problems = manifest['problems']
  assert problems['bad_json_lines'] == {'count': 1, 'first': f'{tmp_path}/a.jsonl:4'}
  assert problems['lines_without_text'] == {'count': 1, 'first': f'{tmp_path}/a.jsonl:5'}
  assert problems['empty_documents'] == {'count': 1, 'first': 'a.jsonl:6'}
  assert problems['undecodable_bytes'] == {'count': 1, 'first': f'{tmp_path}/a.jsonl:44'}
  assert problems['unreadable_files']['first'].startswith(f'{tmp_path}/b.jsonl.gz')
  assert sum(manifest['splits'][s]['documents'] for s in sources.SPLITS) == 41


def test_parquet_and_zstd_sources(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard

  texts = [f'Parquet row {i}: the quality of mercy is not strained.' for i in range(60)]
  pq.write_table(pa.table({'content': texts}), tmp_path / 'part.parquet')
  (tmp_path / 'part.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(
      '\n'.join(json.dumps({'content': t}) for t in texts).encode()))
  for pattern in ('parquet:{}/*.parquet', 'jsonl:{}/*.jsonl.zst'):
    train = sources.load_documents(pattern.format(tmp_path), 'train', data_dir=None,
                                   text_key='content', validation_fraction=0.1)
    validation = sources.load_documents(pattern.format(tmp_path), 'validation', data_dir=None,
                                        text_key='content', validation_fraction=0.1)
    assert sorted(train + validation) == sorted(texts) and 0 < len(validation) < 15


def test_incomplete_or_mismatched_directories_are_refused(prepared_corpus, tmp_path,
                                                          small_tokenizer, make_data_config):
  broken = tmp_path / 'broken'
  broken.mkdir()
  for name in os.listdir(prepared_corpus):
    if name != 'manifest.json':
      os.link(os.path.join(prepared_corpus, name), broken / name)
  config = make_data_config(str(tmp_path / 'cache'), source=f'prepared:{broken}', seq_len=32)
  with pytest.raises(errors.ConfigError, match='manifest.json does not exist: the preparation '
                     'did not finish'):
    pipeline.load_dataset(config)
  # A tokenizer that is not the manifest's.
  manifest = json.loads(open(os.path.join(prepared_corpus, 'manifest.json')).read())
  (broken / 'manifest.json').write_text(json.dumps({**manifest, 'tokenizer_sha256': 'f' * 64}))
  with pytest.raises(errors.ConfigError, match='is not the tokenizer its manifest was written'):
    pipeline.load_dataset(config)
  # data.tokenizer given, and not the one the corpus was prepared with.
  config = make_data_config(str(tmp_path / 'cache'), source=f'prepared:{prepared_corpus}',
                            seq_len=32, tokenizer=small_tokenizer.name)
  with pytest.raises(errors.ConfigError, match=r'^data\.tokenizer=.*is not the tokenizer'):
    pipeline.load_dataset(config)


def test_opening_reads_the_manifest_only(prepared_corpus, make_data_config, tmp_path,
                                         monkeypatch):
  from array_record.python import array_record_module
  opened = []
  real = array_record_module.ArrayRecordReader

  def counting(path, *args):
    opened.append(path)
    return real(path, *args)

  monkeypatch.setattr(array_record_module, 'ArrayRecordReader', counting)
  config = make_data_config(str(tmp_path / 'cache'), source=f'prepared:{prepared_corpus}',
                            seq_len=32)
  dataset = pipeline.load_dataset(config, workdir=str(tmp_path / 'run'))
  assert opened == []  # start-up does not touch the shards, whatever the corpus size
  dataset.train_batch(0, 0, 4, 32)
  assert 1 <= len(opened) <= 4
  assert (tmp_path / 'run' / 'tokenizer.model').read_bytes() == dataset.tokenizer.model_proto


def test_command_line_prints_counts_and_bad_flags_exit_2(jsonl_corpus, prepared_corpus,
                                                         tmp_path):
  env = helpers.subprocess_env()
  done = subprocess.run(
      [sys.executable, '-m', 'research.data.prepare', f'--source=jsonl:{jsonl_corpus}/*.jsonl.gz',
       f'--tokenizer={prepared_corpus}/tokenizer.model', f'--out={tmp_path}/cli',
       '--validation_fraction=0.05', '--record_tokens=1000', '--shard_tokens=200000'],
      capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  counts = json.loads(done.stdout.strip().splitlines()[-1])
  manifest = prepared.read_manifest(prepared_corpus)
  assert counts['train']['tokens'] == manifest['splits']['train']['tokens']
  assert filecmp.cmp(f'{tmp_path}/cli/manifest.json', f'{prepared_corpus}/manifest.json',
                     shallow=False)
  bad = subprocess.run(
      [sys.executable, '-m', 'research.data.prepare', '--source=csv:/x', f'--out={tmp_path}/x'],
      capture_output=True, text=True, env=env, check=False)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: data.source='csv:/x': use ")
  assert 'Traceback' not in bad.stderr


def test_a_source_without_the_text_field_stops_with_one_line(jsonl_corpus, tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'research.data.prepare', f'--source=jsonl:{jsonl_corpus}/*.jsonl.gz',
       '--text_key=body', '--vocab_size=512', f'--out={tmp_path}/x'],
      capture_output=True, text=True, env=helpers.subprocess_env(), check=False)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].endswith(
      'no training text to sample a tokenizer from: check the source and --text_key')
  assert 'Traceback' not in done.stderr
  assert not os.path.exists(f'{tmp_path}/x/manifest.json')
