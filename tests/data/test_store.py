"""Token stores: layout, cache hits without re-encoding, atomic writes."""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

from research.data import store as store_lib

DOCUMENTS = ['To be, or not to be', 'Exit, pursued by a bear.', 'O, woe!']


def _never_called():
  raise AssertionError('documents were read again on a cache hit')


def test_layout_is_documents_each_followed_by_eos(small_tokenizer, tmp_path):
  store = store_lib.build_or_load_store(
      lambda: DOCUMENTS, small_tokenizer, str(tmp_path / 's.npy')
  )
  expected = []
  for document in DOCUMENTS:
    expected += small_tokenizer.encode(document) + [small_tokenizer.eos_id]
  np.testing.assert_array_equal(store.tokens, expected)
  assert store.tokens.dtype == np.uint16  # vocab 512 <= 65536.
  assert (store.num_tokens, store.num_documents) == (len(expected), 3)
  assert isinstance(store.tokens, np.memmap)
  assert not store.tokens.flags.writeable


def test_cache_hit_returns_identical_tokens_without_reencoding(
    small_tokenizer, tmp_path, monkeypatch
):
  path = str(tmp_path / 's.npy')
  first = store_lib.build_or_load_store(lambda: DOCUMENTS, small_tokenizer, path)
  mtime = os.stat(path).st_mtime_ns
  monkeypatch.setattr(small_tokenizer, 'encode_batch', lambda texts: _never_called())
  second = store_lib.build_or_load_store(_never_called, small_tokenizer, path)
  np.testing.assert_array_equal(first.tokens, second.tokens)
  assert second.num_documents == 3
  assert os.stat(path).st_mtime_ns == mtime


def test_failed_build_leaves_no_file_and_the_next_build_succeeds(
    small_tokenizer, tmp_path, monkeypatch
):
  path = tmp_path / 's.npy'
  many = DOCUMENTS * 200  # Several encode chunks.
  calls = []
  real_encode_batch = small_tokenizer.encode_batch

  def encode_then_die(texts):
    calls.append(len(texts))
    if len(calls) == 2:
      raise KeyboardInterrupt  # As if the process were killed mid-build.
    return real_encode_batch(texts)

  monkeypatch.setattr(small_tokenizer, 'encode_batch', encode_then_die)
  with pytest.raises(KeyboardInterrupt):
    store_lib.build_or_load_store(lambda: many, small_tokenizer, str(path))
  assert os.listdir(tmp_path) == []
  monkeypatch.undo()
  store = store_lib.build_or_load_store(lambda: many, small_tokenizer, str(path))
  assert store.num_documents == 600


def test_array_without_metadata_counts_as_missing(small_tokenizer, tmp_path):
  path = tmp_path / 's.npy'
  np.save(path, np.arange(5, dtype=np.uint16))  # A store whose writer died before its metadata.
  store = store_lib.build_or_load_store(lambda: DOCUMENTS, small_tokenizer, str(path))
  assert store.num_documents == 3
  assert store.tokens[-1] == small_tokenizer.eos_id
  assert sorted(os.listdir(tmp_path)) == ['s.npy', 's.npy.json']


def test_cache_path_depends_on_source_split_and_tokenizer(small_tokenizer, tmp_path):
  base = store_lib.store_cache_path('/c', 'shakespeare', 'train', small_tokenizer)
  assert base.startswith('/c/tokens/shakespeare-train-') and base.endswith('.npy')
  assert base == store_lib.store_cache_path('/c', 'shakespeare', 'train', small_tokenizer)
  assert base != store_lib.store_cache_path('/c', 'shakespeare', 'validation', small_tokenizer)
  assert base != store_lib.store_cache_path('/c', 'tfds:lm1b', 'train', small_tokenizer)
  other = types.SimpleNamespace(model_proto=small_tokenizer.model_proto[:-1] + b'!')
  assert base != store_lib.store_cache_path('/c', 'shakespeare', 'train', other)


def test_large_vocabularies_are_stored_as_int32():
  assert store_lib._dtype_for(65536) == np.uint16
  assert store_lib._dtype_for(65537) == np.int32
