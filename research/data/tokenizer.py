"""Tokenizers: one interface (`Tokenizer`), two backends, and the SentencePiece model we train.

Loading. `load_tokenizer(path)` reads a SentencePiece model file (`tokenizer.model`, T5's
`spiece.model`; read alone), a Hugging Face `tokenizer.json`, or a directory holding one: a
workdir, a prepared corpus or an HF model directory. In a directory, tokenizer.json wins over a
.model: Llama 2, Gemma and T5 directories ship both, and transformers reads the tokenizer.json
(tokens it adds, such as T5's `<extra_id_N>`, live only there; a .model without one is read by
sentencepiece, without them, and a warning says so). GPT-2's `vocab.json` + `merges.txt` and
BERT's `vocab.txt` without a tokenizer.json are converted into one with the `tokenizers` library
(research.data.hf_tokenizer). Beside the main file, `tokenizer_config.json`,
`special_tokens_map.json`, `chat_template.jinja` and `generation_config.json` are read too.

The backends: `SentencePieceTokenizer` (the sentencepiece library) and
`research.data.hf_tokenizer.HFTokenizer` (the `tokenizers` library). Both give

  encode(text, add_bos=False), encode_batch, encode_with_offsets, decode,
  vocab_size (added tokens included), pad_id, eos_id, bos_id, unk_id, mask_id, sentinel_id(i),
  id_to_piece, piece_to_id, adds_bos, chat_template, special_tokens,
  files (the files that hold it, by name), sha256, save(path), pickling (Grain and Beam workers)

Ids. `encode(text)` is what `transformers.AutoTokenizer.from_pretrained(dir)(text,
add_special_tokens=False).input_ids` gives: nothing is added. BOS is the caller's explicit choice,
`encode(text, add_bos=True)`; callers that start a sequence (a prepared document, an SFT example)
pass `add_bos=tokenizer.adds_bos`, which is True only when the checkpoint's own tokenizer prepends
bos (Llama 2 and 3, by its tokenizer.json post-processor or its `add_bos_token`). lmforge's trained
tokenizer never does, so its documents stay `ids + [eos]`, as before.

Special tokens come from tokenizer_config.json and special_tokens_map.json as transformers reads
them. For a tokenizer.json, roles they leave unset come from generation_config.json's bos and eos
ids, else from the defaults of the checkpoint's transformers tokenizer class (GPT-2's
`<|endoftext|>`, BERT's `[SEP]`, ...: research.data.hf_tokenizer); a SentencePiece model keeps the
ids it declares. `pad_id` falls back to `eos_id` when a checkpoint has no pad token (GPT-2,
Llama 3): padding is masked by segment ids and weights, and `decode` skips only a declared pad.
`eos_id` falls back to the sep token (BERT's `[SEP]` separates its documents). `bos_id` and
`unk_id` are None where a checkpoint has none (T5 has no bos, byte-level BPE no unk).
`chat_template` is the checkpoint's Jinja template, rendered by research.data.chat_template.

Hashes. `sha256` is the SHA-256 of the tokenizer's one file (a trained model: exactly the hash of
its tokenizer.model, as before), or of all its files, by name, when it has several. Prepared
corpora record it; resumed runs compare it.

The SentencePiece model lmforge trains (`train_tokenizer`) has this vocabulary layout:

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

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import tempfile
from typing import Any

from absl import logging
from etils import epath
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

# File names, as Hugging Face model directories and lmforge workdirs hold them.
SENTENCEPIECE_FILE = 'tokenizer.model'
SENTENCEPIECE_FILES = (SENTENCEPIECE_FILE, 'spiece.model')  # T5 calls its model spiece.model
HF_FILE = 'tokenizer.json'
CONFIG_FILE = 'tokenizer_config.json'
SPECIAL_TOKENS_MAP_FILE = 'special_tokens_map.json'
CHAT_TEMPLATE_FILE = 'chat_template.jinja'
GENERATION_CONFIG_FILE = 'generation_config.json'
GPT2_FILES = ('vocab.json', 'merges.txt')
WORDPIECE_FILE = 'vocab.txt'
# The files that hold a tokenizer next to its main file (tokenizer.json or a .model).
SIDE_FILES = (CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, CHAT_TEMPLATE_FILE)
SAVED_FILES = (HF_FILE, *SENTENCEPIECE_FILES, *SIDE_FILES)  # the names `Tokenizer.files` take
_TOKENIZER_FORMS = ('tokenizer.json, tokenizer.model, spiece.model, vocab.json + merges.txt, '
                    'vocab.txt')
SPECIAL_ROLES = ('pad', 'eos', 'unk', 'bos', 'mask', 'sep', 'cls')
SPECIAL_TOKEN_KEYS = tuple(f'{role}_token' for role in SPECIAL_ROLES)


def sentinel_piece(i: int) -> str:
  return f'<extra_id_{i}>'


class Tokenizer(abc.ABC):
  """What lmforge needs of a tokenizer (see the module doc); `load_tokenizer` picks the backend.

  A backend builds itself from `files` (file name -> bytes) in `_load` and answers the abstract
  methods; special ids, BOS, chat templates, hashing, saving and pickling are shared.
  """

  def __init__(self, files: Mapping[str, bytes], *, name: str = '<in memory>'):
    self._files = dict(files)
    self.name = name
    self._load()
    self._config = _tokenizer_config(self._files, name)
    self._specials = self._resolve_specials()
    self._sentinel_ids = []
    while (i := self._find_piece(sentinel_piece(len(self._sentinel_ids)))) is not None:
      self._sentinel_ids.append(i)

  # --- What a backend provides.

  @abc.abstractmethod
  def _load(self):
    """Builds the backend from `self._files`."""

  @abc.abstractmethod
  def _model_special_ids(self) -> dict[str, int | None]:
    """Special ids the model itself declares ('pad', 'eos', 'unk', 'bos'), before the configs."""

  @abc.abstractmethod
  def _find_piece(self, piece: str) -> int | None:
    """The id of `piece`, or None when it is not in the vocabulary."""

  @abc.abstractmethod
  def _encode(self, text: str) -> list[int]:
    """Ids of `text`, nothing added."""

  @abc.abstractmethod
  def _encode_batch(self, texts: list[str]) -> list[list[int]]:
    """`_encode` of each text."""

  @abc.abstractmethod
  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` (as `encode`) and each id's [start, end) character span in `text`."""

  @abc.abstractmethod
  def _decode(self, ids: list[int]) -> str:
    """Text of `ids` (a declared pad already dropped)."""

  @abc.abstractmethod
  def _adds_bos_by_default(self) -> bool:
    """Whether the checkpoint's own tokenizer prepends bos when it adds special tokens."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Ids in the vocabulary, added tokens included: every id is below it."""

  @abc.abstractmethod
  def id_to_piece(self, i: int) -> str:
    """The piece (token text) of id `i`."""

  @abc.abstractmethod
  def piece_to_id(self, piece: str) -> int:
    """The id of `piece`; unknown pieces give unk_id (-1 without one), as SentencePiece does."""

  # --- Shared.

  def _resolve_specials(self) -> dict[str, int | None]:
    """Special ids by role: the configs' token names where given, else the model's own ids."""
    ids = {role: None for role in SPECIAL_ROLES}
    ids.update(self._model_special_ids())
    for role in SPECIAL_ROLES:
      token = self._config.special_tokens.get(f'{role}_token')
      if token is None:
        continue
      i = self._find_piece(token)
      if i is None:  # transformers would append it as a new id, which no model has trained
        logging.warning('tokenizer %s: %s_token %r is not in its vocabulary; ignored', self.name,
                        role, token)
        continue
      ids[role] = i
    if ids['mask'] is None:
      ids['mask'] = self._find_piece(MASK_PIECE)
    return ids

  def __getstate__(self):  # Grain and Beam workers receive tokenizers by pickle
    return {'files': self._files, 'name': self.name}

  def __setstate__(self, state):
    self.__init__(state['files'], name=state['name'])

  @property
  def files(self) -> dict[str, bytes]:
    """The files that hold this tokenizer, by name: what `save` writes into a directory."""
    return dict(self._files)

  @property
  def sha256(self) -> str:
    """Identifies the tokenizer: prepared corpora record it, resumed runs compare it."""
    return files_sha256(self._files)

  @property
  def pad_id(self) -> int:
    """The pad token, else eos (see the module doc)."""
    pad = self._specials['pad']
    return self.eos_id if pad is None else pad

  @property
  def eos_id(self) -> int:
    """The eos token, else the sep token."""
    eos = self._specials['eos'] if self._specials['eos'] is not None else self._specials['sep']
    if eos is None:
      raise errors.UserError(f'tokenizer {self.name} has no eos token: set "eos_token" in its '
                             'tokenizer_config.json')
    return eos

  @property
  def unk_id(self) -> int | None:
    return self._specials['unk']

  @property
  def bos_id(self) -> int | None:
    return self._specials['bos']

  @property
  def mask_id(self) -> int:
    if self._specials['mask'] is None:
      raise errors.UserError(
          f'tokenizer {self.name} has no {MASK_PIECE} piece or mask_token: train one with '
          'data.tokenizer=""')
    return self._specials['mask']

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

  @functools.cached_property
  def adds_bos(self) -> bool:
    """Whether the checkpoint's own tokenizer starts a sequence with bos (see the module doc)."""
    return self.bos_id is not None and self._adds_bos_by_default()

  @property
  def chat_template(self) -> str | None:
    """The Jinja chat template (chat_template.jinja, else tokenizer_config.json's), or None."""
    return self._config.chat_template

  @property
  def special_tokens(self) -> dict[str, str]:
    """'bos_token', 'eos_token', ... -> text, for the declared ones: a chat template's variables."""
    return {f'{role}_token': self.id_to_piece(i) for role, i in self._specials.items()
            if i is not None}

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Ids of `text`, without eos; with `add_bos`, bos first."""
    ids = self._encode(text)
    return [self._required_bos()] + ids if add_bos else ids

  def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
    batch = self._encode_batch(list(texts))
    return [[self._required_bos()] + ids for ids in batch] if add_bos else batch

  def _required_bos(self) -> int:
    if self.bos_id is None:
      raise errors.UserError(f'tokenizer {self.name} has no bos token: encode without add_bos')
    return self.bos_id

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Text of one sequence of ids; a declared pad is skipped, nothing stops decoding."""
    ids_T = np.asarray(ids, dtype=np.int64)
    if ids_T.ndim != 1:
      raise ValueError(f'decode takes one sequence of ids, got shape {ids_T.shape}')
    pad = self._specials['pad']
    return self._decode([int(i) for i in ids_T if i != pad])

  def save(self, path: str):
    """Writes the tokenizer where `load_tokenizer(path)` reads it back: its files into the
    directory `path`, or, for a SentencePiece model alone, the model to the `.model` file `path`."""
    if path.endswith('.model'):
      if len(self._files) != 1 or next(iter(self._files)) not in SENTENCEPIECE_FILES:
        raise ValueError(f'{self!r} is {sorted(self._files)}, not one .model: save to a directory')
      write_atomically(path, next(iter(self._files.values())))
      return
    for file_name, data in self._files.items():
      write_atomically(os.path.join(path, file_name), data)

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self.name}, vocab_size={self.vocab_size})'


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model. lmforge's own have pad=0, eos=1, unk=2, bos=3, [MASK] and T5
  sentinels (module doc); an imported one (Llama 2, Gemma, T5) keeps the ids it declares."""

  def _load(self):
    self._model_file = next(n for n in SENTENCEPIECE_FILES if n in self._files)
    self._sp = spm.SentencePieceProcessor(model_proto=self._files[self._model_file])

  def _model_special_ids(self) -> dict[str, int | None]:
    found = {'pad': self._sp.pad_id(), 'eos': self._sp.eos_id(), 'unk': self._sp.unk_id(),
             'bos': self._sp.bos_id()}
    return {role: i if i >= 0 else None for role, i in found.items()}

  def _find_piece(self, piece: str) -> int | None:
    i = self._sp.piece_to_id(piece)
    return i if self._sp.id_to_piece(i) == piece else None

  def _adds_bos_by_default(self) -> bool:
    return bool(self._config.add_bos_token)

  @property
  def model_proto(self) -> bytes:
    """The serialised model: what `load_tokenizer` reads and cache keys hash."""
    return self._files[self._model_file]

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  def _encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def _encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self._sp.encode(texts)

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    encode = getattr(self._sp, 'encode_as_offset_mapping', None)
    if encode is None:  # older sentencepiece releases have no character offsets
      raise errors.UserError(
          f'tokenizer {self.name}: chat templates on a .model need a sentencepiece release with '
          'encode_as_offset_mapping: upgrade sentencepiece, or use the tokenizer.json')
    result = encode(text)
    return list(result['ids']), [tuple(span) for span in result['offsets']]

  def _decode(self, ids: list[int]) -> str:
    return self._sp.decode(ids)

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def piece_to_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """What lmforge reads from tokenizer_config.json, special_tokens_map.json and
  chat_template.jinja."""

  special_tokens: dict[str, str]  # 'bos_token' -> text, for the tokens they name
  chat_template: str | None
  add_bos_token: bool | None
  clean_up_tokenization_spaces: bool


def _tokenizer_config(files: Mapping[str, bytes], name: str) -> TokenizerConfig:
  """As transformers reads them: tokenizer_config.json, overridden by special_tokens_map.json
  when the config has no `added_tokens_decoder` (older checkpoints); chat_template.jinja wins
  over the config's `chat_template`."""
  config = _json_file(files, CONFIG_FILE, name)
  names = {key: _token_text(config.get(key)) for key in SPECIAL_TOKEN_KEYS}
  if 'added_tokens_decoder' not in config:
    special_map = _json_file(files, SPECIAL_TOKENS_MAP_FILE, name)
    names.update({key: _token_text(special_map[key]) for key in SPECIAL_TOKEN_KEYS
                  if special_map.get(key) is not None})
  template = config.get('chat_template')
  if isinstance(template, list):  # named templates: [{'name': ..., 'template': ...}, ...]
    template = {t.get('name'): t.get('template') for t in template}.get('default')
  if CHAT_TEMPLATE_FILE in files:
    template = files[CHAT_TEMPLATE_FILE].decode('utf-8')
  return TokenizerConfig(
      special_tokens={key: text for key, text in names.items() if text is not None},
      chat_template=template if isinstance(template, str) and template else None,
      add_bos_token=config.get('add_bos_token'),
      clean_up_tokenization_spaces=bool(config.get('clean_up_tokenization_spaces', False)))


