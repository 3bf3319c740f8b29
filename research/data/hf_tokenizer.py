"""The Hugging Face backend (tokenizer.json, read by the `tokenizers` library) and HF files out.

`HFTokenizer` is `research.data.tokenizer.Tokenizer` over a tokenizer.json: `encode(text)` is
`tokenizers.Tokenizer.encode(text, add_special_tokens=False).ids`, which is what
`transformers.AutoTokenizer.from_pretrained(dir)(text, add_special_tokens=False)` computes, and
`decode` is the library's decode plus transformers' `clean_up_tokenization_spaces` where the
config asks for it (never for BPE, as transformers 5). lmforge reads tokenizer.json as written;
transformers 5 rebuilds some model-specific classes (LlamaTokenizer, BertTokenizer, ...) from the
vocabulary with the class's own normaliser and pre-tokenizer, which agrees with a tokenizer.json
that class saved.

Special tokens that tokenizer_config.json and special_tokens_map.json leave unset are completed
when a directory is loaded (`complete_special_tokens`): bos and eos from generation_config.json's
ids, else the defaults transformers' tokenizer class sets (GPT-2's `<|endoftext|>`, BERT's `[SEP]`
and `[PAD]`, ...; the class named by tokenizer_config.json, else by config.json's `model_type`).
They are written into the tokenizer's own tokenizer_config.json, so a workdir that holds it needs
neither file.

For the importer and exporter: `copy_tokenizer_files(src_dir, dst_dir)` and
`write_hf_tokenizer(tokenizer, out_dir, family=...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import os
import shutil
from typing import Any

from etils import epath

from research import errors
from research.data import tokenizer as tokenizer_lib
from research.data.tokenizer import CONFIG_FILE, HF_FILE, SENTENCEPIECE_FILE

# transformers' `clean_up_tokenization`: the spaces a WordPiece decode leaves before punctuation.
_CLEAN_UP = ((' .', '.'), (' ?', '?'), (' !', '!'), (' ,', ','), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))

# The special tokens transformers' tokenizer classes default to, for configs that leave them out
# (the Hub's gpt2 and bert-base-uncased tokenizer_config.json name none).
_CLASS_DEFAULTS = {
    'BertTokenizer': {'unk_token': '[UNK]', 'sep_token': '[SEP]', 'pad_token': '[PAD]',
                      'cls_token': '[CLS]', 'mask_token': '[MASK]'},
    'GPT2Tokenizer': {'unk_token': '<|endoftext|>', 'bos_token': '<|endoftext|>',
                      'eos_token': '<|endoftext|>'},
    'RobertaTokenizer': {'bos_token': '<s>', 'eos_token': '</s>', 'sep_token': '</s>',
                         'cls_token': '<s>', 'unk_token': '<unk>', 'pad_token': '<pad>',
                         'mask_token': '<mask>'},
    'T5Tokenizer': {'eos_token': '</s>', 'unk_token': '<unk>', 'pad_token': '<pad>'},
    'LlamaTokenizer': {'unk_token': '<unk>', 'bos_token': '<s>', 'eos_token': '</s>'},
    'GemmaTokenizer': {'unk_token': '<unk>', 'bos_token': '<bos>', 'eos_token': '<eos>',
                       'pad_token': '<pad>'},
}
_MODEL_TYPE_CLASSES = {'bert': 'BertTokenizer', 'gpt2': 'GPT2Tokenizer',
                       'roberta': 'RobertaTokenizer', 't5': 'T5Tokenizer', 'mt5': 'T5Tokenizer',
                       'llama': 'LlamaTokenizer', 'gemma': 'GemmaTokenizer'}

# What copy_tokenizer_files copies: the files transformers reads a tokenizer from. Not
# generation_config.json (a model file; what lmforge needs of it lands in tokenizer_config.json).
TOKENIZER_FILES = (HF_FILE, CONFIG_FILE, tokenizer_lib.SPECIAL_TOKENS_MAP_FILE,
                   tokenizer_lib.CHAT_TEMPLATE_FILE, 'added_tokens.json',
                   *tokenizer_lib.SENTENCEPIECE_FILES, *tokenizer_lib.GPT2_FILES,
                   tokenizer_lib.WORDPIECE_FILE)
_CHAT_TEMPLATE_DIR = 'additional_chat_templates'  # transformers 5: named templates, one per file

FAMILIES = ('decoder', 'encoder', 'encoder_decoder')


class HFTokenizer(tokenizer_lib.Tokenizer):
  """A tokenizer.json (+ tokenizer_config.json, special_tokens_map.json, chat_template.jinja)."""

  def _load(self):
    import tokenizers  # pylint: disable=g-import-not-at-top

    try:
      self._tk = tokenizers.Tokenizer.from_str(self._files[HF_FILE].decode('utf-8'))
    except Exception as e:  # pylint: disable=broad-except  (tokenizers raises bare Exceptions)
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise errors.ConfigError('data.tokenizer', self.name, f'has a tokenizer.json the tokenizers '
                               f'library cannot read ({reason})') from None
    self._is_bpe = type(self._tk.model).__name__ == 'BPE'
    added_ids = list(self._tk.get_added_tokens_decoder())
    self._vocab_size = max([self._tk.get_vocab_size(with_added_tokens=True)]
                           + [i + 1 for i in added_ids])

  def _model_special_ids(self) -> dict[str, int | None]:
    return {}  # a tokenizer.json names no roles: the configs do

  def _find_piece(self, piece: str) -> int | None:
    return self._tk.token_to_id(piece)

  def _adds_bos_by_default(self) -> bool:
    # The post-processor is what transformers applies with add_special_tokens=True.
    probe = 'a'
    with_specials = self._tk.encode(probe, add_special_tokens=True).ids
    plain = self._tk.encode(probe, add_special_tokens=False).ids
    return len(with_specials) > len(plain) and with_specials[0] == self.bos_id

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  def _encode(self, text: str) -> list[int]:
    return self._tk.encode(text, add_special_tokens=False).ids

  def _encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tk.encode_batch(texts, add_special_tokens=False)]

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    encoding = self._tk.encode(text, add_special_tokens=False)
    return encoding.ids, [tuple(span) for span in encoding.offsets]

  def _decode(self, ids: list[int]) -> str:
    text = self._tk.decode(ids, skip_special_tokens=False)
    if self._config.clean_up_tokenization_spaces and not self._is_bpe:
      for before, after in _CLEAN_UP:
        text = text.replace(before, after)
    return text

  def id_to_piece(self, i: int) -> str:
    piece = self._tk.id_to_token(int(i)) if int(i) >= 0 else None
    return '' if piece is None else piece

  def piece_to_id(self, piece: str) -> int:
    i = self._tk.token_to_id(piece)
    if i is not None:
      return i
    return -1 if self.unk_id is None else self.unk_id


def complete_special_tokens(tokenizer: HFTokenizer, generation_config: Mapping[str, Any], *,
                            directory: str) -> HFTokenizer:
  """`tokenizer` with the special tokens its configs leave unset filled in (module doc)."""
  have = tokenizer._config.special_tokens  # pylint: disable=protected-access
  filled = {}
  for role in ('bos', 'eos'):
    i = generation_config.get(f'{role}_token_id')
    i = i[0] if isinstance(i, list) and i else i  # several eos ids: the first is the tokenizer's
    if f'{role}_token' not in have and isinstance(i, int) and tokenizer.id_to_piece(i):
      filled[f'{role}_token'] = tokenizer.id_to_piece(i)
  defaults = _CLASS_DEFAULTS.get(_tokenizer_class(tokenizer, directory), {})
  for key, token in defaults.items():
    if key not in have and key not in filled and tokenizer.piece_to_id(token) >= 0 and (
        tokenizer.id_to_piece(tokenizer.piece_to_id(token)) == token):
      filled[key] = token
  if not filled:
    return tokenizer
  files = tokenizer.files
  config = json.loads(files.get(CONFIG_FILE, b'{}'))
  config.update(filled)
  files[CONFIG_FILE] = _config_bytes(config)
  return HFTokenizer(files, name=tokenizer.name)


def _tokenizer_class(tokenizer: HFTokenizer, directory: str) -> str:
  """transformers' tokenizer class for `tokenizer` ('Fast' dropped): tokenizer_config.json's
  `tokenizer_class`, else the one for config.json's `model_type` in `directory`."""
  config = json.loads(tokenizer.files.get(CONFIG_FILE, b'{}') or b'{}')
  name = config.get('tokenizer_class') or ''
  if not name:
    model_config = epath.Path(directory) / 'config.json'
    if model_config.is_file():
      try:
        model_type = json.loads(model_config.read_text()).get('model_type', '')
      except (ValueError, AttributeError):
        model_type = ''  # not an HF model config (an lmforge workdir's config.json)
      name = _MODEL_TYPE_CLASSES.get(model_type, '') if isinstance(model_type, str) else ''
  return name.removesuffix('Fast')


