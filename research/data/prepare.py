r"""Prepares a corpus for training, as an Apache Beam pipeline: documents -> token-id shards.

  python -m research.data.prepare --source='jsonl:/data/fineweb/*.jsonl.gz' --text_key=text \
      --tokenizer=runs/tok/tokenizer.model --out=gs://bucket/fineweb_sp32k [--workers=8]
  # --tokenizer may also be a tokenizer.json or a directory with one (an HF model directory)
  # without --tokenizer, one is trained first on a bounded, seeded sample of the corpus
  # any other flag goes to Beam, e.g. on Dataflow:
  #   --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp

Two passes, each one Beam pipeline over the source's read tasks (`research.data.sources`: one per
input file, or per 10,000 TFDS records), fused from reading to writing so that no document is
ever shuffled, grouped or held by the runner:

1. Only without --tokenizer: every task hashes its lines with the seed and keeps those below a
   threshold; `Top.Smallest` keeps the `tokenizer_sample_lines` smallest hashes over the whole
   corpus (each worker holds at most that many), and SentencePiece trains on them in hash order:
   a uniform, seeded sample that is the same for any number of workers or files.
2. Every task streams its documents, encodes each (bos first when the tokenizer's checkpoint
   adds one, `Tokenizer.adds_bos`; lmforge's own never does), and appends its ids and eos to the
   shards of its split (`research.data.prepared.ShardWriter`: a new shard after
   `shard_tokens`), then yields its counts; the last step writes `manifest.json` from them.

A worker holds one document, one record and the tokenizer, whatever the corpus size
(`max_document_bytes` bounds the document: a longer text file is cut at line breaks). Output is
a pure function of the source, the tokenizer and these settings: a second run writes the same
bytes. Bad input (unreadable files, truncated archives, undecodable bytes, bad JSON, rows
without the text field, empty documents) is counted, with the first file and line, in the
manifest and in one warning; nothing is dropped without a count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging as std_logging
import os
import re
import sys
import tempfile
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath

from research import errors
from research.data import prepared
from research.data import sources
from research.data import tokenizer as tokenizer_lib

_BYTES_PER_LINE_GUESS = 64  # to thin the sample before Top.Smallest; only speed depends on it
_COMPRESSION_GUESS = 4  # uncompressed / compressed bytes of .gz and .zst files


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a preparation makes: every field is a flag of `python -m research.data.prepare`."""

  source: str
  out: str
  text_key: str = 'text'
  tokenizer: str = ''  # a .model, a tokenizer.json or a directory; '' trains one (4 fields below)
  vocab_size: int = 32_768
  tokenizer_type: str = 'bpe'
  num_sentinels: int = 100
  tokenizer_sample_lines: int = 1_000_000
  validation_fraction: float = 0.01  # jsonl and parquet documents held out by key hash
  record_tokens: int = 4096  # ids per ArrayRecord record: one random read
  shard_tokens: int = 64 * 2**20  # ids per shard file before a task starts the next
  max_document_bytes: int = 64 * 2**20  # a longer text file is cut at line breaks
  seed: int = 0  # the tokenizer sample
  data_dir: str = ''  # TFDS data_dir for tfds: and shakespeare sources
  workers: int = 1  # DirectRunner worker processes (other runners scale themselves)


def prepare(settings: Settings, beam_args: Sequence[str] = ()) -> dict[str, Any]:
  """Runs the preparation to the end and returns the manifest it wrote in `settings.out`."""
  _check(settings)
  start = time.perf_counter()
  given = tokenizer_lib.load_tokenizer(settings.tokenizer) if settings.tokenizer else None
  out = epath.Path(settings.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / prepared.MANIFEST).unlink(missing_ok=True)  # half-replaced output is never complete
  for name in tokenizer_lib.SAVED_FILES:  # a previous preparation's tokenizer must not win
    (out / name).unlink(missing_ok=True)
  tasks = sources.list_tasks(settings.source, data_dir=settings.data_dir or None,
                             text_key=settings.text_key)
  logging.info('Preparing %s: %d read tasks, %.1f MB on disk', settings.source, len(tasks),
               sum(t.size for t in tasks) / 1e6)
  if given is not None:
    for name, data in given.files.items():
      prepared.write_bytes_atomically(os.fspath(out / name), data)
  else:
    _run(_sample_and_train_tokenizer, settings, tasks, beam_args)
  tokenizer_files = tokenizer_lib.load_tokenizer(settings.out).files
  _run(_encode_and_write, settings, tasks, beam_args, tokenizer_files=tokenizer_files)
  manifest = prepared.read_manifest(settings.out)
  _report(manifest, time.perf_counter() - start)
  return manifest


