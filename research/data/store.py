"""Token stores: one split's documents, encoded once and kept on disk as a flat array.

Each document is encoded and followed by eos; the results are concatenated into one 1-D array,
saved as `.npy` and memory-mapped on load, so a store costs no RAM until windows are read. The
dtype is uint16 when every id fits (vocab_size <= 65536), halving disk and page-cache use, and
int32 otherwise; batches are cast to int32 when read.

Files are written to a temporary name and renamed into place, the array first and its metadata
(`<path>.json`) last: a store counts as present only when both are, so a killed process leaves
no half store behind, and concurrent builders (several hosts on a shared disk) write identical
bytes and the last rename wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time

from absl import logging
import numpy as np

from research.data import tokenizer as tokenizer_lib

# Bump when the stored format or the encoding recipe changes, to invalidate old caches.
FORMAT_VERSION = 1
_ENCODE_CHUNK = 256  # Documents per encode call: bounds memory of Python id lists.


@dataclasses.dataclass(frozen=True)
class TokenStore:
  """One split as a flat token stream; `tokens` is memory-mapped and read-only."""

  tokens: np.ndarray  # [num_tokens], uint16 or int32, each document followed by eos.
  num_documents: int

  @property
  def num_tokens(self) -> int:
    return int(self.tokens.shape[0])


def store_cache_path(
    cache_dir: str, source_key: str, split: str, tokenizer: tokenizer_lib.Tokenizer
) -> str:
  """The `.npy` path of a store, keyed by (source, split, tokenizer model bytes)."""
  digest = hashlib.sha256()
  for part in (str(FORMAT_VERSION), source_key, split):
    digest.update(part.encode() + b'\0')
  digest.update(tokenizer.model_proto)
  readable = re.sub(r'[^A-Za-z0-9_.-]+', '_', source_key.split('@')[0])[:48].strip('_')
  return os.path.join(cache_dir, 'tokens', f'{readable}-{split}-{digest.hexdigest()[:16]}.npy')


def build_or_load_store(
    documents_fn: Callable[[], Sequence[str]],
    tokenizer: tokenizer_lib.Tokenizer,
    cache_path: str,
) -> TokenStore:
  """Loads the store at `cache_path`, or encodes `documents_fn()` and saves it there first.

  `documents_fn` is only called on a cache miss, so a cached run does not even read the source.
  """
  store = _load(cache_path)
  if store is not None:
    logging.info('Token store %s: %d tokens (cached)', cache_path, store.num_tokens)
    return store
  start = time.perf_counter()
  documents = documents_fn()
  chunks = list(_encode_documents(documents, tokenizer))
  _save(cache_path, chunks, len(documents), _dtype_for(tokenizer.vocab_size))
  store = _load(cache_path)
  assert store is not None
  logging.info(
      'Token store %s: %d documents -> %d tokens in %.1f s',
      cache_path,
      store.num_documents,
      store.num_tokens,
      time.perf_counter() - start,
  )
  return store


def _dtype_for(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def _encode_documents(documents: Sequence[str], tokenizer: tokenizer_lib.Tokenizer):
  dtype = _dtype_for(tokenizer.vocab_size)
  for begin in range(0, len(documents), _ENCODE_CHUNK):
    ids_per_document = tokenizer.encode_batch(documents[begin : begin + _ENCODE_CHUNK])
    lengths = [len(ids) + 1 for ids in ids_per_document]
    chunk = np.full(sum(lengths), tokenizer.eos_id, dtype=dtype)
    ends = np.cumsum(lengths)
    for ids, end in zip(ids_per_document, ends, strict=True):
      chunk[end - 1 - len(ids) : end - 1] = ids
    yield chunk


def _save(path: str, chunks: list[np.ndarray], num_documents: int, dtype: np.dtype):
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  num_tokens = sum(len(c) for c in chunks)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + '.', suffix='.tmp')
  os.close(fd)
  try:
    # Filling a memory-mapped file chunk by chunk avoids holding a concatenated copy in RAM.
    tokens = np.lib.format.open_memmap(tmp, mode='w+', dtype=dtype, shape=(num_tokens,))
    offset = 0
    for chunk in chunks:
      tokens[offset : offset + len(chunk)] = chunk
      offset += len(chunk)
    tokens.flush()
    del tokens
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  metadata = {
      'format_version': FORMAT_VERSION,
      'num_tokens': num_tokens,
      'num_documents': num_documents,
      'dtype': dtype.name,
  }
  tokenizer_lib.write_atomically(_metadata_path(path), json.dumps(metadata).encode())


def _load(path: str) -> TokenStore | None:
  """The store at `path`, or None when it is missing or incomplete."""
  try:
    with open(_metadata_path(path)) as f:
      metadata = json.load(f)
    tokens = np.load(path, mmap_mode='r')
  except (OSError, ValueError):
    return None
  if tokens.ndim != 1 or tokens.shape[0] != metadata.get('num_tokens'):
    logging.warning('Token store %s does not match its metadata; rebuilding it', path)
    return None
  return TokenStore(tokens=tokens, num_documents=int(metadata['num_documents']))


def _metadata_path(path: str) -> str:
  return path + '.json'
