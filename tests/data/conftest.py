"""Session fixtures: the Shakespeare dataset, a 512-id tokenizer and a dataset, built once."""

from __future__ import annotations

import ml_collections
import pytest

from research.data import pipeline
from research.data import sources
from research.data import tokenizer as tokenizer_lib

SMALL_VOCAB = 512


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp('lmforge_cache'))


@pytest.fixture(scope='session')
def shakespeare_data_dir(cache_dir) -> str:
  """The data_dir that `load_dataset` uses for Shakespeare under `cache_dir`."""
  data_dir = f'{cache_dir}/tfds'
  sources.prepare_shakespeare(data_dir)
  return data_dir


@pytest.fixture(scope='session')
def train_documents(shakespeare_data_dir) -> list[str]:
  return sources.load_documents('shakespeare', 'train', data_dir=shakespeare_data_dir)


@pytest.fixture(scope='session')
def validation_documents(shakespeare_data_dir) -> list[str]:
  return sources.load_documents('shakespeare', 'validation', data_dir=shakespeare_data_dir)


@pytest.fixture(scope='session')
def small_tokenizer(train_documents, tmp_path_factory) -> tokenizer_lib.Tokenizer:
  path = tmp_path_factory.mktemp('tokenizer') / 'small.model'
  return tokenizer_lib.train_tokenizer(train_documents, SMALL_VOCAB, str(path))


def _data_config(cache_dir: str, **overrides) -> ml_collections.ConfigDict:
  fields = dict(
      source='shakespeare',
      text_key='text',
      vocab_size=SMALL_VOCAB,
      tokenizer='',
      tokenizer_type='bpe',
      num_sentinels=100,
      cache_dir=cache_dir,
      seq_len=64,
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.fixture(scope='session')
def make_data_config():
  """Builds a `config.data` as the trainer's configs do: make_data_config(cache_dir, **fields)."""
  return _data_config


@pytest.fixture(scope='session')
def workdir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp('workdir'))


@pytest.fixture(scope='session')
def shakespeare_dataset(cache_dir, workdir, shakespeare_data_dir) -> pipeline.Dataset:
  del shakespeare_data_dir  # Built first, so the dataset build reuses it.
  return pipeline.load_dataset(_data_config(cache_dir), workdir=workdir)


CORPUS_GB = 0.0015  # 1.5 MB of C4-shaped JSON lines: a few hundred documents


@pytest.fixture(scope='session')
def jsonl_corpus(tmp_path_factory) -> str:
  """A directory of gzipped C4-shaped JSON lines (benchmarks/make_corpus.py)."""
  from benchmarks import make_corpus  # pylint: disable=g-import-not-at-top

  out = tmp_path_factory.mktemp('corpus')
  make_corpus.make_corpus(str(out), CORPUS_GB, seed=0)
  return str(out)


@pytest.fixture(scope='session')
def prepared_corpus(jsonl_corpus, tmp_path_factory) -> str:
  """`jsonl_corpus` prepared with a trained 512-piece tokenizer; records of 1,000 tokens."""
  from research.data import prepare  # pylint: disable=g-import-not-at-top

  out = str(tmp_path_factory.mktemp('prepared'))
  prepare.prepare(prepare.Settings(source=f'jsonl:{jsonl_corpus}/*.jsonl.gz', out=out,
                                   vocab_size=SMALL_VOCAB, num_sentinels=8,
                                   validation_fraction=0.05, record_tokens=1000,
                                   shard_tokens=200_000))
  return out
