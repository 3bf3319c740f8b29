"""What a `data.source` string holds: independent read tasks, each yielding keyed documents.

Sources:
  `shakespeare`    the built-in corpus (`research.data.shakespeare`), a TFDS dataset built in the
                   cache once; its splits hold out whole works.
  `tfds:NAME`      a TFDS dataset already prepared in `data_dir` with `file_format=array_record`
                   (e.g. `tfds:lm1b`, `tfds:c4/en:3.1.0`); the text is the feature `text_key`.
                   Nothing is ever downloaded. A dataset without a `validation` split uses `test`.
  `text:GLOB`      UTF-8 files, one document per file. Validation holds every 10th non-empty file
                   in name order (the 1st, 11th, ...); a single file gives its last 10 % of
                   characters (from the next line break on) to validation.
  `jsonl:GLOB`     JSON lines with a text field `text_key` (FineWeb, Dolma, The Pile, C4 dumps),
  `parquet:GLOB`   or Parquet files with a text column; `.gz` and `.zst` JSON lines are read
                   through their decompressor. Validation holds each document whose key hashes
                   below `validation_fraction`, so the split never depends on file order or count.

A source is listed once (`list_tasks`, on the machine that launches the preparation: file names
and sizes, never contents), then each task is read independently (`read_task`, wherever a Beam
worker runs it), streaming: memory holds one document at a time, never a file or a corpus.
GLOBs are local or any `etils.epath` path (`gs://...`).

Bad input is counted in a `Problems` tally with the first place it happened (file and line), so
the preparation can report it; nothing is dropped without a count.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
import fcntl
import glob
import gzip
import hashlib
import io
import json
import logging as std_logging
import os
from typing import Any

from absl import logging
from etils import epath

from research import errors

SPLITS = ('train', 'validation')
SOURCE_FORMS = (
    "'shakespeare', 'tfds:NAME', 'text:GLOB', 'jsonl:GLOB', 'parquet:GLOB' (e.g. "
    "'jsonl:/data/fineweb/*.jsonl.gz') or 'prepared:PATH' (research.data.prepare's output)"
)
FILE_KINDS = ('text', 'jsonl', 'parquet')
TEXT_VALIDATION_EVERY = 10
TEXT_VALIDATION_FRACTION = 0.1
TFDS_RECORDS_PER_TASK = 10_000  # TFDS records one task reads: tasks stay small and many.
_PARQUET_BATCH_ROWS = 256  # Rows per Arrow batch: bounds a worker's memory on wide rows.


@dataclasses.dataclass(frozen=True)
class Task:
  """One independently readable piece of a source.

  kind: 'text' | 'jsonl' | 'parquet' | 'tfds'. For files, `path` and its `size` in bytes; `split`
  is fixed for a text file ('' : a single text file, cut into both splits; per document hash for
  jsonl and parquet). For TFDS, `path` is the dataset name, `split` its split and the records
  [begin, end) of that split.
  """

  index: int
  kind: str
  path: str
  size: int = 0
  split: str = ''
  begin: int = 0
  end: int = 0
  relpath: str = ''  # the path below the GLOB's fixed prefix: keys do not depend on the mount
  order_by: str = ''  # TFDS: a feature to read the task's records in order of (Shakespeare: title)


@dataclasses.dataclass
class Document:
  key: str  # unique and stable within the source: what the validation hash and sample read
  text: str
  split: str


@dataclasses.dataclass
class Problems:
  """Counts of bad input and where each kind first happened ('path:line')."""

  counts: dict[str, int] = dataclasses.field(default_factory=dict)
  first: dict[str, str] = dataclasses.field(default_factory=dict)

  def add(self, kind: str, where: str, n: int = 1):
    if n <= 0:
      return
    self.counts[kind] = self.counts.get(kind, 0) + n
    self.first.setdefault(kind, where)

  def as_dict(self) -> dict[str, Any]:
    return {k: {'count': self.counts[k], 'first': self.first[k]} for k in sorted(self.counts)}

  def describe(self) -> str:
    return '; '.join(f'{n} {kind.replace("_", " ")} (first at {self.first[kind]})'
                     for kind, n in sorted(self.counts.items()))


def decode_utf8(data: bytes) -> tuple[str, int]:
  """Decodes UTF-8, replacing bad bytes with U+FFFD; returns (text, number of bad bytes)."""
  try:
    return data.decode('utf-8'), 0
  except UnicodeDecodeError:
    clean = data.decode('utf-8', errors='ignore').encode('utf-8')
    return data.decode('utf-8', errors='replace'), len(data) - len(clean)


def held_out(key: str, fraction: float) -> bool:
  """Whether the document `key` belongs to validation: a hash, so stable under any sharding."""
  digest = hashlib.sha256(key.encode('utf-8', errors='surrogatepass')).digest()
  return int.from_bytes(digest[:8], 'big') < fraction * 2**64


def kind_of(source: str) -> str:
  """'shakespeare', 'tfds', 'text', 'jsonl', 'parquet' or 'prepared'; ConfigError otherwise."""
  if source == 'shakespeare':
    return source
  kind, sep, rest = source.partition(':')
  if sep and rest and kind in ('tfds', 'prepared', *FILE_KINDS):
    return kind
  raise errors.ConfigError('data.source', source, f'use {SOURCE_FORMS}')


def list_tasks(source: str, *, data_dir: str | None, text_key: str = 'text') -> list[Task]:
  """The read tasks of `source`, in a deterministic order (by file name, split, record)."""
  kind = kind_of(source)
  if kind == 'shakespeare':
    if data_dir is None:
      raise errors.UserError('data_dir is None: Shakespeare needs a directory to be built in')
    prepare_shakespeare(data_dir)
    # Works in title order, whatever order TFDS stored them in: the stream reads as the corpus
    # does, and evaluation on its first batches always starts at the same play.
    return [dataclasses.replace(task, order_by='title')
            for task in _tfds_tasks('tfds:shakespeare', data_dir, text_key)]
  if kind == 'tfds':
    return _tfds_tasks(source, data_dir, text_key)
  if kind == 'prepared':
    raise errors.ConfigError('data.source', source, 'is already prepared: load it, do not list it')
  return _file_tasks(source, kind)


def read_task(task: Task, *, text_key: str = 'text', validation_fraction: float = 0.01,
              data_dir: str | None = None, problems: Problems | None = None,
              max_document_bytes: int = 64 * 2**20) -> Iterator[Document]:
  """The documents of one task, streamed; bad input is counted into `problems`.

  A text file longer than `max_document_bytes` comes as several documents, cut at line breaks,
  so that memory never holds more than that much of it.
  """
  problems = problems if problems is not None else Problems()
  readers = {'text': _read_text_task, 'jsonl': _read_jsonl_task, 'parquet': _read_parquet_task,
             'tfds': _read_tfds_task}
  for document in readers[task.kind](task, text_key=text_key, data_dir=data_dir,
                                     problems=problems, max_document_bytes=max_document_bytes):
    if not document.split:
      document.split = 'validation' if held_out(document.key, validation_fraction) else 'train'
    if not document.text.strip():
      problems.add('empty_documents', document.key)
      continue
    yield document


def load_documents(source: str, split: str, *, data_dir: str | None, text_key: str = 'text',
                   validation_fraction: float = 0.01) -> list[str]:
  """Every document of `split`, in memory: for small corpora, tests and notebooks. Training
  never calls this: it reads prepared shards (`research.data.prepare`)."""
  if split not in SPLITS:
    raise errors.UserError(f'split={split!r}: use one of {SPLITS}')
  problems = Problems()
  documents = [d.text for task in list_tasks(source, data_dir=data_dir, text_key=text_key)
               for d in read_task(task, text_key=text_key, data_dir=data_dir,
                                  validation_fraction=validation_fraction, problems=problems)
               if d.split == split]
  if problems.counts:
    logging.warning('%s: skipped %s', source, problems.describe())
  if not documents:
    raise errors.ConfigError(
        'data.source', source, f'its {split} split has no non-empty documents: check the data')
  return documents


def source_fingerprint(source: str, tasks: list[Task]) -> str:
  """A string that changes when the documents of `source` may have changed."""
  if source == 'shakespeare':
    from research.data import shakespeare  # pylint: disable=g-import-not-at-top

    return f'{source}@{shakespeare.Shakespeare.VERSION}:{",".join(shakespeare.VALIDATION_WORKS)}'
  digest = hashlib.sha256()
  for task in tasks:
    digest.update(f'{task.relpath or task.path}\0{task.size}\0{task.split}\0{task.begin}\0'
                  f'{task.end}\0'.encode())
  return f'{source}@{digest.hexdigest()[:16]}'


def local_fingerprint(source: str) -> str:
  """A cheap fingerprint for cache keys: file names, sizes and modification times."""
  kind = kind_of(source)
  if kind not in FILE_KINDS:
    return source_fingerprint(source, []) if kind == 'shakespeare' else source
  digest = hashlib.sha256()
  for path in _matching_files(source):
    stat = epath.Path(path).stat()
    digest.update(f'{path}\0{stat.length}\0{stat.mtime}\0'.encode())
  return f'{source}@{digest.hexdigest()[:16]}'


def prepare_shakespeare(data_dir: str):
  """Builds the Shakespeare TFDS dataset in `data_dir` unless it is there; returns the builder."""
  from research.data import shakespeare  # pylint: disable=g-import-not-at-top

  shakespeare.texts_dir()  # A missing package is a UserError before TFDS gets involved.
  with quiet_tfds():
    builder = shakespeare.Shakespeare(data_dir=data_dir, file_format='array_record')
    if builder.is_prepared():
      return builder
    # Processes that share a data_dir (hosts of a job, parallel test workers) build it once:
    # TFDS renames its finished directory into place, and a second rename onto it would fail.
    with exclusive(os.path.join(data_dir, '.shakespeare.lock')):
      builder = shakespeare.Shakespeare(data_dir=data_dir, file_format='array_record')
      if not builder.is_prepared():
        logging.info('Preparing the Shakespeare dataset in %s', data_dir)
        builder.download_and_prepare()
  return builder


@contextlib.contextmanager
def exclusive(lock_path: str):
  """An advisory lock on `lock_path` (created) for the block: one process at a time."""
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  with open(lock_path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_tfds():
  """TFDS announces 'Downloading and preparing ... Unknown size' for a local build and warns of
  the half-built folder it builds in; neither means anything here."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  with contextlib.redirect_stdout(io.StringIO()), _absl_level(std_logging.ERROR):
    yield