def _json_file(files: Mapping[str, bytes], file_name: str, name: str) -> dict[str, Any]:
  if file_name not in files:
    return {}
  try:
    value = json.loads(files[file_name])
  except ValueError as e:
    raise errors.UserError(f'{file_name} of tokenizer {name} is not JSON ({e}): fix or remove '
                           'it') from None
  return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str | None:
  """A special token as configs write it: text, or an AddedToken dict with 'content'."""
  if isinstance(value, dict):
    value = value.get('content')
  return value if isinstance(value, str) and value else None


def files_sha256(files: Mapping[str, bytes]) -> str:
  """SHA-256 of the one file, or of every file's name, size and bytes in name order."""
  if len(files) == 1:
    return hashlib.sha256(next(iter(files.values()))).hexdigest()
  digest = hashlib.sha256()
  for file_name in sorted(files):
    digest.update(f'{file_name}\0{len(files[file_name])}\0'.encode())
    digest.update(files[file_name])
  return digest.hexdigest()


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
  tokenizer = SentencePieceTokenizer({SENTENCEPIECE_FILE: writer.getvalue()}, name=model_path)
  tokenizer.save(model_path)
  return tokenizer


def load_tokenizer(path: str) -> Tokenizer:
  """The tokenizer at `path`: a .model file, a tokenizer.json file or a directory (module doc).

  Raises:
    ConfigError: on data.tokenizer, when `path` holds no tokenizer lmforge reads.
  """
  path = os.fspath(path)
  try:
    if epath.Path(path).is_dir():
      files, generation_config = _read_directory(path)
    elif path.endswith('.json'):
      files, generation_config = _read_directory(os.path.dirname(path) or '.',
                                                 os.path.basename(path))
    else:
      files, generation_config = {SENTENCEPIECE_FILE: epath.Path(path).read_bytes()}, {}
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise errors.ConfigError('data.tokenizer', path, f'cannot read it ({reason})') from None
  tokenizer = tokenizer_from_files(files, name=path)
  if isinstance(tokenizer, SentencePieceTokenizer):
    _warn_of_tokens_transformers_adds(tokenizer)
    return tokenizer
  from research.data import hf_tokenizer  # pylint: disable=g-import-not-at-top
  directory = path if epath.Path(path).is_dir() else os.path.dirname(path) or '.'
  return hf_tokenizer.complete_special_tokens(tokenizer, generation_config, directory=directory)


