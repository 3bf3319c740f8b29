"""A prepared corpus: token ids in ArrayRecord shards, a manifest, and the tokenizer.

Layout of a prepared directory (local or any `etils.epath` path, e.g. `gs://`):

  manifest.json                 written last: a directory without it is not a prepared corpus
  tokenizer.model               the tokenizer the ids come from (research.data.tokenizer): a
                                SentencePiece model, or for a Hugging Face tokenizer its
                                tokenizer.json + tokenizer_config.json
  train-TTTTT-PPP.array_record  shards of split `train`: task TTTTT's part PPP
  validation-TTTTT-PPP.array_record

A split is one token stream: its shards in manifest order, each the concatenation of its
documents, every document followed by eos. A shard is cut into records of `record_tokens` ids
(the last one shorter), stored as raw little-endian uint16 (vocabularies up to 65,536) or uint32,
so that any window of the stream is read with one or two random accesses per shard it touches.

The manifest holds, per split and shard, tokens, UTF-8 bytes and documents (bits per byte come
from these), the tokenizer's SHA-256, the source's fingerprint and the format version. Opening a
split reads the manifest only; shard files are opened on the first read, by the process that
reads (a Grain worker opens its own), so start-up never depends on the corpus size.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import tempfile
from typing import Any

from etils import epath
import numpy as np

from research import errors

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
TOKENIZER = 'tokenizer.model'  # a trained SentencePiece model
# ArrayRecord: one record per chunk, so a random read decompresses only the record it wants.
WRITER_OPTIONS = 'group_size:1,zstd:1'


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype('<u2' if vocab_size <= 2**16 else '<u4')


def shard_name(split: str, task: int, part: int) -> str:
  return f'{split}-{task:05d}-{part:03d}.array_record'


# --- Writing ---------------------------------------------------------------------------------


class ShardWriter:
  """Appends documents' token ids to one split's shards of one task, rolling to a new shard
  after `shard_tokens`. Records are written as they fill, so memory holds one record.

  Each shard is written under a temporary local name and published (renamed, or copied to a
  remote directory) only when complete.
  """

  def __init__(self, out: str, split: str, task: int, *, dtype: np.dtype, record_tokens: int,
               shard_tokens: int):
    self.out, self.split, self.task = out, split, task
    self.dtype, self.record_tokens, self.shard_tokens = dtype, record_tokens, shard_tokens
    self.shards: list[dict[str, Any]] = []
    self._writer = None
    self._pending: list[np.ndarray] = []
    self._pending_len = 0

  def add(self, ids: list[int], num_bytes: int, eos_id: int):
    if self._writer is None:
      self._open()
    ids_T = np.empty(len(ids) + 1, self.dtype)
    ids_T[:-1] = ids
    ids_T[-1] = eos_id
    shard = self.shards[-1]
    shard['tokens'] += len(ids_T)
    shard['bytes'] += num_bytes
    shard['documents'] += 1
    self._pending.append(ids_T)
    self._pending_len += len(ids_T)
    while self._pending_len >= self.record_tokens:
      self._flush_record(self.record_tokens)
    if shard['tokens'] >= self.shard_tokens:
      self._close()

  def close(self) -> list[dict[str, Any]]:
    if self._writer is not None:
      self._close()
    return self.shards

  def _open(self):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    name = shard_name(self.split, self.task, len(self.shards))
    fd, self._tmp = tempfile.mkstemp(prefix=name + '.', suffix='.tmp',
                                     dir=self.out if _is_local(self.out) else None)
    os.close(fd)
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, WRITER_OPTIONS)
    self.shards.append({'path': name, 'tokens': 0, 'bytes': 0, 'documents': 0})

  def _flush_record(self, n: int):
    stream = np.concatenate(self._pending)
    self._writer.write(stream[:n].tobytes())
    rest = stream[n:]
    self._pending = [rest] if len(rest) else []
    self._pending_len = len(rest)

  def _close(self):
    if self._pending_len:
      self._flush_record(self._pending_len)
    self._writer.close()
    self._writer = None
    publish(self._tmp, os.path.join(self.out, self.shards[-1]['path']))


def _is_local(path: str) -> bool:
  return '://' not in path


def publish(local_tmp: str, destination: str):
  """Moves a finished local file to `destination` (local rename, or copy then rename remote)."""
  if _is_local(destination):
    os.chmod(local_tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide shards from a team
    os.replace(local_tmp, destination)
    return
  staging = epath.Path(destination + '.tmp')
  epath.Path(local_tmp).copy(staging, overwrite=True)
  staging.rename(destination)
  os.unlink(local_tmp)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_bytes_atomically(path: str, data: bytes):
  """Writes `path` whole or not at all (local: a temporary file and a rename)."""
  if _is_local(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix=os.path.basename(path) + '.', suffix='.tmp')
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  else:
    staging = epath.Path(path + '.tmp')
    staging.write_bytes(data)
    staging.rename(path)


# --- Reading ---------------------------------------------------------------------------------


def read_manifest(path: str) -> dict[str, Any]:
  """The manifest of the prepared directory `path`; UserError naming the fix if it is not one."""
  manifest_path = epath.Path(path) / MANIFEST
  try:
    manifest = json.loads(manifest_path.read_text())
  except FileNotFoundError:
    raise errors.ConfigError(
        'data.source', f'prepared:{path}',
        f'{manifest_path} does not exist: the preparation did not finish (or this is not its '
        '--out); run `python -m research.data.prepare` to the end') from None
  except (OSError, ValueError) as e:
    raise errors.ConfigError('data.source', f'prepared:{path}',
                             f'{manifest_path} cannot be read ({e}): prepare it again') from None
  if manifest.get('format_version') != FORMAT_VERSION:
    raise errors.ConfigError(
        'data.source', f'prepared:{path}',
        f'format version {manifest.get("format_version")}, this lmforge reads {FORMAT_VERSION}: '
        'prepare it again with this version')
  return manifest


@dataclasses.dataclass
class PreparedSplit:
  """One split of a prepared directory as a random-access token stream.

  Picklable: readers are opened lazily in whichever process reads, and dropped when pickled.
  """

  directory: str
  name: str  # 'train' | 'validation'
  shards: list[dict[str, Any]]
  record_tokens: int
  dtype: str
  num_bytes: int
  num_documents: int

  def __post_init__(self):
    self._ends = np.cumsum([s['tokens'] for s in self.shards]).tolist()
    self._readers: dict[int, Any] = {}

  @property
  def num_tokens(self) -> int:
    return self._ends[-1] if self._ends else 0

  @property
  def bytes_per_token(self) -> float:
    return self.num_bytes / max(self.num_tokens, 1)

  def read(self, start: int, length: int) -> np.ndarray:
    """Tokens [start, start + length) of the stream, int32."""
    if not 0 <= start <= start + length <= self.num_tokens:
      raise IndexError(f'[{start}, {start + length}) is outside the {self.num_tokens} tokens of '
                       f'{self.directory} {self.name}')
    out = np.empty(length, np.int32)
    done = 0
    while done < length:
      position = start + done
      shard = bisect.bisect_right(self._ends, position)
      shard_start = self._ends[shard] - self.shards[shard]['tokens']
      n = min(length - done, self._ends[shard] - position)
      out[done:done + n] = self._read_shard(shard, position - shard_start, n)
      done += n
    return out

  def gather(self, starts_B: np.ndarray, window: int) -> np.ndarray:
    """int32 [B, window]: the windows at `starts_B`."""
    return np.stack([self.read(int(s), window) for s in starts_B]) if len(starts_B) else (
        np.zeros((0, window), np.int32))

  def _read_shard(self, shard: int, offset: int, n: int) -> np.ndarray:
    first, last = offset // self.record_tokens, (offset + n - 1) // self.record_tokens
    records = self._reader(shard).read(list(range(first, last + 1)))
    ids = np.frombuffer(b''.join(records), self.dtype)
    begin = offset - first * self.record_tokens
    return ids[begin:begin + n]

  def _reader(self, shard: int):
    reader = self._readers.get(shard)
    if reader is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

      path = os.path.join(self.directory, self.shards[shard]['path'])
      try:
        reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
      except (OSError, RuntimeError) as e:
        raise errors.UserError(f'{path} cannot be read ({e}): the prepared corpus is incomplete;'
                               ' prepare it again') from None
      self._readers[shard] = reader
    return reader

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_readers'] = {}
    return state


def open_split(directory: str, manifest: dict[str, Any], name: str) -> PreparedSplit:
  split = manifest['splits'].get(name)
  if not split or not split['tokens']:
    raise errors.ConfigError('data.source', f'prepared:{directory}',
                             f'has no {name} tokens: prepare it with documents in both splits '
                             '(--validation_fraction)')
  return PreparedSplit(directory=os.fspath(directory), name=name, shards=split['shards'],
                       record_tokens=manifest['record_tokens'], dtype=manifest['dtype'],
                       num_bytes=split['bytes'], num_documents=split['documents'])
