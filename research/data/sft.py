"""Fine-tuning data: JSONL prompt/response, chat and preference rows -> fixed-shape batches.

Row formats (one JSON object per line):
  {"prompt": P, "response": R}            supervised fine-tuning (objective 'sft')
  {"messages": [{"role", "content"}...]}  multi-turn chat: the tokenizer's chat template, if any,
                                          else lmforge's format (below)
  {"prompt": P, "chosen": C, "rejected": X}  preferences (objectives 'dpo' and 'reward'; a
                                          reward row may add "margin": a number)

Tokens. A prompt/response pair is `encode(P) + encode(R) + [eos]` with no text in between (put any
separator in P); the loss covers R and its eos only. A chat renders each message as
`### Role:\\n` + content + `\\n`, except that an assistant message ends with eos instead of the
newline; the loss covers every assistant content and its eos, not the role markers. Pre-training
joins documents with eos, so eos is also where a response stops. Both start with bos when the
tokenizer's checkpoint adds one (`tokenizer.adds_bos`: Llama; never lmforge's own tokenizer).

Chat templates. When the tokenizer carries a chat template (an imported Llama 3 or Qwen:
tokenizer_config.json's `chat_template` or chat_template.jinja), a chat row is rendered with it
exactly as transformers' `apply_chat_template(messages, tokenize=False)` does
(research.data.chat_template) and the whole text is encoded at once, so the ids are those of
`apply_chat_template(messages, tokenize=True)`; nothing is added, the template writes bos and the
end-of-turn tokens itself. The loss covers the tokens that overlap an assistant turn, found by
rendering the conversation's prefixes (`chat_template.assistant_spans`): the reply and the
template's end-of-turn text, not the role headers.

Decoder batches pack examples first-fit (research.data.packing) into rows of seq_len + 1 tokens;
inputs/targets are the row shifted by one, segment ids and positions restart per example, and a
target is weighted only where it is a response token of the same example. With packing off (and
always for encoder-decoders and preference pairs) each example has its own row. Encoder-decoder
examples put everything before the last response into the encoder and that response (+ eos)
into the decoder.

Order. The packed rows are fixed at load time (file order); training batch `step` takes rows of
an epoch-wise permutation seeded by (seed, epoch), so batches are a pure function of
(seed, step) and every process reads only its slice of the global batch. Evaluation reads rows
in order; the last batch is filled with empty (zero-weight) rows, so every example counts once.

Bad input. Lines that are not JSON objects of a known format, and examples longer than a row,
are counted and reported (logged, and in `Dataset.stats`), never silently dropped; no usable
example at all is an error.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Any, Sequence

import numpy as np

from research.data import chat_template as chat_template_lib
from research.data import packing, sampler
from research.errors import ConfigError, UserError

CHAT_ROLES = ('system', 'user', 'assistant')


def chat_marker(role: str) -> str:
  return f'### {role.capitalize()}:\n'


@dataclasses.dataclass
class Stats:
  """What reading a JSONL glob kept and dropped (and why)."""
  files: int = 0
  lines: int = 0
  examples: int = 0
  bad_lines: int = 0
  too_long: int = 0
  first_problem: str = ''

  def note(self, problem: str):
    if not self.first_problem:
      self.first_problem = problem

  def describe(self) -> str:
    text = (f'{self.examples} examples from {self.lines} lines in {self.files} files; '
            f'{self.bad_lines} bad lines, {self.too_long} examples too long')
    return text + (f' (first: {self.first_problem})' if self.first_problem else '')


def read_jsonl(pattern: str, field: str, stats: Stats) -> list[dict]:
  """The JSON objects in the files `pattern` matches, in sorted file and line order."""
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise ConfigError(field, pattern, 'matches no file: give a JSONL path or glob')
  rows = []
  for path in paths:
    stats.files += 1
    with open(path, encoding='utf-8', errors='replace') as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        stats.lines += 1
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          stats.bad_lines += 1
          stats.note(f'{path}:{number}: not JSON ({e.msg})')
          continue
        if not isinstance(row, dict):
          stats.bad_lines += 1
          stats.note(f'{path}:{number}: not a JSON object')
          continue
        rows.append(dict(row, _where=f'{path}:{number}'))
  return rows


def messages_problem(messages) -> str | None:
  """Why a "messages" value is unusable, or None."""
  if not isinstance(messages, list) or not messages:
    return '"messages" must be a non-empty list'
  for m in messages:
    if not isinstance(m, dict) or m.get('role') not in CHAT_ROLES or not isinstance(
        m.get('content'), str):
      return f'each message needs a role in {CHAT_ROLES} and a string content'
  if not any(m['role'] == 'assistant' for m in messages):
    return 'a chat needs at least one assistant message'
  return None


def pieces_of(row: dict) -> list[tuple[str, bool]] | str:
  """(text, is_response) pieces of an sft row, or the reason it is unusable. A response piece is
  followed by eos."""
  if 'messages' in row:
    messages = row['messages']
    if (problem := messages_problem(messages)) is not None:
      return problem
    pieces = []
    for m in messages:
      pieces.append((chat_marker(m['role']), False))
      if m['role'] == 'assistant':
        pieces.append((m['content'], True))
      else:
        pieces.append((m['content'] + '\n', False))
    return pieces
  if isinstance(row.get('prompt'), str) and isinstance(row.get('response'), str):
    return [(row['prompt'], False), (row['response'], True)]
  return 'expected {"prompt", "response"} strings or a "messages" list'


def encode_pieces(pieces, tokenizer) -> tuple[list[int], list[int]]:
  """Token ids and response flags (1 for response tokens and their eos); bos first when the
  tokenizer's checkpoint adds one."""
  ids, flags = [], []
  if getattr(tokenizer, 'adds_bos', False):
    ids, flags = [tokenizer.bos_id], [0]
  for text, is_response in pieces:
    piece = tokenizer.encode(text) if text else []
    ids += piece
    flags += [int(is_response)] * len(piece)
    if is_response:
      ids.append(tokenizer.eos_id)
      flags.append(1)
  return ids, flags