def _warn_of_tokens_transformers_adds(tokenizer: SentencePieceTokenizer):
  """A .model without tokenizer.json whose config names tokens the model lacks (T5 v1.1's 100
  `<extra_id_N>`): transformers appends them after the model's ids, lmforge's SentencePiece
  backend cannot."""
  config = _json_file(tokenizer.files, CONFIG_FILE, tokenizer.name)
  extra = config.get('additional_special_tokens') or config.get('extra_special_tokens') or []
  extra = [_token_text(t) for t in extra] if isinstance(extra, list) else []
  extra += [sentinel_piece(i) for i in range(int(config.get('extra_ids') or 0))]
  missing = [t for t in dict.fromkeys(extra)
             if t and tokenizer.id_to_piece(tokenizer.piece_to_id(t)) != t]
  if missing:
    logging.warning(
        'tokenizer %s: %d tokens its tokenizer_config.json adds (%s, ...) are not in the '
        'SentencePiece model, so lmforge does not have them; for the ids transformers gives, '
        'give the directory a tokenizer.json (AutoTokenizer.from_pretrained(DIR)'
        '.save_pretrained(DIR))', tokenizer.name, len(missing), missing[0])


def tokenizer_from_files(files: Mapping[str, bytes], *, name: str = '<in memory>') -> Tokenizer:
  """The tokenizer that `files` (file name -> bytes, as `Tokenizer.files`) hold."""
  if HF_FILE in files:
    from research.data import hf_tokenizer  # pylint: disable=g-import-not-at-top
    return hf_tokenizer.HFTokenizer(files, name=name)
  if any(n in files for n in SENTENCEPIECE_FILES):
    try:
      return SentencePieceTokenizer(files, name=name)
    except RuntimeError:
      raise errors.ConfigError('data.tokenizer', name, 'is not a SentencePiece model: give a '
                               '.model, a tokenizer.json or a model directory') from None
  raise errors.ConfigError('data.tokenizer', name, f'holds no tokenizer ({_TOKENIZER_FORMS}): '
                           'give a tokenizer file or a directory with one')