def _check(s: Settings):
  if not s.out:
    raise errors.UserError('--out is required: the directory (local or gs://) to write into')
  for name in ('record_tokens', 'shard_tokens', 'max_document_bytes', 'workers',
               'tokenizer_sample_lines'):
    if getattr(s, name) < 1:
      raise errors.UserError(f'--{name}={getattr(s, name)}: must be a positive integer')
  if not 0 <= s.validation_fraction < 1:
    raise errors.UserError(f'--validation_fraction={s.validation_fraction}: use [0, 1), e.g. '
                           '0.01')
  sources.kind_of(s.source)


def pipeline_options(settings: Settings, beam_args: Sequence[str]):
  """Beam options: `beam_args` as given; locally `workers` worker processes."""
  from apache_beam.options import pipeline_options as po  # pylint: disable=g-import-not-at-top

  args = list(beam_args)
  if not _runner_given(args):
    args += [f'--direct_num_workers={settings.workers}',
             '--direct_running_mode=' + ('multi_processing' if settings.workers > 1
                                         else 'in_memory'),
             '--default_sdk_harness_log_level=WARNING']  # worker processes' start-up chatter
  return po.PipelineOptions(args)


def _runner_given(beam_args: Sequence[str]) -> bool:
  return any(a.startswith('--runner') for a in beam_args)


def _local_runner():
  """Beam's Python DirectRunner engine, named: `DirectRunner` itself first tries Prism, which
  downloads a binary at run time (nothing may be downloaded here)."""
  from apache_beam.runners.portability import fn_api_runner  # pylint: disable=g-import-not-at-top

  return fn_api_runner.FnApiRunner()


def _run(build, settings: Settings, tasks, beam_args, **kwargs):
  beam = _import_beam()
  runner = None if _runner_given(beam_args) else _local_runner()
  beam_logger = std_logging.getLogger('apache_beam')
  level = beam_logger.level
  beam_logger.setLevel(std_logging.CRITICAL)  # it logs a failing step's traceback; we raise it
  try:
    with beam.Pipeline(runner=runner,
                       options=pipeline_options(settings, beam_args)) as pipeline:
      tasks_pc = (pipeline
                  | 'Tasks' >> beam.Create(tasks)
                  | 'Spread' >> beam.Reshuffle())
      build(beam, tasks_pc, settings, tasks, **kwargs)
  except errors.UserError as e:  # Beam appends " [while running 'Step']": one line is enough
    raise errors.UserError(str(e).split(" [while running '")[0]) from None
  except RuntimeError as e:  # worker processes send their errors back as text
    found = re.search(r'research\.errors\.(?:User|Config)Error: (.*?)(?: \[while running|$)',
                      str(e), flags=re.M)
    if found is None:
      raise
    raise errors.UserError(found.group(1)) from None
  finally:
    beam_logger.setLevel(level)


def _import_beam():
  # Beam logs its runner's start-up at INFO and, on import, warns of Google Cloud clients that
  # only its GCP connectors need: noise next to the trainer's progress.
  std_logging.getLogger('apache_beam').setLevel(std_logging.WARNING)
  root = std_logging.getLogger()
  level = root.level
  root.setLevel(std_logging.ERROR)
  try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError('apache-beam is not installed: `pip install -e .[beam]` (make train '
                           'and make test install it)') from None
  finally:
    root.setLevel(level)
  return beam


# --- Pass 1: the tokenizer sample ------------------------------------------------------------


