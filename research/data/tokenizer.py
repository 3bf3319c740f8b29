"""SentencePiece tokenizer with fixed special ids shared by all three model families.

Vocabulary layout of a model trained here:

  0 `<pad>`   1 `</s>` (eos)   2 `<unk>`   3 `<s>` (bos)
  4 `[MASK]`  (BERT-style masked LM)
  5 ... 4 + num_sentinels  `<extra_id_0>`, `<extra_id_1>`, ...  (T5-style span corruption)
  next `\n`   then 256 byte pieces `<0x00>` ... `<0xFF>`, then the learned pieces.

`[MASK]` and the sentinels are *user-defined* symbols, not control symbols: a user-defined symbol
is always one piece, and typing it in text yields its id, so a fill-mask prompt such as
"To be [MASK]" or a span-corruption target written by hand encodes as intended. A control symbol
would be unreachable from text (encode("[MASK]") would give "[", "MASK", "]"). The price is that
a corpus containing the literal string "[MASK]" or "<extra_id_0>" encodes it as that special
id; ordinary text never produces them. Pad, eos, unk and bos stay control symbols: text can
never produce them. Note that a space before a typed symbol stays its own piece: "be [MASK]" is
"▁be", "▁", "[MASK]".

The newline is a user-defined symbol too, and text is neither normalised nor stripped of extra
whitespace (`normalization_rule_name='identity'`, `remove_extra_whitespaces=False`, no dummy
prefix), so decode(encode(text)) == text for any text: line breaks and verse indentation survive,
and with byte fallback no character is ever `<unk>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
import hashlib
import io
import math
import os
import tempfile

from absl import logging
import numpy as np
import sentencepiece as spm

from research import errors

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
MASK_PIECE = '[MASK]'
NEWLINE_PIECE = '\n'
MODEL_TYPES = ('bpe', 'unigram')
NUM_BYTE_PIECES = 256

# SentencePiece skips sentences longer than `max_sentence_length` bytes; training lines are cut
# into chunks of at most this many characters (4 bytes each at most) to stay under it.
_MAX_LINE_CHARS = 4096
_MAX_SENTENCE_BYTES = 4 * _MAX_LINE_CHARS
# A fixed thread count keeps the trained model identical on machines with different core counts.
_TRAIN_THREADS = 16


def sentinel_piece(i: int) -> str:
  return f'<extra_id_{i}>'


class Tokenizer:
  """A SentencePiece model with pad=0, eos=1, unk=2, bos=3, [MASK] and T5 sentinels."""

  def __init__(self, model_proto: bytes, *, name: str = '<in memory>'):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.name = name
    self._check_special_ids()
    self._mask_id = self._find_piece(MASK_PIECE)
    self._sentinel_ids = []
    while (i := self._find_piece(sentinel_piece(len(self._sentinel_ids)))) is not None:
      self._sentinel_ids.append(i)

  def _check_special_ids(self):
    found = (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id(), self._sp.bos_id())
    if found != (PAD_ID, EOS_ID, UNK_ID, BOS_ID):
      raise errors.UserError(
          f'tokenizer {self.name} has pad, eos, unk, bos ids {found}, lmforge needs '
          f'{(PAD_ID, EOS_ID, UNK_ID, BOS_ID)}: train one with data.tokenizer=""'
      )

  def _find_piece(self, piece: str) -> int | None:
    i = self._sp.piece_to_id(piece)
    return i if self._sp.id_to_piece(i) == piece else None

  def __getstate__(self):  # Grain workers receive tokenizers by pickle
    return {'model_proto': self._proto, 'name': self.name}

  def __setstate__(self, state):
    self.__init__(state['model_proto'], name=state['name'])

  @property
  def sha256(self) -> str:
    """Identifies the model: prepared corpora record it, resumed runs compare it."""
    return hashlib.sha256(self._proto).hexdigest()

  @property
  def model_proto(self) -> bytes:
    """The serialised model: what `load_tokenizer` reads and cache keys hash."""
    return self._proto

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def mask_id(self) -> int:
    if self._mask_id is None:
      raise errors.UserError(
          f'tokenizer {self.name} has no {MASK_PIECE} piece: train one with data.tokenizer=""'
      )
    return self._mask_id

  @property
  def num_sentinels(self) -> int:
    return len(self._sentinel_ids)

  def sentinel_id(self, i: int) -> int:
    """The id of `<extra_id_{i}>`, the i-th span-corruption sentinel."""
    if not 0 <= i < len(self._sentinel_ids):
      raise errors.UserError(
          f'sentinel {i} does not exist: tokenizer {self.name} has {len(self._sentinel_ids)}'
      )
    return self._sentinel_ids[i]

  def encode(self, text: str) -> list[int]:
    """Ids of `text`, without bos or eos."""
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Text of one sequence of ids; pad is skipped, nothing stops decoding (eos renders as '')."""
    ids_T = np.asarray(ids, dtype=np.int64)
    if ids_T.ndim != 1:
      raise ValueError(f'decode takes one sequence of ids, got shape {ids_T.shape}')
    return self._sp.decode([int(i) for i in ids_T if i != PAD_ID])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def piece_to_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)

  def save(self, path: str):
    write_atomically(path, self._proto)

  def __repr__(self) -> str:
    return f'Tokenizer({self.name}, vocab_size={self.vocab_size})'