def convert_legacy_vocabulary(root: epath.Path, main: str, side_files: Mapping[str, bytes]
                              ) -> bytes:
  """A tokenizer.json for the vocabulary files in `root` that have none: GPT-2's vocab.json +
  merges.txt (byte-level BPE) or BERT's vocab.txt (WordPiece), built with the `tokenizers`
  library as transformers builds GPT2Tokenizer / BertTokenizer from the same files, with the
  options and special tokens of tokenizer_config.json."""
  config = json.loads(side_files.get(CONFIG_FILE, b'{}') or b'{}')
  if main == tokenizer_lib.WORDPIECE_FILE:
    tokenizer = _wordpiece(root, config)
  else:
    tokenizer = _byte_level_bpe(root, config)
  return tokenizer.to_str().encode('utf-8')


def _wordpiece(root: epath.Path, config: dict[str, Any]):
  import tokenizers  # pylint: disable=g-import-not-at-top

  lines = (root / tokenizer_lib.WORDPIECE_FILE).read_text(encoding='utf-8').split('\n')
  if lines and not lines[-1]:
    lines.pop()  # the file's final newline
  vocab = {}
  for i, token in enumerate(lines):
    vocab.setdefault(token.rstrip('\r'), i)
  names = {**_CLASS_DEFAULTS['BertTokenizer'], **_named_tokens(config)}
  try:
    wordpiece = tokenizers.BertWordPieceTokenizer(
        vocab, unk_token=names['unk_token'], sep_token=names['sep_token'],
        cls_token=names['cls_token'], pad_token=names['pad_token'],
        mask_token=names['mask_token'], clean_text=True,
        handle_chinese_chars=config.get('tokenize_chinese_chars', True),
        strip_accents=config.get('strip_accents'), lowercase=config.get('do_lower_case', True))
  except Exception as e:  # pylint: disable=broad-except  (tokenizers raises bare Exceptions)
    raise errors.ConfigError('data.tokenizer', os.fspath(root), f'vocab.txt does not make a BERT '
                             f'tokenizer ({e}): give its tokenizer.json') from None
  return _with_added_specials(wordpiece, config, names)