def encode_chat(messages, tokenizer, template: str) -> tuple[list[int], list[int]] | str:
  """Token ids and response flags of a chat rendered by `template` (module doc), or the reason
  the row is unusable."""
  if (problem := messages_problem(messages)) is not None:
    return problem
  try:
    text, spans = chat_template_lib.assistant_spans(template, messages,
                                                    special_tokens=tokenizer.special_tokens)
  except UserError as e:
    return str(e)
  ids, offsets = tokenizer.encode_with_offsets(text)
  return ids, response_flags(offsets, spans)


def response_flags(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
                   ) -> list[int]:
  """1 for each token whose [start, end) characters overlap a response span, else 0 (both lists
  in text order)."""
  flags, k = [], 0
  for start, end in offsets:
    while k < len(spans) and start >= spans[k][1]:
      k += 1
    flags.append(int(k < len(spans) and end > spans[k][0]))
  return flags


def decoder_rows(examples: Sequence[tuple[list[int], list[int]]], seq_len: int, *, pack: bool,
                 pad_id: int) -> dict[str, np.ndarray]:
  """Examples (ids, flags) of at most seq_len + 1 tokens -> rows of inputs, targets, weights,
  segment_ids and positions, each int32/float32 [rows, seq_len]."""
  tokens = [ids for ids, _ in examples]
  flags = [f for _, f in examples]
  if pack:
    packed = packing.pack(tokens, seq_len + 1, pad_id=pad_id)
    flag_rows = packing.pack(flags, seq_len + 1, pad_id=0)['tokens']
  else:
    packed = {k: np.zeros((len(tokens), seq_len + 1), np.int32)
              for k in ('tokens', 'segment_ids', 'positions')}
    packed['tokens'][:] = pad_id
    flag_rows = np.zeros((len(tokens), seq_len + 1), np.int32)
    for r, (ids, f) in enumerate(zip(tokens, flags)):
      packed['tokens'][r, :len(ids)] = ids
      packed['segment_ids'][r, :len(ids)] = 1
      packed['positions'][r, :len(ids)] = np.arange(len(ids))
      flag_rows[r, :len(f)] = f
  seg = packed['segment_ids']
  same = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
  return dict(inputs=packed['tokens'][:, :-1], targets=packed['tokens'][:, 1:],
              weights=(same & (flag_rows[:, 1:] > 0)).astype(np.float32),
              segment_ids=seg[:, :-1], positions=packed['positions'][:, :-1])


