"""RL prompts: JSONL rows {"prompt": str, ...}, tokenised, split, and chosen per iteration.

Each row's "prompt" is encoded as it is (bos first when the tokenizer adds one; no eos: the
model continues it). Rows without a string "prompt", empty prompts and prompts longer than
rl.max_prompt_len tokens are counted and reported (research.data.sft's Stats), never silently
dropped. The whole row, every other field included, goes to the reward function.

Held out: the first rl.num_eval_prompts rows of rl.eval_prompts, or, when that is '', as many
rows of rl.prompts taken out of training (chosen by a fixed permutation, the same for every
seed, so runs with different seeds are scored on the same prompts).

Order: iteration i takes prompts i x n .. (i + 1) x n - 1 (n = rl.prompts_per_iteration) of an
endless sequence of epochs, each a permutation of the training prompts seeded by (seed, epoch):
a pure function of (seed, i), so a resumed run samples the prompts the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from research.data import sft
from research.errors import ConfigError, UserError


@dataclasses.dataclass(frozen=True)
class Prompt:
  text: str
  ids: tuple[int, ...]
  row: dict  # the JSONL row (its own fields only)


@dataclasses.dataclass
class Prompts:
  train: list[Prompt]
  eval: list[Prompt]
  stats: dict

  def for_iteration(self, seed: int, iteration: int, count: int) -> list[Prompt]:
    n = len(self.train)
    index = np.arange(iteration * count, (iteration + 1) * count)
    epochs = index // n
    perms = {e: np.random.default_rng([seed, 0x5EED, e]).permutation(n)
             for e in np.unique(epochs).tolist()}
    return [self.train[perms[e][k % n]] for e, k in zip(epochs.tolist(), index.tolist())]


def _read(pattern: str, field: str, tokenizer, max_len: int) -> tuple[list[Prompt], sft.Stats]:
  stats = sft.Stats()
  out = []
  for row in sft.read_jsonl(pattern, field, stats):
    where = row.pop('_where')
    text = row.get('prompt')
    if not isinstance(text, str) or not text:
      stats.bad_lines += 1
      stats.note(f'{where}: expected a non-empty "prompt" string')
      continue
    ids = list(tokenizer.encode(text))
    if getattr(tokenizer, 'adds_bos', False):
      ids = [tokenizer.bos_id] + ids
    if not ids:
      stats.bad_lines += 1
      stats.note(f'{where}: the prompt encodes to no tokens')
      continue
    if len(ids) > max_len:
      stats.too_long += 1
      stats.note(f'{where}: {len(ids)} tokens, more than rl.max_prompt_len={max_len}')
      continue
    out.append(Prompt(text=text, ids=tuple(ids), row=row))
  stats.examples = len(out)
  return out, stats


def load(config, tokenizer) -> Prompts:
  rl = config.rl
  train, train_stats = _read(rl.prompts, 'rl.prompts', tokenizer, rl.max_prompt_len)
  stats = {'train': train_stats}
  k = rl.num_eval_prompts
  if rl.eval_prompts:
    held, stats['eval'] = _read(rl.eval_prompts, 'rl.eval_prompts', tokenizer,
                                rl.max_prompt_len)
    held = held[:k]
    if k and not held:
      raise UserError(f'rl.eval_prompts={rl.eval_prompts}: no usable prompt '
                      f"({stats['eval'].describe()})")
  elif k:
    if k >= len(train):
      raise ConfigError('rl.num_eval_prompts', k, f'holds out all {len(train)} usable prompts of '
                        'rl.prompts: hold out fewer, or give rl.eval_prompts')
    order = np.random.default_rng(0).permutation(len(train))
    chosen = set(order[:k].tolist())
    held = [train[i] for i in sorted(chosen)]
    train = [p for i, p in enumerate(train) if i not in chosen]
  else:
    held = []
  if not train:
    raise UserError(f'rl.prompts={rl.prompts}: no usable prompt ({train_stats.describe()})')
  _report(stats, len(train), len(held))
  return Prompts(train=train, eval=held, stats=stats)


def _report(stats: dict[str, sft.Stats], train: int, held: int) -> None:
  for split, s in stats.items():
    message = (f'rl prompts, {split}: {s.examples} prompts from {s.lines} lines in {s.files} '
               f'files; {s.bad_lines} bad lines, {s.too_long} longer than rl.max_prompt_len'
               + (f' (first: {s.first_problem})' if s.first_problem else ''))
    logging.info(message)
    if s.bad_lines or s.too_long:
      logging.warning(message)
      print(f'warning: {message}', flush=True)
  logging.info('rl prompts: %d for training, %d held out', train, held)