def _byte_level_bpe(root: epath.Path, config: dict[str, Any]):
  import tokenizers  # pylint: disable=g-import-not-at-top

  vocab = json.loads((root / 'vocab.json').read_text(encoding='utf-8'))
  merges = [tuple(line.split(' ')) for line in
            (root / 'merges.txt').read_text(encoding='utf-8').split('\n')
            if line and not line.startswith('#version')]
  bpe = tokenizers.ByteLevelBPETokenizer(
      vocab, merges, add_prefix_space=config.get('add_prefix_space', False), trim_offsets=True)
  names = {**_CLASS_DEFAULTS['GPT2Tokenizer'], **_named_tokens(config)}
  return _with_added_specials(bpe, config, names)


def _named_tokens(config: dict[str, Any]) -> dict[str, str]:
  names = {}
  for key in tokenizer_lib.SPECIAL_TOKEN_KEYS:
    value = config.get(key)
    value = value.get('content') if isinstance(value, dict) else value
    if isinstance(value, str) and value:
      names[key] = value
  return names


def _with_added_specials(implementation, config: dict[str, Any], names: dict[str, str]):
  """The implementation's `tokenizers.Tokenizer` with the named and additional special tokens
  added, as transformers adds them: text that contains one encodes as its id."""
  import tokenizers  # pylint: disable=g-import-not-at-top

  tokenizer = implementation._tokenizer  # pylint: disable=protected-access
  extra = config.get('additional_special_tokens') or config.get('extra_special_tokens') or []
  extra = [t.get('content') if isinstance(t, dict) else t for t in extra]
  specials = [t for t in list(names.values()) + list(extra)
              if isinstance(t, str) and tokenizer.token_to_id(t) is not None]
  tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                for t in dict.fromkeys(specials)])
  return tokenizer