def encoder_decoder_rows(examples, seq_len: int, *, pad_id: int, eos_id: int,
                         start_id: int = 0) -> dict[str, np.ndarray]:
  """Examples (ids, flags) -> encoder inputs (all before the last response, + eos) and decoder
  inputs/targets (the last response and its eos), one example per row, [rows, seq_len]."""
  n = len(examples)
  enc = np.full((n, seq_len), pad_id, np.int32)
  tgt = np.full((n, seq_len), pad_id, np.int32)
  for r, (ids, flags) in enumerate(examples):
    ids, flags = np.asarray(ids), np.asarray(flags)
    # The last response: the final run of flagged tokens.
    start = len(flags) - int(np.argmax(flags[::-1] == 0)) if (flags == 0).any() else 0
    source = np.append(ids[:start], eos_id)
    enc[r, :len(source)] = source
    tgt[r, :len(ids) - start] = ids[start:]
  dec = np.concatenate([np.full((n, 1), start_id, np.int32), tgt[:, :-1]], axis=1)
  weights = (tgt != pad_id).astype(np.float32)
  return dict(encoder_inputs=enc, encoder_segment_ids=(enc != pad_id).astype(np.int32),
              decoder_inputs=dec, decoder_segment_ids=np.ones_like(tgt), targets=tgt,
              weights=weights)


def encoder_decoder_fits(ids, flags, seq_len: int) -> bool:
  flags = np.asarray(flags)
  start = len(flags) - int(np.argmax(flags[::-1] == 0)) if (flags == 0).any() else 0
  return start + 1 <= seq_len and len(ids) - start <= seq_len


def preference_rows(pairs, seq_len: int, *, pad_id: int) -> dict[str, np.ndarray]:
  """(chosen, rejected[, margin]) examples -> chosen_* and rejected_* decoder rows, one pair per
  row, and `margin` [rows, 1] float32 when the pairs carry one (rank 2, as every batch array)."""
  out = {}
  for side, k in (('chosen', 0), ('rejected', 1)):
    rows = decoder_rows([pair[k] for pair in pairs], seq_len, pack=False, pad_id=pad_id)
    out.update({f'{side}_{name}': value for name, value in rows.items()})
  if pairs and len(pairs[0]) > 2:
    out['margin'] = np.array([[pair[2]] for pair in pairs], np.float32)
  return out


