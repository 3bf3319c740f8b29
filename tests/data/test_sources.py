"""Source strings: shakespeare, tfds:NAME, text:GLOB, jsonl:GLOB, parquet:GLOB, and bad input."""

from __future__ import annotations

import gzip
import logging
import os

import pytest

from research import errors
from research.data import sources


def _write_files(directory, texts: dict[str, str | bytes]):
  for name, text in texts.items():
    data = text.encode() if isinstance(text, str) else text
    (directory / name).write_bytes(data)


def test_shakespeare_documents_are_ordered_by_title(train_documents, validation_documents):
  assert len(train_documents) == 38 and len(validation_documents) == 4
  assert train_documents[0].startswith("ALL'S WELL THAT ENDS WELL")  # alls_well_that_ends_well
  assert validation_documents[0].startswith('THE LIFE OF KING HENRY V')  # henry_v
  assert validation_documents[-1].startswith('THE SONNETS')


def test_tfds_prefix_reads_a_prepared_dataset(shakespeare_data_dir, validation_documents):
  # The builder is registered with TFDS, so the generic path reads it like any real dataset.
  documents = sources.load_documents(
      'tfds:shakespeare', 'validation', data_dir=shakespeare_data_dir
  )
  assert sorted(documents) == sorted(validation_documents)
  with pytest.raises(errors.ConfigError, match=r"^data\.text_key='body'.*\['text', 'title'\]"):
    sources.load_documents('tfds:shakespeare', 'train', data_dir=shakespeare_data_dir,
                           text_key='body')


def test_tfds_dataset_not_prepared_is_a_clear_error(tmp_path):
  with pytest.raises(errors.ConfigError, match=r"^data\.source='tfds:lm1b': lm1b is not prepared"):
    sources.load_documents('tfds:lm1b', 'train', data_dir=str(tmp_path))
  with pytest.raises(errors.ConfigError, match="TFDS has no dataset 'no_such_corpus'"):
    sources.load_documents('tfds:no_such_corpus', 'train', data_dir=str(tmp_path))


def test_text_glob_holds_out_every_tenth_file(tmp_path):
  _write_files(tmp_path, {f'doc{i:02d}.txt': f'document {i}\n' for i in range(12)})
  source = f'text:{tmp_path}/*.txt'
  train = sources.load_documents(source, 'train', data_dir=None)
  validation = sources.load_documents(source, 'validation', data_dir=None)
  assert validation == ['document 0\n', 'document 10\n']
  assert train == [f'document {i}\n' for i in range(12) if i not in (0, 10)]


def test_text_glob_single_file_gives_its_last_tenth_to_validation(tmp_path):
  text = ''.join(f'line {i:03d}\n' for i in range(100))  # 900 characters.
  _write_files(tmp_path, {'one.txt': text})
  source = f'text:{tmp_path}/one.txt'
  train = sources.load_documents(source, 'train', data_dir=None)
  validation = sources.load_documents(source, 'validation', data_dir=None)
  assert train[0] + validation[0] == text
  assert validation[0].startswith('line 090\n')  # Cut at a line break, 10 % of the text.


def test_empty_files_are_skipped_and_counted(tmp_path, caplog):
  _write_files(
      tmp_path, {'a.txt': 'Words, words, words.', 'b.txt': '', 'c.txt': '\n \n', 'd.txt': 'x'}
  )
  source = f'text:{tmp_path}/*.txt'
  with caplog.at_level(logging.INFO):
    train = sources.load_documents(source, 'train', data_dir=None)
  assert train == ['x']  # a.txt is validation (the first of 3 non-empty files); c.txt is blank.
  assert 'skipped 1 empty files' in caplog.text
  assert 'skipped 1 empty documents (first at c.txt)' in caplog.text


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, caplog):
  _write_files(tmp_path, {'bad.txt': b'Alas, poor Yorick\xff\xfe!\n' * 20})
  with caplog.at_level(logging.WARNING):
    train = sources.load_documents(f'text:{tmp_path}/bad.txt', 'train', data_dir=None)
  assert train[0].startswith('Alas, poor Yorick\ufffd\ufffd!\n')
  assert '40 undecodable bytes' in caplog.text  # Counted over the whole file.


def test_glob_matching_nothing_names_the_field(tmp_path):
  with pytest.raises(errors.ConfigError) as e:
    sources.load_documents(f'text:{tmp_path}/*.txt', 'train', data_dir=None)
  assert str(e.value) == f"data.source='text:{tmp_path}/*.txt': matched no files: check the glob"


def test_all_empty_files_is_an_error(tmp_path):
  _write_files(tmp_path, {'a.txt': '', 'b.txt': ''})
  with pytest.raises(errors.ConfigError, match=r'^data\.source=.*all 2 matching files are empty'):
    sources.load_documents(f'text:{tmp_path}/*.txt', 'train', data_dir=None)
  _write_files(tmp_path, {'c.txt': '   \n'})
  with pytest.raises(errors.ConfigError, match='no non-empty documents'):
    sources.load_documents(f'text:{tmp_path}/*.txt', 'train', data_dir=None)


def test_unreadable_file_is_counted_with_its_path(tmp_path, caplog):
  _write_files(tmp_path, {'a.txt': 'x', 'b.txt': 'y', 'c.txt': 'z'})
  (tmp_path / 'b.txt').chmod(0)
  if os.access(tmp_path / 'b.txt', os.R_OK):  # root reads anything: make it a directory-like
    (tmp_path / 'b.txt').chmod(0o644)       # failure instead, a truncated gzip stream
    (tmp_path / 'b.txt').unlink()
    (tmp_path / 'b.txt.gz').write_bytes(gzip.compress(b'y' * 1000)[:20])
    source = f'text:{tmp_path}/*.txt*'
  else:
    source = f'text:{tmp_path}/*.txt'
  with caplog.at_level(logging.WARNING):
    train = sources.load_documents(source, 'train', data_dir=None)
  assert train == ['z']  # a.txt is validation
  assert 'skipped 1 unreadable files (first at ' in caplog.text and 'b.txt' in caplog.text


def test_unknown_prefix_lists_the_valid_forms():
  with pytest.raises(errors.ConfigError) as e:
    sources.load_documents('hf:wikitext', 'train', data_dir=None)
  assert e.value.field == 'data.source'
  message = str(e.value)
  assert message.startswith("data.source='hf:wikitext': use ")
  assert all(form in message for form in ("'shakespeare'", "'tfds:NAME'", "'text:GLOB'"))
  assert '\n' not in message