def copy_tokenizer_files(src_dir: str, dst_dir: str) -> list[str]:
  """Copies the tokenizer of the HF model directory (or workdir) `src_dir` into `dst_dir`.

  Copies whichever of tokenizer.json, tokenizer_config.json, special_tokens_map.json,
  chat_template.jinja (and additional_chat_templates/), added_tokens.json, tokenizer.model,
  spiece.model, vocab.json, merges.txt and vocab.txt exist; generation_config.json is a model
  file and stays behind. Where lmforge completes the tokenizer on loading (special tokens from
  generation_config.json or from the tokenizer class's defaults; a tokenizer.json converted from
  vocab.json + merges.txt or vocab.txt), the completed files are written instead, so that
  `load_tokenizer(dst_dir)` and transformers' AutoTokenizer read in `dst_dir` the tokenizer they
  read in `src_dir`.

  Returns:
    The names written into `dst_dir`, sorted.

  Raises:
    ConfigError: `src_dir` holds no tokenizer (the message names it).
  """
  tokenizer = tokenizer_lib.load_tokenizer(src_dir)
  os.makedirs(dst_dir, exist_ok=True)
  written = []
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src_dir, name)):
      shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst_dir, name))
      written.append(name)
  templates = os.path.join(src_dir, _CHAT_TEMPLATE_DIR)
  if os.path.isdir(templates):
    shutil.copytree(templates, os.path.join(dst_dir, _CHAT_TEMPLATE_DIR), dirs_exist_ok=True)
    written += [f'{_CHAT_TEMPLATE_DIR}/{n}' for n in sorted(os.listdir(templates))]
  for name, data in tokenizer.files.items():
    path = os.path.join(src_dir, name)
    if not os.path.isfile(path) or _read(path) != data:
      tokenizer_lib.write_atomically(os.path.join(dst_dir, name), data)
      written.append(name)
  return sorted(set(written))


def _read(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def write_hf_tokenizer(tokenizer: tokenizer_lib.Tokenizer, out_dir: str, *,
                       family: str = 'decoder', chat_template: str | None = None) -> list[str]:
  """Writes `tokenizer` into `out_dir` as files transformers' AutoTokenizer loads (4.40 and 5).

  An HFTokenizer writes its own files (and a tokenizer_config.json naming its special tokens if it
  has none); `family` leaves them as they are. A SentencePiece model lmforge trained
  (`train_tokenizer`) is written as its tokenizer.model plus a tokenizer.json built with the
  `tokenizers` library that reproduces its ids exactly (same pieces and merges, byte fallback,
  whitespace as '▁', no normalisation and no dummy prefix; `[MASK]`, the sentinels and the
  newline as added tokens), and a tokenizer_config.json naming `PreTrainedTokenizerFast`, so that
  transformers uses that tokenizer.json as written (a model-specific class such as LlamaTokenizer
  would rebuild it with its own prefix space), and the special tokens: bos `<s>`, eos `</s>`, unk
  `<unk>`, pad `<pad>`, mask `[MASK]` and the sentinels as additional special tokens. One
  difference remains: in the HF tokenizer, typed text `</s>` (or `<s>`, `<pad>`, `<unk>`) encodes
  as that special id, as in every HF tokenizer; lmforge's SentencePiece spells it out.

  Args:
    tokenizer: the run's tokenizer (`load_tokenizer_from_workdir`).
    out_dir: the HF model directory to write into.
    family: 'decoder' and 'encoder' add no special tokens on encoding, as lmforge trains them;
      'encoder_decoder' appends eos, as T5 does and as lmforge feeds its encoder.
    chat_template: a Jinja chat template to ship (chat_template.jinja), e.g.
      research.data.chat_template.LMFORGE_TEMPLATE, the format lmforge's SFT uses without one.

  Returns:
    The names written into `out_dir`, sorted.

  Raises:
    UserError: a SentencePiece model lmforge did not train (a foreign .model: copy the
      checkpoint's own files with `copy_tokenizer_files`), or an unknown family.
  """
  if family not in FAMILIES:
    raise errors.UserError(f'family={family!r}: use one of {FAMILIES}')
  if isinstance(tokenizer, HFTokenizer):
    files = tokenizer.files
    files.setdefault(CONFIG_FILE, _config_bytes({  # a bare tokenizer.json: name its specials
        'tokenizer_class': 'PreTrainedTokenizerFast', **tokenizer.special_tokens}))
  else:
    files = {SENTENCEPIECE_FILE: tokenizer.model_proto,
             HF_FILE: _lmforge_sentencepiece_as_tokenizers(tokenizer, family).encode('utf-8'),
             CONFIG_FILE: _lmforge_config(tokenizer)}
  if chat_template is not None:
    files[tokenizer_lib.CHAT_TEMPLATE_FILE] = chat_template.encode('utf-8')
  for name, data in files.items():
    tokenizer_lib.write_atomically(os.path.join(out_dir, name), data)
  return sorted(files)


def _lmforge_config(tokenizer: tokenizer_lib.SentencePieceTokenizer) -> bytes:
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'clean_up_tokenization_spaces': False}
  for role in ('bos', 'eos', 'unk', 'pad'):
    config[f'{role}_token'] = tokenizer.id_to_piece(getattr(tokenizer, f'{role}_id'))
  if 'mask_token' in tokenizer.special_tokens:
    config['mask_token'] = tokenizer.special_tokens['mask_token']
  if tokenizer.num_sentinels:
    config['additional_special_tokens'] = [tokenizer_lib.sentinel_piece(i)
                                           for i in range(tokenizer.num_sentinels)]
  return _config_bytes(config)


