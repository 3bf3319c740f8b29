"""What the trainer calls: config in, tokenizer and per-process batches out.

`load_dataset(config.data)` opens prepared corpora (`research.data.prepared`):

  `data.source='prepared:PATH'`   a directory `python -m research.data.prepare` wrote (local or
                                  gs://); its tokenizer comes with it.
  any other source                prepared on first use into the cache, by the same Beam
                                  pipeline on the local DirectRunner (seconds for Shakespeare),
                                  with the tokenizer `data.tokenizer` (a tokenizer.model, a
                                  tokenizer.json or a directory with one: research.data.tokenizer)
                                  or one trained on a sample (`data.vocab_size`,
                                  `data.tokenizer_type`, `data.num_sentinels`).
  `data.mixture='a=0.7,b=0.3'`    named sources of `data.sources` (each any of the above, one
                                  tokenizer for all), drawn per row by weight.

The cache is `data.cache_dir` (default `$LMFORGE_CACHE`, else `~/.cache/lmforge`):
`tfds/` holds the Shakespeare TFDS build, `prepared/` the prepared corpora, keyed by the source's
fingerprint and the tokenizer settings. The tokenizer is also saved in the workdir
(`tokenizer.model`, or tokenizer.json and tokenizer_config.json for a Hugging Face tokenizer):
sampling and evaluation then need only the workdir, and a resumed run checks that its data was
tokenized by exactly that tokenizer.

Batches are [rows, seq_len + 1] int32 windows (inputs are [:, :-1], targets [:, 1:]); each
process reads only its own rows of the global batch (see `research.data.sampler`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any

from absl import logging
import numpy as np

from research import errors
from research.data import prepared
from research.data import sampler
from research.data import sources
from research.data import tokenizer as tokenizer_lib
from research.data.prepared import PreparedSplit
from research.data.tokenizer import Tokenizer

# The workdir file of a SentencePiece tokenizer; an HF one is tokenizer.json (+ its configs). Find
# a workdir's tokenizer with `tokenizer_lib.find_tokenizer(workdir)`.
WORKDIR_TOKENIZER = tokenizer_lib.SENTENCEPIECE_FILE
# Bump when the tokenizer recipe or a source's reading order changes: it keys cached preparations.
TOKENIZER_RECIPE_VERSION = 4


@dataclasses.dataclass
class Dataset:
  """A tokenizer and the train and validation token streams of one source, with batch readers."""

  tokenizer: Tokenizer
  train: PreparedSplit
  validation: PreparedSplit

  def train_batch(self, seed: int, step: int, global_batch: int, seq_len: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """This process's rows of training batch `step`.

    Returns:
      int32 [global_batch // process_count, seq_len + 1]: inputs [:, :-1], targets [:, 1:].
    """
    window = _window(self.train, seq_len)
    starts_B = sampler.train_window_starts(seed, step, global_batch, self.train.num_tokens, window)
    rows = sampler.process_slice(global_batch, process_index, process_count)
    return self.train.gather(starts_B[rows], window)

  def eval_batch(self, batch_index: int, global_batch: int, seq_len: int,
                 process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """This process's rows of validation batch `batch_index` (windows in order, see sampler)."""
    window = _window(self.validation, seq_len)
    starts_B = sampler.eval_window_starts(batch_index, global_batch, self.validation.num_tokens,
                                          window)
    rows = sampler.process_slice(global_batch, process_index, process_count)
    return self.validation.gather(starts_B[rows], window)

  def num_eval_batches(self, global_batch: int, seq_len: int) -> int:
    """Batches in one pass over validation: whole batches only, at least one."""
    window = _window(self.validation, seq_len)
    return sampler.num_eval_batches(global_batch, self.validation.num_tokens, window)

  def eval_sets(self) -> dict[str, 'Dataset']:
    """What evaluation reports separately: one set, unnamed."""
    return {'': self}


@dataclasses.dataclass
class MixtureDataset:
  """Named datasets with one tokenizer; each training row comes from one, drawn by weight.

  Evaluation reports each component's validation split (`eval/NAME/loss`) and their total.
  """

  tokenizer: Tokenizer
  components: dict[str, Dataset]
  weights: dict[str, float]

  def train_batch(self, seed: int, step: int, global_batch: int, seq_len: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
    names = list(self.components)
    choice_B = sampler.mixture_choices(seed, step, global_batch,
                                       [self.weights[n] for n in names])
    rows = sampler.process_slice(global_batch, process_index, process_count)
    window = seq_len + 1
    out = np.empty((rows.stop - rows.start, window), np.int32)
    for k, name in enumerate(names):
      split = self.components[name].train
      _window(split, seq_len)
      starts_B = sampler.window_starts((seed, step, k), global_batch, split.num_tokens, window)
      mine_B = np.flatnonzero(choice_B[rows] == k)
      out[mine_B] = split.gather(starts_B[rows][mine_B], window)
    return out

  def eval_sets(self) -> dict[str, Dataset]:
    return dict(self.components)

  def num_eval_batches(self, global_batch: int, seq_len: int) -> int:
    return sum(d.num_eval_batches(global_batch, seq_len) for d in self.components.values())


def load_dataset(data_config: Any, *, workdir: str | None = None) -> Dataset | MixtureDataset:
  """The prepared corpus (or mixture) that `data_config` names, preparing it first if needed."""
  start = time.perf_counter()
  _check_config(data_config)
  mixture = parse_mixture(data_config)
  if not mixture:
    dataset = _load_source(data_config, data_config.source, workdir)
    _log(data_config.source, dataset, time.perf_counter() - start)
    return dataset
  named = parse_sources(data_config)
  components = {name: _load_source(data_config, named[name], workdir) for name in mixture}
  digests = {name: d.tokenizer.sha256 for name, d in components.items()}
  if len(set(digests.values())) > 1:
    raise errors.ConfigError('data.mixture', data_config.mixture,
                             f'its sources were tokenized differently ({digests}): prepare them '
                             'with one --tokenizer')
  for name, dataset in components.items():
    _log(f'{name} ({named[name]})', dataset, time.perf_counter() - start)
  return MixtureDataset(tokenizer=next(iter(components.values())).tokenizer,
                        components=components, weights=mixture)


def parse_mixture(data_config: Any) -> dict[str, float]:
  """`data.mixture` 'a=0.7,b=0.3' -> {'a': 0.7, 'b': 0.3} normalised; {} when unset."""
  text = data_config.get('mixture', '')
  if not text:
    return {}
  named = parse_sources(data_config)
  weights = {}
  for entry in text.split(','):
    name, sep, weight = entry.strip().partition('=')
    try:
      value = float(weight)
    except ValueError:
      value = -1.0
    if not sep or value <= 0 or not re.fullmatch(r'[A-Za-z0-9_.-]+', name):
      raise errors.ConfigError('data.mixture', text,
                               "use 'NAME=WEIGHT,...' with positive weights, e.g. "
                               "'fineweb=0.7,code=0.3'")
    if name not in named:
      raise errors.ConfigError('data.mixture', text,
                               f'{name!r} is not in data.sources (has {sorted(named)}): set '
                               f"--config.data.sources='{name}=prepared:PATH,...'")
    weights[name] = value
  total = sum(weights.values())
  return {name: w / total for name, w in weights.items()}


def parse_sources(data_config: Any) -> dict[str, str]:
  """`data.sources` 'a=prepared:/x,b=jsonl:/y/*.jsonl' -> {'a': 'prepared:/x', ...}."""
  named = {}
  for entry in filter(None, (e.strip() for e in data_config.get('sources', '').split(','))):
    name, sep, source = entry.partition('=')
    if not sep or not source or not re.fullmatch(r'[A-Za-z0-9_.-]+', name):
      raise errors.ConfigError('data.sources', data_config.sources,
                               "use 'NAME=SOURCE,...', e.g. 'fineweb=prepared:/data/fw,"
                               "code=prepared:/data/code'")
    sources.kind_of(source)
    named[name] = source
  return named


def load_tokenizer_from_workdir(workdir: str) -> Tokenizer:
  """The tokenizer a run trained with, for sampling and evaluation."""
  if not has_tokenizer(workdir):
    raise errors.UserError(
        f'{os.path.join(workdir, WORKDIR_TOKENIZER)} does not exist (nor tokenizer.json): '
        '--workdir must be the workdir of a training run')
  return tokenizer_lib.load_tokenizer(workdir)


def has_tokenizer(workdir: str) -> bool:
  """Whether `workdir` holds a tokenizer (a run saves its own there)."""
  return os.path.isdir(workdir) and tokenizer_lib.find_tokenizer(workdir) is not None


def resolve_cache_dir(cache_dir: str) -> str:
  """`data.cache_dir`, else `$LMFORGE_CACHE`, else `~/.cache/lmforge`."""
  chosen = cache_dir or os.environ.get('LMFORGE_CACHE') or '~/.cache/lmforge'
  return os.path.abspath(os.path.expanduser(chosen))


def load_split(data_config: Any, tokenizer_path: str, *, source: str | None = None,
               split: str = 'validation') -> PreparedSplit:
  """One split of `source` (default `data.source`) tokenized by the tokenizer at
  `tokenizer_path`: evaluating a run on another corpus uses the run's own tokenizer."""
  source = source or data_config.source
  data_config = data_config.copy_and_resolve_references()
  data_config.source = source
  data_config.tokenizer = tokenizer_path
  _check_config(data_config)
  directory = _prepared_directory(data_config, source)
  manifest = prepared.read_manifest(directory)
  return prepared.open_split(directory, manifest, split)


def _check_config(data_config: Any):
  if not isinstance(data_config.source, str) or not data_config.source:
    raise errors.ConfigError('data.source', data_config.source, f'use {sources.SOURCE_FORMS}')
  sources.kind_of(data_config.source)
  for field in ('vocab_size', 'seq_len'):
    value = data_config[field]
    if not isinstance(value, int) or value < 1:
      raise errors.ConfigError(f'data.{field}', value, 'must be a positive integer')
  if data_config.tokenizer_type not in tokenizer_lib.MODEL_TYPES:
    raise errors.ConfigError(
        'data.tokenizer_type', data_config.tokenizer_type, f'use one of {tokenizer_lib.MODEL_TYPES}'
    )


def _load_source(data_config: Any, source: str, workdir: str | None) -> Dataset:
  resumed = bool(workdir) and has_tokenizer(workdir)
  directory = _prepared_directory(data_config, source, workdir if resumed else '')
  manifest = prepared.read_manifest(directory)
  tokenizer = _tokenizer_of(directory, manifest, source)
  if resumed and tokenizer_lib.load_tokenizer(workdir).sha256 != tokenizer.sha256:
    raise errors.ConfigError(
        'data.source', source,
        f"was tokenized by another tokenizer than this run's (in {workdir}): resume on the data "
        'the run started with, or start a new workdir')
  if tokenizer.vocab_size != data_config.vocab_size:
    raise errors.ConfigError(
        'data.vocab_size', data_config.vocab_size,
        f'the tokenizer of {directory} has {tokenizer.vocab_size} ids: set '
        f'data.vocab_size={tokenizer.vocab_size}')
  if workdir and not resumed:
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(workdir)
  dataset = Dataset(tokenizer=tokenizer, train=prepared.open_split(directory, manifest, 'train'),
                    validation=prepared.open_split(directory, manifest, 'validation'))
  for split in (dataset.train, dataset.validation):
    _window(split, data_config.seq_len)
  return dataset


def _tokenizer_of(directory: str, manifest: dict[str, Any], source: str) -> Tokenizer:
  found = tokenizer_lib.find_tokenizer(directory)
  if found is None:
    raise errors.ConfigError('data.source', source,
                             f'{directory} has no tokenizer file: prepare the corpus again')
  tokenizer = tokenizer_lib.load_tokenizer(directory)
  if tokenizer.sha256 != manifest['tokenizer_sha256']:
    raise errors.ConfigError('data.source', source,
                             f'{os.path.join(directory, found)} is not the tokenizer its manifest '
                             'was written with: prepare the corpus again')
  return tokenizer


def _prepared_directory(data_config: Any, source: str, run_tokenizer: str = '') -> str:
  """`prepared:PATH`'s PATH (checked against data.tokenizer), or the cache directory of
  `source` prepared with the configured tokenizer, preparing it there first if needed.

  `run_tokenizer` is a resumed run's workdir: the cached preparation is used only if it was
  tokenized by exactly the tokenizer there; else the source is prepared again with it.
  """
  if sources.kind_of(source) == 'prepared':
    directory = source[len('prepared:'):]
    if data_config.tokenizer:
      given = tokenizer_lib.load_tokenizer(os.path.expanduser(data_config.tokenizer))
      saved = prepared.read_manifest(directory)['tokenizer_sha256']
      if given.sha256 != saved:
        raise errors.ConfigError(
            'data.tokenizer', data_config.tokenizer,
            f'is not the tokenizer {directory} was prepared with: leave data.tokenizer empty '
            '(the corpus brings its own) or prepare the corpus with this one')
    return directory
  from research.data import prepare  # pylint: disable=g-import-not-at-top

  cache_dir = resolve_cache_dir(data_config.cache_dir)
  settings = prepare.Settings(
      source=source, out='', text_key=data_config.text_key,
      tokenizer=os.path.expanduser(data_config.tokenizer) if data_config.tokenizer else '',
      vocab_size=data_config.vocab_size, tokenizer_type=data_config.tokenizer_type,
      num_sentinels=data_config.num_sentinels,
      validation_fraction=data_config.get('validation_fraction', 0.01),
      data_dir=_tfds_data_dir(data_config, source, cache_dir) or '')
  directory = os.path.join(cache_dir, 'prepared', _cache_name(source, settings))
  if run_tokenizer and not _tokenized_by(directory, run_tokenizer):
    settings = dataclasses.replace(settings, tokenizer=run_tokenizer)
    directory = os.path.join(cache_dir, 'prepared', _cache_name(source, settings))
  settings = dataclasses.replace(settings, out=directory)
  if os.path.exists(os.path.join(directory, prepared.MANIFEST)):
    return directory
  # Processes sharing a cache (hosts on one disk, parallel tests) prepare it once.
  with sources.exclusive(directory + '.lock'):
    if not os.path.exists(os.path.join(directory, prepared.MANIFEST)):
      logging.info('Preparing %s into %s', source, directory)
      prepare.prepare(settings)
  return directory


def _tokenized_by(directory: str, tokenizer_path: str) -> bool:
  """Whether the prepared `directory` exists and was tokenized by the tokenizer at
  `tokenizer_path`."""
  try:
    with open(os.path.join(directory, prepared.MANIFEST)) as f:
      saved = json.load(f)['tokenizer_sha256']
  except (OSError, ValueError, KeyError):
    return False
  return tokenizer_lib.load_tokenizer(tokenizer_path).sha256 == saved


def _cache_name(source: str, settings: Any) -> str:
  if settings.tokenizer:
    tokenizer_key = tokenizer_lib.load_tokenizer(settings.tokenizer).sha256
  else:
    tokenizer_key = (f'{TOKENIZER_RECIPE_VERSION}/{settings.tokenizer_type}/'
                     f'{settings.vocab_size}/{settings.num_sentinels}')
  key = '|'.join(str(part) for part in (
      prepared.FORMAT_VERSION, sources.local_fingerprint(source), settings.text_key,
      settings.validation_fraction, tokenizer_key))
  readable = re.sub(r'[^A-Za-z0-9_.-]+', '_', source)[:48].strip('_')
  return f'{readable}-{hashlib.sha256(key.encode()).hexdigest()[:16]}'


def _tfds_data_dir(data_config: Any, source: str, cache_dir: str) -> str | None:
  """Shakespeare is built in the cache; real TFDS datasets live in TFDS's data_dir."""
  if source == 'shakespeare':
    return os.path.join(cache_dir, 'tfds')
  return data_config.get('data_dir', '') or None


def _window(split: PreparedSplit, seq_len: int) -> int:
  if seq_len < 1 or split.num_tokens < seq_len + 1:
    raise errors.ConfigError(
        'data.seq_len', seq_len,
        f'the {split.name} split of {split.directory} has {split.num_tokens} tokens: '
        f'use 1..{split.num_tokens - 1}')
  return seq_len + 1


def _log(source: str, dataset: Dataset, seconds: float):
  logging.info(
      'Dataset %s: vocab %d, train %d tokens / %d documents, validation %d tokens / %d '
      'documents, ready in %.1f s', source, dataset.tokenizer.vocab_size,
      dataset.train.num_tokens, dataset.train.num_documents, dataset.validation.num_tokens,
      dataset.validation.num_documents, seconds)
