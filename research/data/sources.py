"""Resolves a `data.source` string to the documents of one split.

Sources:
  `shakespeare`  the built-in corpus (`research.data.shakespeare`), prepared into `data_dir` once.
  `tfds:NAME`    a TFDS dataset already prepared in `data_dir` with `file_format=array_record`
                 (e.g. `tfds:lm1b`, `tfds:wiki40b/en`); the text comes from the feature `text_key`.
                 Nothing is ever downloaded. A dataset without a `validation` split uses `test`.
  `text:GLOB`    local UTF-8 files, one document per file. Validation holds every 10th non-empty
                 file in name order (the 1st, 11th, 21st, ...); a single file gives its last 10 %
                 of characters (from the next line break on) to validation.

Documents come back in a deterministic order (by title, by index, by file name). Empty documents
and undecodable bytes are counted and logged, never dropped silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
from typing import Any

from absl import logging

from research import errors

SPLITS = ('train', 'validation')
SOURCE_FORMS = (
    "'shakespeare', 'tfds:NAME' (e.g. 'tfds:lm1b') or 'text:GLOB' (e.g. 'text:/data/*.txt')"
)
TEXT_VALIDATION_EVERY = 10
TEXT_VALIDATION_FRACTION = 0.1
_READ_CHUNK = 4096  # Records per random-access read from an array_record data source.


def decode_utf8(data: bytes) -> tuple[str, int]:
  """Decodes UTF-8, replacing bad bytes with U+FFFD; returns (text, number of bad bytes)."""
  try:
    return data.decode('utf-8'), 0
  except UnicodeDecodeError:
    clean = data.decode('utf-8', errors='ignore').encode('utf-8')
    return data.decode('utf-8', errors='replace'), len(data) - len(clean)


def load_documents(
    source: str, split: str, *, data_dir: str | None, text_key: str = 'text'
) -> list[str]:
  """Returns the documents of `split` ('train' or 'validation') of `source`.

  Args:
    source: the `data.source` string (see the module docstring).
    split: 'train' or 'validation'.
    data_dir: the TFDS data directory; None means TFDS's default (`$TFDS_DATA_DIR` or
      `~/tensorflow_datasets`).
    text_key: the feature holding the text, for `tfds:` sources.
  """
  if split not in SPLITS:
    raise errors.UserError(f'split={split!r}: use one of {SPLITS}')
  if source == 'shakespeare':
    documents = _shakespeare_documents(split, data_dir)
  elif source.startswith('tfds:'):
    documents = _tfds_documents(source, split, data_dir, text_key)
  elif source.startswith('text:'):
    documents = _text_documents(source, split)
  else:
    raise errors.ConfigError('data.source', source, f'use {SOURCE_FORMS}')
  return _drop_empty(documents, source, split)


def source_fingerprint(source: str) -> str:
  """A string that changes when the documents of `source` may have changed (for cache keys)."""
  if source == 'shakespeare':
    from research.data import shakespeare  # pylint: disable=g-import-not-at-top

    return f'{source}@{shakespeare.Shakespeare.VERSION}:{",".join(shakespeare.VALIDATION_WORKS)}'
  if source.startswith('text:'):
    digest = hashlib.sha256()
    for path in _matching_files(source):
      stat = os.stat(path)
      digest.update(f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0'.encode())
    return f'{source}@{digest.hexdigest()[:16]}'
  return source


def prepare_shakespeare(data_dir: str):
  """Builds the Shakespeare TFDS dataset in `data_dir` unless it is there; returns the builder."""
  from research.data import shakespeare  # pylint: disable=g-import-not-at-top

  shakespeare.texts_dir()  # A missing package is a UserError before TFDS gets involved.
  builder = shakespeare.Shakespeare(data_dir=data_dir, file_format='array_record')
  if builder.is_prepared():
    return builder
  # Processes that share a data_dir (hosts of a job, parallel test workers) build it once: TFDS
  # renames its finished directory into place, and a second rename onto it would fail.
  with _exclusive(os.path.join(data_dir, '.shakespeare.lock')):
    builder = shakespeare.Shakespeare(data_dir=data_dir, file_format='array_record')
    if not builder.is_prepared():
      logging.info('Preparing the Shakespeare dataset in %s', data_dir)
      builder.download_and_prepare()
  return builder


@contextlib.contextmanager
def _exclusive(lock_path: str):
  """An advisory lock on `lock_path` (created) for the block: one process at a time."""
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  with open(lock_path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _shakespeare_documents(split: str, data_dir: str | None) -> list[str]:
  if data_dir is None:
    raise errors.UserError('data_dir is None: Shakespeare needs a directory to be built in')
  builder = prepare_shakespeare(data_dir)
  records = _read_all(builder.as_data_source(split=split))
  # TFDS stores examples in hash order; order by title so the corpus reads the same everywhere.
  records.sort(key=lambda r: r['title'])
  return _texts(records, 'text', 'shakespeare')


def _tfds_documents(source: str, split: str, data_dir: str | None, text_key: str) -> list[str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = source[len('tfds:') :]
  where = data_dir or 'the default TFDS data_dir'
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.ConfigError(
        'data.source', source, f'TFDS has no dataset {name!r}: check the name (tfds:NAME[/CONFIG])'
    ) from None
  if not builder.is_prepared():
    raise errors.ConfigError(
        'data.source',
        source,
        f'{name} is not prepared in {where} and nothing is downloaded at run time: run '
        f'`tfds build {name} --data_dir=DIR --file_format=array_record` where it can be fetched',
    )
  split = _existing_split(builder, split, source)
  try:
    data_source = builder.as_data_source(split=split)
  except NotImplementedError:
    raise errors.ConfigError(
        'data.source',
        source,
        f'{name} in {where} is stored as {builder.info.file_format}, which has no random access: '
        're-prepare it with --file_format=array_record',
    ) from None
  if text_key not in builder.info.features:
    raise errors.ConfigError(
        'data.text_key', text_key, f'{name} has features {sorted(builder.info.features)}'
    )
  return _texts(_read_all(data_source), text_key, source)


def _existing_split(builder: Any, split: str, source: str) -> str:
  available = sorted(builder.info.splits)
  if split in available:
    return split
  if split == 'validation' and 'test' in available:
    logging.warning('%s has no validation split; using its test split', source)
    return 'test'
  raise errors.ConfigError('data.source', source, f'has splits {available}, none for {split!r}')


def _read_all(data_source: Any) -> list[dict[str, Any]]:
  records = []
  for begin in range(0, len(data_source), _READ_CHUNK):
    indices = range(begin, min(begin + _READ_CHUNK, len(data_source)))
    records.extend(data_source.__getitems__(indices))
  return records


def _texts(records: list[dict[str, Any]], text_key: str, source: str) -> list[str]:
  documents, bad_bytes, bad_documents = [], 0, 0
  for record in records:
    text = record[text_key]
    if isinstance(text, bytes):
      text, bad = decode_utf8(text)
      bad_bytes += bad
      bad_documents += bool(bad)
    documents.append(text)
  if bad_bytes:
    logging.warning(
        '%s: %d undecodable bytes in %d documents replaced by U+FFFD',
        source,
        bad_bytes,
        bad_documents,
    )
  return documents


def _matching_files(source: str) -> list[str]:
  pattern = os.path.expanduser(source[len('text:') :])
  paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not paths:
    raise errors.ConfigError('data.source', source, 'matched no files: check the glob')
  return paths


def _text_documents(source: str, split: str) -> list[str]:
  paths = _matching_files(source)
  nonempty = [p for p in paths if os.path.getsize(p) > 0]
  if not nonempty:
    raise errors.ConfigError(
        'data.source', source, f'all {len(paths)} matching files are empty: check the glob'
    )
  if len(nonempty) < len(paths):
    logging.warning('%s: skipped %d empty files', source, len(paths) - len(nonempty))
  if len(nonempty) == 1:
    text = _read_text(nonempty[0], source)
    cut = _validation_cut(text)
    return [text[:cut] if split == 'train' else text[cut:]]
  chosen = [
      path
      for i, path in enumerate(nonempty)
      if (i % TEXT_VALIDATION_EVERY == 0) == (split == 'validation')
  ]
  return [_read_text(path, source) for path in chosen]


def _validation_cut(text: str) -> int:
  """Where validation starts in a single file: the first line start at or after 90 % of it."""
  cut = int(len(text) * (1 - TEXT_VALIDATION_FRACTION))
  newline = text.find('\n', max(cut - 1, 0))
  return newline + 1 if 0 <= newline < len(text) - 1 else cut


def _read_text(path: str, source: str) -> str:
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise errors.ConfigError(
        'data.source', source, f'cannot read {path}: {e.strerror}: check its permissions'
    ) from None
  text, bad = decode_utf8(data)
  if bad:
    logging.warning('%s: %d undecodable bytes replaced by U+FFFD', path, bad)
  return text


def _drop_empty(documents: list[str], source: str, split: str) -> list[str]:
  kept = [d for d in documents if d.strip()]
  if len(kept) < len(documents):
    logging.warning(
        '%s %s: skipped %d empty or whitespace-only documents of %d',
        source,
        split,
        len(documents) - len(kept),
        len(documents),
    )
  if not kept:
    raise errors.ConfigError(
        'data.source', source, f'its {split} split has no non-empty documents: check the data'
    )
  logging.info(
      '%s %s: %d documents, %d characters', source, split, len(kept), sum(map(len, kept))
  )
  return kept