def _line_hash(seed: int, key: str, line: int) -> int:
  digest = hashlib.blake2b(f'{seed}\0{key}\0{line}'.encode('utf-8', 'surrogatepass'),
                           digest_size=8).digest()
  return int.from_bytes(digest, 'big')


def _sample_threshold(settings: Settings, tasks) -> int:
  """Lines hashing below this reach `Top.Smallest`: a few times the lines it keeps."""
  size = sum(t.size * (_COMPRESSION_GUESS if t.path.endswith(('.gz', '.zst', '.zstd')) else 1)
             for t in tasks)
  fraction = min(1.0, 4 * settings.tokenizer_sample_lines * _BYTES_PER_LINE_GUESS / max(size, 1))
  return int(fraction * (2**64 - 1))


class _SampleLines:
  """task -> (hash, line) for its lines hashing below the threshold."""

  def __init__(self, settings: Settings, threshold: int):
    self.settings, self.threshold = settings, threshold

  def __call__(self, task):
    s = self.settings
    for document in sources.read_task(task, text_key=s.text_key,
                                      validation_fraction=s.validation_fraction,
                                      data_dir=s.data_dir or None,
                                      max_document_bytes=s.max_document_bytes):
      if document.split != 'train':
        continue
      for i, line in enumerate(tokenizer_lib.training_lines([document.text])):
        h = _line_hash(s.seed, document.key, i)
        if h <= self.threshold:
          yield h, line


class _TrainTokenizer:

  def __init__(self, settings: Settings):
    self.settings = settings

  def __call__(self, sample):
    s = self.settings
    lines = [line for _, line in sorted(sample)]
    if not lines:
      raise errors.UserError(f'--source={s.source}: no training text to sample a tokenizer '
                             'from: check the source and --text_key')
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, prepared.TOKENIZER)
      tokenizer = tokenizer_lib.train_tokenizer(
          lines, s.vocab_size, path, num_sentinels=s.num_sentinels, model_type=s.tokenizer_type)
    prepared.write_bytes_atomically(os.path.join(s.out, prepared.TOKENIZER),
                                    tokenizer.model_proto)
    logging.info('Trained a %s tokenizer of %d ids on %d sampled lines', s.tokenizer_type,
                 tokenizer.vocab_size, len(lines))


def _sample_and_train_tokenizer(beam, tasks_pc, settings: Settings, tasks):
  _ = (tasks_pc
       | 'SampleLines' >> beam.FlatMap(_SampleLines(settings, _sample_threshold(settings, tasks)))
       | 'KeepSmallest' >> beam.combiners.Top.Smallest(settings.tokenizer_sample_lines)
       | 'TrainTokenizer' >> beam.Map(_TrainTokenizer(settings)))


# --- Pass 2: encoding and shards -------------------------------------------------------------


class _EncodeTask:
  """task -> its shards written, and their counts. The tokenizer is loaded once per worker."""

  def __init__(self, settings: Settings, tokenizer_files: dict[str, bytes]):
    self.settings, self.tokenizer_files = settings, tokenizer_files
    self._tokenizer = None

  def __call__(self, task):
    s = self.settings
    if self._tokenizer is None:
      self._tokenizer = tokenizer_lib.tokenizer_from_files(self.tokenizer_files, name='prepare')
    tokenizer = self._tokenizer
    dtype = prepared.token_dtype(tokenizer.vocab_size)
    writers = {split: prepared.ShardWriter(s.out, split, task.index, dtype=dtype,
                                           record_tokens=s.record_tokens,
                                           shard_tokens=s.shard_tokens)
               for split in sources.SPLITS}
    problems = sources.Problems()
    for document in sources.read_task(task, text_key=s.text_key,
                                      validation_fraction=s.validation_fraction,
                                      data_dir=s.data_dir or None, problems=problems,
                                      max_document_bytes=s.max_document_bytes):
      writers[document.split].add(tokenizer.encode(document.text, add_bos=tokenizer.adds_bos),
                                  len(document.text.encode('utf-8', 'surrogatepass')),
                                  tokenizer.eos_id)
    yield {'task': task.index, 'problems': problems.as_dict(),
           'shards': {split: writer.close() for split, writer in writers.items()}}