@dataclasses.dataclass
class Dataset:
  """Fixed rows of fine-tuning batches: the trainer's dataset interface (see module doc)."""
  tokenizer: Any
  train_rows: dict[str, np.ndarray]
  eval_rows: dict[str, np.ndarray]
  stats: dict[str, Stats]

  @staticmethod
  def _num(rows) -> int:
    return len(next(iter(rows.values())))

  def train_batch(self, seed, step, global_batch, seq_len=None, process_index=0,
                  process_count=1) -> dict[str, np.ndarray]:
    del seq_len  # the rows are built for the config's seq_len
    n = self._num(self.train_rows)
    index_B = step * global_batch + np.arange(global_batch, dtype=np.int64)
    epochs = np.unique(index_B // n)
    perms = {int(e): np.random.default_rng([seed, int(e)]).permutation(n) for e in epochs}
    rows_B = np.array([perms[int(i // n)][i % n] for i in index_B])
    rows_B = rows_B[sampler.process_slice(global_batch, process_index, process_count)]
    return {k: v[rows_B] for k, v in self.train_rows.items()}

  def num_eval_batches(self, global_batch, seq_len=None) -> int:
    del seq_len
    return max(1, -(-self._num(self.eval_rows) // global_batch))

  def eval_batch(self, batch_index, global_batch, seq_len=None, process_index=0,
                 process_count=1) -> dict[str, np.ndarray]:
    del seq_len
    n = self._num(self.eval_rows)
    index_B = batch_index * global_batch + np.arange(global_batch)
    index_B = index_B[sampler.process_slice(global_batch, process_index, process_count)]
    out = {}
    for k, v in self.eval_rows.items():
      batch = v[np.minimum(index_B, n - 1)].copy()
      batch[index_B >= n] = 0  # empty rows: zero weights and segment ids
      out[k] = batch
    return out


def _split(examples, eval_examples, fraction: float, field: str):
  if eval_examples is not None:
    return examples, eval_examples
  if not 0 < fraction < 1:
    raise ConfigError('finetune.eval_fraction', fraction,
                      f'must be in (0, 1) when {field} is empty, e.g. 0.05')
  every = max(2, round(1 / fraction))
  held = [e for i, e in enumerate(examples) if i % every == every - 1]
  kept = [e for i, e in enumerate(examples) if i % every != every - 1]
  return kept, held


def _tokenized(pattern, field, tokenizer, keep, encode) -> tuple[list, Stats]:
  """Reads and encodes the rows of `pattern`; `encode(row)` -> example or a problem string;
  `keep(example)` says whether it fits."""
  stats = Stats()
  examples = []
  for row in read_jsonl(pattern, field, stats):
    where = row.pop('_where')
    example = encode(row)
    if isinstance(example, str):
      stats.bad_lines += 1
      stats.note(f'{where}: {example}')
      continue
    if not keep(example):
      stats.too_long += 1
      stats.note(f'{where}: longer than data.seq_len allows')
      continue
    examples.append(example)
  stats.examples = len(examples)
  del tokenizer
  return examples, stats


def _report(stats: dict[str, Stats]):
  for split, s in stats.items():
    message = f'fine-tuning data, {split}: {s.describe()}'
    logging.info(message)
    if s.bad_lines or s.too_long:
      logging.warning(message)
      print(f'warning: {message}', flush=True)


def _check_examples(examples, field, pattern, stats):
  if not examples:
    raise UserError(f'{field}={pattern}: no usable example ({stats.describe()})')


def load_sft(config, tokenizer) -> Dataset:
  """The sft objective's dataset for `config` (finetune.train_data / eval_data)."""
  c = config
  seq_len = c.data.seq_len
  family = c.model.family
  if family not in ('decoder', 'encoder_decoder'):
    raise ConfigError('model.family', family, "sft fine-tunes 'decoder' or 'encoder_decoder'")
  if not c.finetune.train_data:
    raise ConfigError('finetune.train_data', '', 'give a JSONL path or glob of '
                      '{"prompt", "response"} or {"messages": [...]} rows')

  template = getattr(tokenizer, 'chat_template', None)
  if template:
    chat_template_lib.compile_template(template)  # a broken template fails here, once

  def encode(row):
    if template and 'messages' in row:
      return encode_chat(row['messages'], tokenizer, template)
    pieces = pieces_of(row)
    return pieces if isinstance(pieces, str) else encode_pieces(pieces, tokenizer)

  if family == 'decoder':
    keep = lambda e: len(e[0]) <= seq_len + 1
  else:
    keep = lambda e: encoder_decoder_fits(*e, seq_len)
  train, train_stats = _tokenized(c.finetune.train_data, 'finetune.train_data', tokenizer, keep,
                                  encode)
  stats = {'train': train_stats}
  held = None
  if c.finetune.eval_data:
    held, stats['eval'] = _tokenized(c.finetune.eval_data, 'finetune.eval_data', tokenizer, keep,
                                     encode)
  train, held = _split(train, held, c.finetune.eval_fraction, 'finetune.eval_data')
  _check_examples(train, 'finetune.train_data', c.finetune.train_data, train_stats)
  _check_examples(held, 'finetune.eval_data', c.finetune.eval_data or c.finetune.train_data,
                  stats.get('eval', train_stats))
  _report(stats)
  if family == 'decoder':
    # A soft prompt leads each row, so prompt tuning keeps one example per row.
    pack = c.finetune.pack and c.peft.method != 'prompt'
    build = lambda ex: decoder_rows(ex, seq_len, pack=pack, pad_id=tokenizer.pad_id)
  else:
    build = lambda ex: encoder_decoder_rows(ex, seq_len, pad_id=tokenizer.pad_id,
                                            eos_id=tokenizer.eos_id)
  return Dataset(tokenizer=tokenizer, train_rows=build(train), eval_rows=build(held), stats=stats)


def preference_pieces(prompt: str, response: str) -> list[tuple[str, bool]]:
  """The pieces of one side of a preference pair: `encode_pieces` makes it prompt + response +
  eos (bos first where the tokenizer adds one). Training rows and research.load's `rewards`
  both tokenise with it."""
  return [(prompt, False), (response, True)]


def _margin_problem(value) -> str | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
    return f'"margin" must be a finite number, not {value!r}'
  return None


def load_preferences(config, tokenizer, section: str = 'dpo', *, max_tokens: int | None = None,
                     margin: float | None = None) -> Dataset:
  """Preference pairs of `section.train_data` / `section.eval_data` ('dpo', 'reward').

  max_tokens: the longest example (prompt + response + eos) kept; default data.seq_len + 1, as
    DPO scores the eos as the last target only. A reward model reads its head at the eos, an
    input: it passes data.seq_len.
  margin: None, no margins (DPO); else each pair's `margin` column is its row's "margin" number
    when it has one, else this value.
  """
  c = config
  seq_len = c.data.seq_len
  max_tokens = seq_len + 1 if max_tokens is None else max_tokens
  fields = {split: f'{section}.{split}_data' for split in ('train', 'eval')}
  train_data, eval_data = c[section].train_data, c[section].eval_data
  if not train_data:
    raise ConfigError(fields['train'], '', 'give a JSONL path or glob of '
                      '{"prompt", "chosen", "rejected"} rows')

  def encode(row):
    if not all(isinstance(row.get(k), str) for k in ('prompt', 'chosen', 'rejected')):
      return 'expected "prompt", "chosen" and "rejected" strings'
    pair = tuple(encode_pieces(preference_pieces(row['prompt'], row[k]), tokenizer)
                 for k in ('chosen', 'rejected'))
    if margin is None:
      return pair
    value = row.get('margin', margin)
    return _margin_problem(value) or (*pair, float(value))

  keep = lambda pair: all(len(ids) <= max_tokens for ids, _ in pair[:2])
  train, train_stats = _tokenized(train_data, fields['train'], tokenizer, keep, encode)
  stats = {'train': train_stats}
  held = None
  if eval_data:
    held, stats['eval'] = _tokenized(eval_data, fields['eval'], tokenizer, keep, encode)
  train, held = _split(train, held, c.finetune.eval_fraction, fields['eval'])
  _check_examples(train, fields['train'], train_data, train_stats)
  _check_examples(held, fields['eval'], eval_data or train_data, stats.get('eval', train_stats))
  _report(stats)
  build = lambda ex: preference_rows(ex, seq_len, pad_id=tokenizer.pad_id)
  return Dataset(tokenizer=tokenizer, train_rows=build(train), eval_rows=build(held), stats=stats)


def tokenizer_for(config, workdir: str):
  """The fine-tuning run's tokenizer: its own workdir's (when resuming), else init_from's, else
  data.tokenizer; saved into `workdir` so that sampling and evaluation find it."""
  # pylint: disable-next=g-import-not-at-top
  from research.data import pipeline, tokenizer as tokenizer_lib
  if os.path.isdir(workdir) and tokenizer_lib.find_tokenizer(workdir):
    return tokenizer_lib.load_tokenizer(workdir)
  if config.get('init_from', ''):
    tokenizer = pipeline.load_tokenizer_from_workdir(config.init_from)
  elif config.data.tokenizer:
    tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer)
  else:
    raise ConfigError('init_from', '', 'fine-tuning needs a tokenizer: set init_from to a '
                      'workdir (its tokenizer is used) or data.tokenizer to a tokenizer.model, '
                      'a tokenizer.json or a model directory')
  os.makedirs(workdir, exist_ok=True)
  tokenizer.save(workdir)
  return tokenizer