def num_reserved_ids(num_sentinels: int) -> int:
  """Ids before the learned pieces: 4 specials, [MASK], the sentinels, the newline."""
  return 4 + 1 + num_sentinels + 1


def train_tokenizer(
    documents: Sequence[str],
    vocab_size: int,
    model_path: str,
    *,
    num_sentinels: int = 100,
    model_type: str = 'bpe',
    byte_fallback: bool = True,
    character_coverage: float = 1.0,
    input_sentence_size: int = 1_000_000,
) -> Tokenizer:
  """Trains a SentencePiece model on the lines of `documents` and writes it to `model_path`.

  Deterministic: the same documents and settings give a byte-identical model file. Lines are the
  training sentences; when there are more than `input_sentence_size`, every k-th line is kept
  (rather than SentencePiece's random sample), which keeps training fast and reproducible.

  Raises:
    ConfigError: on data.vocab_size, data.tokenizer_type or data.num_sentinels.
  """
  _check_train_args(vocab_size, num_sentinels, model_type, byte_fallback)
  # Writing to memory keeps the (temporary) file name out of the model, and its bytes reproducible.
  writer = io.BytesIO()
  user_symbols = [MASK_PIECE] + [sentinel_piece(i) for i in range(num_sentinels)] + [NEWLINE_PIECE]
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sampled_lines(documents, input_sentence_size),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        user_defined_symbols=user_symbols,
        byte_fallback=byte_fallback,
        character_coverage=character_coverage,
        normalization_rule_name='identity',
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=_MAX_SENTENCE_BYTES,
        input_sentence_size=0,  # Sampling is done deterministically in `_sampled_lines`.
        shuffle_input_sentence=False,
        num_threads=_TRAIN_THREADS,
        minloglevel=2,
    )
  except RuntimeError as e:
    raise _vocab_error(vocab_size, str(e)) from None
  tokenizer = Tokenizer(writer.getvalue(), name=model_path)
  tokenizer.save(model_path)
  return tokenizer


def load_tokenizer(path: str) -> Tokenizer:
  try:
    with open(path, 'rb') as f:
      proto = f.read()
  except OSError as e:
    raise errors.ConfigError('data.tokenizer', path, f'cannot read it ({e.strerror})') from None
  try:
    return Tokenizer(proto, name=path)
  except RuntimeError:
    raise errors.ConfigError(
        'data.tokenizer', path, 'is not a SentencePiece model: give a .model file'
    ) from None


def _check_train_args(vocab_size: int, num_sentinels: int, model_type: str, byte_fallback: bool):
  if model_type not in MODEL_TYPES:
    raise errors.ConfigError('data.tokenizer_type', model_type, f'use one of {MODEL_TYPES}')
  if num_sentinels < 0:
    raise errors.ConfigError('data.num_sentinels', num_sentinels, 'must be >= 0')
  reserved = num_reserved_ids(num_sentinels) + (NUM_BYTE_PIECES if byte_fallback else 0)
  if vocab_size <= reserved:
    raise errors.ConfigError(
        'data.vocab_size',
        vocab_size,
        f'must exceed the {reserved} reserved ids (specials, [MASK], {num_sentinels} sentinels, '
        f'newline{", 256 bytes" if byte_fallback else ""}) plus the characters of the corpus: '
        f'use at least {_round_up(reserved + 128, 128)}',
    )


def _vocab_error(vocab_size: int, message: str) -> errors.ConfigError:
  """Turns SentencePiece's vocabulary-size failures into a one-line ConfigError."""
  detail = message.rsplit(']', 1)[-1].strip()
  if 'Vocabulary size is smaller than required_chars' in message:
    needed = int(detail.split(' vs ')[-1].split('.')[0])
    return errors.ConfigError(
        'data.vocab_size',
        vocab_size,
        f'the reserved ids plus the corpus characters need {needed}: use at least '
        f'{_round_up(needed + 64, 128)}',
    )
  if 'Vocabulary size too high' in message:
    return errors.ConfigError(
        'data.vocab_size', vocab_size, f'too large for this corpus: {detail}'
    )
  return errors.ConfigError('data.vocab_size', vocab_size, f'SentencePiece failed: {detail}')


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _sampled_lines(documents: Sequence[str], max_lines: int) -> Iterator[str]:
  """Non-empty lines, long ones cut into chunks; every k-th when there are too many."""
  total = sum(1 for _ in training_lines(documents))
  stride = max(1, math.ceil(total / max_lines))
  if stride > 1:
    logging.info('Tokenizer training on every %d-th of %d lines', stride, total)
  for i, line in enumerate(training_lines(documents)):
    if i % stride == 0:
      yield line


def training_lines(documents: Sequence[str]) -> Iterator[str]:
  """The sentences SentencePiece trains on: each line, cut into chunks it does not skip."""
  for document in documents:
    for line in document.split(NEWLINE_PIECE):
      for begin in range(0, len(line), _MAX_LINE_CHARS):
        yield line[begin : begin + _MAX_LINE_CHARS]


def write_atomically(path: str, data: bytes):
  """Writes via a temporary file and a rename, so a killed process never leaves half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
