"""What the trainer calls: config in, tokenizer and per-process batches out.

`load_dataset` resolves `data.source`, gets a tokenizer (from the workdir when resuming, from
`data.tokenizer`, or trained on the train split and cached), and builds or loads the token
stores of both splits. Everything is cached under `data.cache_dir` (default `$LMFORGE_CACHE`,
else `~/.cache/lmforge`):

  tfds/                    the Shakespeare TFDS dataset (array_record)
  tokenizers/*.model       trained tokenizers, keyed by (source, vocab_size, type, sentinels)
  tokens/*.npy(.json)      token stores, keyed by (source, split, tokenizer bytes)

The tokenizer is also copied to `workdir/tokenizer.model`: sampling and evaluation then need only
the workdir, and a resumed run reuses exactly that file rather than retraining.

Batches are [rows, seq_len + 1] int32 windows (inputs are [:, :-1], targets [:, 1:]); each
process reads only its own rows of the global batch (see `research.data.sampler`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from typing import Any

from absl import logging
import numpy as np

from research import errors
from research.data import sampler
from research.data import sources
from research.data import store as store_lib
from research.data import tokenizer as tokenizer_lib
from research.data.store import TokenStore
from research.data.tokenizer import Tokenizer

WORKDIR_TOKENIZER = 'tokenizer.model'
# Bump when the tokenizer training recipe changes, to invalidate cached tokenizers.
TOKENIZER_RECIPE_VERSION = 1


@dataclasses.dataclass
class Dataset:
  """A tokenizer and the train and validation token streams, with batch readers."""

  tokenizer: Tokenizer
  train: TokenStore
  validation: TokenStore

  def train_batch(
      self,
      seed: int,
      step: int,
      global_batch: int,
      seq_len: int,
      process_index: int = 0,
      process_count: int = 1,
  ) -> np.ndarray:
    """This process's rows of training batch `step`.

    Returns:
      int32 [global_batch // process_count, seq_len + 1]: inputs [:, :-1], targets [:, 1:].
    """
    window = _window(self.train, seq_len, 'train')
    starts_B = sampler.train_window_starts(seed, step, global_batch, self.train.num_tokens, window)
    rows = sampler.process_slice(global_batch, process_index, process_count)
    return _gather(self.train.tokens, starts_B[rows], window)

  def eval_batch(
      self,
      batch_index: int,
      global_batch: int,
      seq_len: int,
      process_index: int = 0,
      process_count: int = 1,
  ) -> np.ndarray:
    """This process's rows of validation batch `batch_index` (windows in order, see sampler)."""
    window = _window(self.validation, seq_len, 'validation')
    starts_B = sampler.eval_window_starts(
        batch_index, global_batch, self.validation.num_tokens, window
    )
    rows = sampler.process_slice(global_batch, process_index, process_count)
    return _gather(self.validation.tokens, starts_B[rows], window)

  def num_eval_batches(self, global_batch: int, seq_len: int) -> int:
    """Batches in one pass over validation: whole batches only, at least one."""
    window = _window(self.validation, seq_len, 'validation')
    return sampler.num_eval_batches(global_batch, self.validation.num_tokens, window)


def load_dataset(data_config: Any, *, workdir: str | None = None) -> Dataset:
  """Builds (or loads from the cache) the tokenizer and token stores that `data_config` names."""
  start = time.perf_counter()
  _check_config(data_config)
  cache_dir = resolve_cache_dir(data_config.cache_dir)
  source = data_config.source
  data_dir = _tfds_data_dir(data_config, cache_dir)
  source_key = f'{sources.source_fingerprint(source)}|text_key={data_config.text_key}'
  load = functools.partial(
      sources.load_documents, source, data_dir=data_dir, text_key=data_config.text_key
  )
  train_documents = functools.cache(lambda: load('train'))

  tokenizer = _get_tokenizer(data_config, cache_dir, source_key, train_documents, workdir)
  train = store_lib.build_or_load_store(
      train_documents,
      tokenizer,
      store_lib.store_cache_path(cache_dir, source_key, 'train', tokenizer),
  )
  validation = store_lib.build_or_load_store(
      lambda: load('validation'),
      tokenizer,
      store_lib.store_cache_path(cache_dir, source_key, 'validation', tokenizer),
  )
  for split, token_store in (('train', train), ('validation', validation)):
    if token_store.num_tokens < data_config.seq_len + 1:
      raise errors.ConfigError(
          'data.seq_len',
          data_config.seq_len,
          f'the {split} split of {source} has only {token_store.num_tokens} tokens: use at most '
          f'{token_store.num_tokens - 1}',
      )
  logging.info(
      'Dataset %s: vocab %d, train %d tokens / %d documents, validation %d tokens / %d '
      'documents, ready in %.1f s',
      source,
      tokenizer.vocab_size,
      train.num_tokens,
      train.num_documents,
      validation.num_tokens,
      validation.num_documents,
      time.perf_counter() - start,
  )
  return Dataset(tokenizer=tokenizer, train=train, validation=validation)


def load_tokenizer_from_workdir(workdir: str) -> Tokenizer:
  """The tokenizer a run trained with, for sampling and evaluation."""
  path = os.path.join(workdir, WORKDIR_TOKENIZER)
  if not os.path.exists(path):
    raise errors.UserError(
        f'{path} does not exist: --workdir must be the workdir of a training run'
    )
  return tokenizer_lib.load_tokenizer(path)


def resolve_cache_dir(cache_dir: str) -> str:
  """`data.cache_dir`, else `$LMFORGE_CACHE`, else `~/.cache/lmforge`."""
  chosen = cache_dir or os.environ.get('LMFORGE_CACHE') or '~/.cache/lmforge'
  return os.path.abspath(os.path.expanduser(chosen))


def _check_config(data_config: Any):
  if not isinstance(data_config.source, str) or not data_config.source:
    raise errors.ConfigError('data.source', data_config.source, f'use {sources.SOURCE_FORMS}')
  for field in ('vocab_size', 'seq_len'):
    value = data_config[field]
    if not isinstance(value, int) or value < 1:
      raise errors.ConfigError(f'data.{field}', value, 'must be a positive integer')
  if data_config.tokenizer_type not in tokenizer_lib.MODEL_TYPES:
    raise errors.ConfigError(
        'data.tokenizer_type', data_config.tokenizer_type, f'use one of {tokenizer_lib.MODEL_TYPES}'
    )


def _tfds_data_dir(data_config: Any, cache_dir: str) -> str | None:
  """Shakespeare is built in the cache; real TFDS datasets live in TFDS's data_dir."""
  if data_config.source == 'shakespeare':
    return os.path.join(cache_dir, 'tfds')
  return data_config.get('data_dir', '') or None


def _get_tokenizer(
    data_config: Any, cache_dir: str, source_key: str, train_documents, workdir: str | None
) -> Tokenizer:
  """The workdir's tokenizer when resuming, else the configured or cached or trained one."""
  workdir_path = os.path.join(workdir, WORKDIR_TOKENIZER) if workdir else None
  if workdir_path and os.path.exists(workdir_path):
    tokenizer = tokenizer_lib.load_tokenizer(workdir_path)
    logging.info('Tokenizer from the workdir: %s', workdir_path)
  elif data_config.tokenizer:
    tokenizer = tokenizer_lib.load_tokenizer(os.path.expanduser(data_config.tokenizer))
  else:
    tokenizer = _cached_or_trained_tokenizer(data_config, cache_dir, source_key, train_documents)
  if tokenizer.vocab_size != data_config.vocab_size:
    raise errors.ConfigError(
        'data.vocab_size',
        data_config.vocab_size,
        f'tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids: set '
        f'data.vocab_size={tokenizer.vocab_size}',
    )
  if workdir_path and not os.path.exists(workdir_path):
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(workdir_path)
  return tokenizer


def _cached_or_trained_tokenizer(
    data_config: Any, cache_dir: str, source_key: str, train_documents
) -> Tokenizer:
  key = '|'.join(
      str(part)
      for part in (
          TOKENIZER_RECIPE_VERSION,
          source_key,
          data_config.vocab_size,
          data_config.tokenizer_type,
          data_config.num_sentinels,
      )
  )
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  path = os.path.join(
      cache_dir,
      'tokenizers',
      f'{data_config.tokenizer_type}{data_config.vocab_size}-{digest}.model',
  )
  if os.path.exists(path):
    logging.info('Tokenizer from the cache: %s', path)
    return tokenizer_lib.load_tokenizer(path)
  start = time.perf_counter()
  tokenizer = tokenizer_lib.train_tokenizer(
      train_documents(),
      data_config.vocab_size,
      path,
      num_sentinels=data_config.num_sentinels,
      model_type=data_config.tokenizer_type,
  )
  logging.info(
      'Trained a %s tokenizer of %d ids in %.1f s: %s',
      data_config.tokenizer_type,
      tokenizer.vocab_size,
      time.perf_counter() - start,
      path,
  )
  return tokenizer


def _window(token_store: TokenStore, seq_len: int, split: str) -> int:
  if seq_len < 1 or token_store.num_tokens < seq_len + 1:
    raise errors.ConfigError(
        'data.seq_len',
        seq_len,
        f'the {split} split has {token_store.num_tokens} tokens: '
        f'use 1..{token_store.num_tokens - 1}',
    )
  return seq_len + 1


def _gather(tokens: np.ndarray, starts_B: np.ndarray, window: int) -> np.ndarray:
  """Reads only the requested windows from the memory-mapped stream."""
  positions_BT = starts_B[:, None] + np.arange(window, dtype=np.int64)[None, :]
  return np.asarray(tokens[positions_BT], dtype=np.int32)


def load_token_store(
    data_config: Any, tokenizer: Tokenizer, *, source: str | None = None, split: str = 'validation'
) -> TokenStore:
  """The token store of one split of `source` (default `data_config.source`) encoded with
  `tokenizer`, built or loaded from the same cache as `load_dataset`'s: evaluating a run on
  another corpus tokenizes it with the run's own tokenizer."""
  source = source or data_config.source
  cache_dir = resolve_cache_dir(data_config.cache_dir)
  data_config = data_config.copy_and_resolve_references()
  data_config.source = source
  _check_config(data_config)
  data_dir = _tfds_data_dir(data_config, cache_dir)
  source_key = f'{sources.source_fingerprint(source)}|text_key={data_config.text_key}'
  return store_lib.build_or_load_store(
      lambda: sources.load_documents(
          source, split, data_dir=data_dir, text_key=data_config.text_key
      ),
      tokenizer,
      store_lib.store_cache_path(cache_dir, source_key, split, tokenizer),
  )