def find_tokenizer(directory: str) -> str | None:
  """The name of the file in `directory` that `load_tokenizer` reads the tokenizer from (the
  module doc says which wins), or None when there is none."""
  root = epath.Path(directory)
  for name in (HF_FILE,) + SENTENCEPIECE_FILES:
    if (root / name).is_file():
      return name
  if all((root / name).is_file() for name in GPT2_FILES):
    return GPT2_FILES[0]
  if (root / WORDPIECE_FILE).is_file():
    return WORDPIECE_FILE
  return None


def _read_directory(directory: str, main: str | None = None
                    ) -> tuple[dict[str, bytes], dict[str, Any]]:
  """The tokenizer's files in `directory` (its main file `main`, found when None), legacy
  vocabularies converted to a tokenizer.json, and generation_config.json's contents."""
  root = epath.Path(directory)
  main = main or find_tokenizer(directory)
  if main is None:
    raise errors.ConfigError('data.tokenizer', directory, f'holds no tokenizer ({_TOKENIZER_FORMS})'
                             ': give a tokenizer file or a directory with one')
  files = {name: (root / name).read_bytes() for name in SIDE_FILES if (root / name).is_file()}
  if main in GPT2_FILES + (WORDPIECE_FILE,):
    from research.data import hf_tokenizer  # pylint: disable=g-import-not-at-top
    files[HF_FILE] = hf_tokenizer.convert_legacy_vocabulary(root, main, files)
  elif main.endswith('.model'):
    files[main] = (root / main).read_bytes()
  else:
    files[HF_FILE] = (root / main).read_bytes()
  generation_config = {}
  if (root / GENERATION_CONFIG_FILE).is_file():
    generation_config = _json_file({GENERATION_CONFIG_FILE: (root / GENERATION_CONFIG_FILE)
                                    .read_bytes()}, GENERATION_CONFIG_FILE, directory)
  return files, generation_config


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