@contextlib.contextmanager
def _absl_level(level: int):
  """absl's Python logger at `level` for the block (TFDS logs through it)."""
  logger = std_logging.getLogger('absl')
  previous = logger.level
  logger.setLevel(max(level, previous))
  try:
    yield
  finally:
    logger.setLevel(previous)


# --- TFDS ------------------------------------------------------------------------------------


def _tfds_builder(source: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = source[len('tfds:'):]
  where = data_dir or 'the default TFDS data_dir'
  try:
    with quiet_tfds():
      builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.ConfigError(
        'data.source', source, f'TFDS has no dataset {name!r}: check the name (tfds:NAME[/CONFIG])'
    ) from None
  if not builder.is_prepared():
    raise errors.ConfigError(
        'data.source', source,
        f'{name} is not prepared in {where} and nothing is downloaded at run time: run '
        f'`tfds build {name} --data_dir=DIR --file_format=array_record` where it can be fetched')
  return builder


def _tfds_tasks(source: str, data_dir: str | None, text_key: str) -> list[Task]:
  builder = _tfds_builder(source, data_dir)
  if text_key not in builder.info.features:
    raise errors.ConfigError('data.text_key', text_key,
                             f'{source[5:]} has features {sorted(builder.info.features)}')
  if builder.info.file_format.value != 'array_record':
    raise errors.ConfigError(
        'data.source', source,
        f'{source[5:]} is stored as {builder.info.file_format.value}, which has no random '
        'access: re-prepare it with --file_format=array_record')
  tasks = []
  for split in SPLITS:
    stored = _existing_split(builder, split, source)
    n = builder.info.splits[stored].num_examples
    for begin in range(0, n, TFDS_RECORDS_PER_TASK):
      end = min(n, begin + TFDS_RECORDS_PER_TASK)
      size = builder.info.splits[stored].num_bytes * (end - begin) // max(n, 1)
      tasks.append(Task(index=len(tasks), kind='tfds', path=source[5:], split=split,
                        begin=begin, end=end, size=size, relpath=stored))
  return tasks


def _existing_split(builder: Any, split: str, source: str) -> str:
  available = sorted(builder.info.splits)
  if split in available:
    return split
  if split == 'validation' and 'test' in available:
    logging.warning('%s has no validation split; using its test split', source)
    return 'test'
  raise errors.ConfigError('data.source', source, f'has splits {available}, none for {split!r}')


def _read_tfds_task(task: Task, *, text_key: str, data_dir: str | None, problems: Problems,
                    **unused):
  del unused
  builder = _tfds_builder(f'tfds:{task.path}', data_dir)
  data_source = builder.as_data_source(split=task.relpath)
  records = list(zip(range(task.begin, task.end),
                     data_source.__getitems__(range(task.begin, task.end))))
  if task.order_by:
    records.sort(key=lambda item: item[1][task.order_by])
  for index, record in records:
    text = record[text_key]
    if isinstance(text, bytes):
      text, bad = decode_utf8(text)
      problems.add('undecodable_bytes', f'{task.path}/{task.relpath}[{index}]', bad)
    yield Document(key=f'{task.relpath}/{index:09d}', text=text, split=task.split)


# --- Files -----------------------------------------------------------------------------------


def _glob_base(pattern: str) -> str:
  """The directory part of `pattern` before its first wildcard."""
  head = pattern
  for i, ch in enumerate(pattern):
    if ch in '*?[':
      head = pattern[:i]
      break
  return head.rsplit('/', 1)[0] if '/' in head else ''


def _matching_files(source: str) -> list[str]:
  pattern = os.path.expanduser(source.partition(':')[2])
  if '://' in pattern:
    base = _glob_base(pattern)
    paths = sorted(os.fspath(p) for p in epath.Path(base).glob(pattern[len(base) + 1:]))
  else:
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not paths:
    raise errors.ConfigError('data.source', source, 'matched no files: check the glob')
  return paths


def _file_tasks(source: str, kind: str) -> list[Task]:
  paths = _matching_files(source)
  base = _glob_base(os.path.expanduser(source.partition(':')[2]))
  sizes = {p: epath.Path(p).stat().length for p in paths}
  nonempty = [p for p in paths if sizes[p] > 0]
  if not nonempty:
    raise errors.ConfigError(
        'data.source', source, f'all {len(paths)} matching files are empty: check the glob')
  if len(nonempty) < len(paths):
    logging.warning('%s: skipped %d empty files (first: %s)', source,
                    len(paths) - len(nonempty), next(p for p in paths if sizes[p] == 0))
  tasks = []
  for i, path in enumerate(nonempty):
    split = ''
    if kind == 'text' and len(nonempty) > 1:
      split = 'validation' if i % TEXT_VALIDATION_EVERY == 0 else 'train'
    relpath = path[len(base) + 1:] if base and path.startswith(base + '/') else path
    tasks.append(Task(index=i, kind=kind, path=path, size=sizes[path], split=split,
                      relpath=relpath))
  return tasks


def _open_binary(path: str):
  """The file's bytes, decompressed when its name ends in .gz or .zst/.zstd."""
  f = epath.Path(path).open('rb')
  if path.endswith('.gz'):
    return _Closing(gzip.GzipFile(fileobj=f), f)  # GzipFile leaves a given file open
  if path.endswith(('.zst', '.zstd')):
    import zstandard  # pylint: disable=g-import-not-at-top

    return zstandard.ZstdDecompressor().stream_reader(f, closefd=True)
  return f


class _Closing(io.BufferedReader):
  """A buffered reader of `stream` that also closes `underlying` when it is closed."""

  def __init__(self, stream, underlying):
    super().__init__(stream)
    self._underlying = underlying

  def close(self):
    try:
      super().close()
    finally:
      self._underlying.close()


def _reason(e: Exception) -> str:
  return getattr(e, 'strerror', None) or str(e) or type(e).__name__


def _read_text_task(task: Task, *, problems: Problems, max_document_bytes: int, **unused):
  """A file is one document (pieces of at most `max_document_bytes`, cut after a line break);
  a single file's last 10 % (from the first line start at or after 90 % of its bytes) is
  validation."""
  del unused
  cut = None if task.split else _validation_cut(task)
  done, piece = 0, 0
  try:
    with _open_binary(task.path) as f:
      carry = b''
      while True:
        block = f.read(max_document_bytes - len(carry)) if len(carry) < max_document_bytes else b''
        data = carry + block
        if not data:
          break
        end = len(data)
        if block and end >= max_document_bytes:  # more follows: end this piece at a line break
          newline = data.rfind(b'\n')
          end = newline + 1 if newline >= 0 else end
        if cut is not None and done < cut < done + end:
          end = cut - done
        text, bad = decode_utf8(data[:end])
        problems.add('undecodable_bytes', task.path, bad)
        split = task.split or ('validation' if cut is not None and done >= cut else 'train')
        key = task.relpath if piece == 0 else f'{task.relpath}@{piece}'
        yield Document(key=key if task.split else f'{key}#{split}', text=text, split=split)
        done, piece, carry = done + end, piece + 1, data[end:]
        if not block and not carry:
          break
  except (OSError, EOFError) as e:
    problems.add('unreadable_files', f'{task.path} ({_reason(e)})')


def _validation_cut(task: Task) -> int:
  """Where validation starts in a single file: the first line start at or after 90 % of it."""
  with _open_binary(task.path) as f:
    if task.path.endswith(('.gz', '.zst', '.zstd')):  # no seeking: the size is known once read
      data = f.read()
      size = len(data)
      start = max(int(size * (1 - TEXT_VALIDATION_FRACTION)) - 1, 0)
      position = data.find(b'\n', start)
    else:
      size = task.size
      start = max(int(size * (1 - TEXT_VALIDATION_FRACTION)) - 1, 0)
      f.seek(start)
      found = f.read(1 << 20).find(b'\n')
      position = start + found if found >= 0 else -1
  return position + 1 if 0 <= position < size - 1 else int(size * (1 - TEXT_VALIDATION_FRACTION))


def _read_jsonl_task(task: Task, *, text_key: str, problems: Problems, **unused):
  """One document per line holding a JSON object with a string `text_key`."""
  del unused
  try:
    with _open_binary(task.path) as raw:
      for number, line in enumerate(io.BufferedReader(raw), start=1):
        if not line.strip():
          continue
        where = f'{task.path}:{number}'
        line, bad = decode_utf8(line)
        problems.add('undecodable_bytes', where, bad)
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          problems.add('bad_json_lines', where)
          continue
        text = row.get(text_key) if isinstance(row, dict) else None
        if not isinstance(text, str):
          problems.add(f'lines_without_{text_key}', where)
          continue
        yield Document(key=f'{task.relpath}:{number}', text=text, split='')
  except (OSError, EOFError) as e:  # unreadable, or a truncated compressed stream
    problems.add('unreadable_files', f'{task.path} ({_reason(e)})')


def _read_parquet_task(task: Task, *, text_key: str, problems: Problems, **unused):
  del unused
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  try:
    with epath.Path(task.path).open('rb') as f:
      parquet = pq.ParquetFile(f)
      if text_key not in parquet.schema_arrow.names:
        problems.add(f'files_without_{text_key}',
                     f'{task.path} (columns {parquet.schema_arrow.names})')
        return
      row = 0
      for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_key]):
        for text in batch.column(0).to_pylist():
          row += 1
          if not isinstance(text, str):
            problems.add(f'rows_without_{text_key}', f'{task.path}:row {row}')
            continue
          yield Document(key=f'{task.relpath}:{row}', text=text, split='')
  except (OSError, EOFError, ValueError) as e:
    problems.add('unreadable_files', f'{task.path} ({_reason(e)})')