class _WriteManifest:

  def __init__(self, settings: Settings, tokenizer_files: dict[str, bytes], tasks):
    self.settings, self.tokenizer_files, self.tasks = settings, tokenizer_files, tasks

  def __call__(self, results):
    s = self.settings
    results = sorted(results, key=lambda r: r['task'])
    problems = sources.Problems()
    for r in results:
      for kind, entry in r['problems'].items():
        problems.add(kind, entry['first'], entry['count'])
    splits = {}
    for split in sources.SPLITS:
      shards = [shard for r in results for shard in r['shards'][split]]
      splits[split] = {'tokens': sum(x['tokens'] for x in shards),
                       'bytes': sum(x['bytes'] for x in shards),
                       'documents': sum(x['documents'] for x in shards), 'shards': shards}
    tokenizer = tokenizer_lib.tokenizer_from_files(self.tokenizer_files)
    vocab_size = tokenizer.vocab_size
    manifest = {
        'format_version': prepared.FORMAT_VERSION,
        'source': s.source,
        'source_fingerprint': sources.source_fingerprint(s.source, self.tasks),
        'text_key': s.text_key,
        'tokenizer_sha256': tokenizer.sha256,
        'vocab_size': vocab_size,
        'dtype': prepared.token_dtype(vocab_size).str,
        'record_tokens': s.record_tokens,
        'validation_fraction': s.validation_fraction,
        'splits': splits,
        'problems': problems.as_dict(),
    }
    for split in sources.SPLITS:
      if not splits[split]['tokens']:
        raise errors.UserError(
            f'--source={s.source}: no {split} documents after preparation'
            f'{" (" + problems.describe() + ")" if problems.counts else ""}: check the source, '
            '--text_key and --validation_fraction')
    prepared.write_bytes_atomically(os.path.join(s.out, prepared.MANIFEST),
                                    json.dumps(manifest, indent=1).encode())


def _encode_and_write(beam, tasks_pc, settings: Settings, tasks, *,
                      tokenizer_files: dict[str, bytes]):
  _ = (tasks_pc
       | 'Encode' >> beam.FlatMap(_EncodeTask(settings, tokenizer_files))
       | 'Collect' >> beam.combiners.ToList()
       | 'WriteManifest' >> beam.Map(_WriteManifest(settings, tokenizer_files, tasks)))


def _report(manifest: dict[str, Any], seconds: float):
  splits = manifest['splits']
  size = sum(splits[s]['bytes'] for s in splits)
  logging.info('Prepared %s in %.1f s (%.2f MB/s): %s', manifest['source'], seconds,
               size / 1e6 / max(seconds, 1e-9),
               ', '.join(f'{s} {splits[s]["documents"]:,} documents / {splits[s]["tokens"]:,} '
                         f'tokens' for s in splits))
  if manifest['problems']:
    problems = sources.Problems()
    for kind, entry in manifest['problems'].items():
      problems.add(kind, entry['first'], entry['count'])
    logging.warning('%s: skipped %s', manifest['source'], problems.describe())


# --- Command line ----------------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _define_flags():
  for name, field in _FIELDS.items():
    default = field.default if field.default is not dataclasses.MISSING else ''
    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}[
        type(default) if name not in ('source', 'out') else str]
    define(name, default, f'see research.data.prepare.Settings.{name}')


def main():
  _define_flags()
  argv = flags.FLAGS(sys.argv, known_only=True)  # the rest are Beam's pipeline options
  beam_args = argv[1:]

  @errors.exit_on_user_error
  def run(_):
    logging.set_verbosity(logging.INFO)
    settings = Settings(**{name: flags.FLAGS[name].value for name in _FIELDS})
    manifest = prepare(settings, beam_args)
    print(json.dumps({s: {k: v for k, v in d.items() if k != 'shards'}
                      for s, d in manifest['splits'].items()}))

  app.run(run, argv=[sys.argv[0]])


if __name__ == '__main__':
  main()