def _config_bytes(config: dict[str, Any]) -> bytes:
  return (json.dumps(config, indent=2, ensure_ascii=False) + '\n').encode('utf-8')


def _lmforge_sentencepiece_as_tokenizers(tokenizer: tokenizer_lib.SentencePieceTokenizer,
                                         family: str) -> str:
  """tokenizer.json text that encodes as the lmforge-trained SentencePiece `tokenizer` does."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, normalizers  # pylint: disable=g-import-not-at-top

  sp = tokenizer._sp  # pylint: disable=protected-access
  _check_lmforge_layout(tokenizer)
  pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
  user = {tokenizer_lib.MASK_PIECE, tokenizer_lib.NEWLINE_PIECE} | {
      tokenizer_lib.sentinel_piece(i) for i in range(tokenizer.num_sentinels)}
  ordinary = [i for i, piece in enumerate(pieces) if not (
      sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i) or piece in user)]
  byte_fallback = any(sp.is_byte(i) for i in range(len(pieces)))
  if _is_unigram(sp):
    model = models.Unigram([(piece, sp.get_score(i)) for i, piece in enumerate(pieces)],
                           unk_id=tokenizer.unk_id, byte_fallback=byte_fallback)
  else:
    model = models.BPE({piece: i for i, piece in enumerate(pieces)},
                       _merges(sp, pieces, ordinary), unk_token=pieces[tokenizer.unk_id],
                       byte_fallback=byte_fallback, fuse_unk=True)
  hf = tokenizers.Tokenizer(model)
  # SentencePiece escapes spaces as '▁' and, with lmforge's settings, does nothing else: no
  # normalisation, no dummy prefix, and no pre-tokenisation (pieces such as '▁▁▁' span spaces).
  hf.normalizer = normalizers.Replace(' ', '▁')
  hf.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.ByteFallback(),
                                  decoders.Fuse()])
  controls = [pieces[i] for i in range(len(pieces)) if sp.is_control(i) or sp.is_unknown(i)]
  specials = controls + [p for p in pieces if p in user and p != tokenizer_lib.NEWLINE_PIECE]
  hf.add_special_tokens([tokenizers.AddedToken(p, special=True, normalized=False)
                         for p in specials])
  if tokenizer_lib.NEWLINE_PIECE in pieces:
    hf.add_tokens([tokenizers.AddedToken(tokenizer_lib.NEWLINE_PIECE, special=False,
                                         normalized=False)])
  if family == 'encoder_decoder':
    eos = pieces[tokenizer.eos_id]
    hf.post_processor = tokenizers.processors.TemplateProcessing(
        single=f'$A {eos}', pair=f'$A {eos} $B {eos}', special_tokens=[(eos, tokenizer.eos_id)])
  return hf.to_str()


def _check_lmforge_layout(tokenizer: tokenizer_lib.SentencePieceTokenizer):
  sp = tokenizer._sp  # pylint: disable=protected-access
  specials = [sp.id_to_piece(i) for i in range(min(4, sp.vocab_size()))]
  # lmforge trains with the identity rule, no dummy prefix and spaces kept: ' ﬁ ' stays itself.
  plain = sp.normalize(' ﬁ  x') == '▁ﬁ▁▁x'
  if specials != ['<pad>', '</s>', '<unk>', '<s>'] or not plain:
    raise errors.UserError(
        f'tokenizer {tokenizer.name} is not a SentencePiece model lmforge trained (ids 0-3 are '
        f'{specials}, or it normalises text): copy the checkpoint\'s own tokenizer files with '
        'research.data.hf_tokenizer.copy_tokenizer_files')


def _is_unigram(sp) -> bool:
  # The model type is in the model's protobuf, which this avoids parsing; n-best encoding is
  # available for unigram models only.
  try:
    sp.nbest_encode_as_ids('a', 1)
  except RuntimeError:
    return False
  return True


def _merges(sp, pieces: list[str], ordinary: list[int]) -> list[tuple[str, str]]:
  """BPE merges equivalent to SentencePiece's: every split of a piece into two pieces, the
  highest-scoring result first (SentencePiece merges the best-scoring adjacent pair)."""
  known = {pieces[i] for i in ordinary}
  ranked = []
  for i in ordinary:
    piece = pieces[i]
    for k in range(1, len(piece)):
      if piece[:k] in known and piece[k:] in known:
        ranked.append((-sp.get_score(i), i, k, (piece[:k], piece[k:])))
  return [merge for *_, merge in sorted(ranked)]
