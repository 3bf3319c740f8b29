"""The RL worked example's two tasks, built deterministically from the embedded corpus.

  python -m experiments.rl.tasks --out=runs/rl_data

1. **Next speaker** (verifiable; the reward is a Python function). The prompt is the end of a
   dialogue, two speeches (their last lines) with their speaker tags, cut before the next tag:

     "Rey.\\nVery good, my lord.\\n\\nPol.\\nAnd then, sir, does he this,--\\n\\n"

   and the completion should be the next speaker's tag ("Rey."). `speaker_reward` pays 1.0
   when the completion's first line is that tag and 0.5 for the prompt's other speaker (partial
   credit; the held-out accuracy counts exact answers only). Only turns whose next speaker already
   spoke in the prompt are kept; the answer is then always the prompt's first speaker (one speaker
   never has two speeches in a row), a rule the policy has to find: a pre-trained decoder names
   some speaker, often the wrong one, so the reward starts between 0 and 1 and can rise.
2. **Questions** (a preference learned by a reward model). Pairs {"prompt", "chosen",
   "rejected"} where the prompt is a line of a speech and both responses are real lines of the
   same play, the chosen one a question (ending in '?'), the rejected one not: a reward model
   trained on them (configs/finetune/reward.py) learns to prefer questions without being told
   the rule, and the policy is then trained on its scores. `question_reward` is the hidden rule
   itself (1.0 for a completed line that ends in '?'): evaluation measures how often the policy
   really asks questions, which the reward model can only approximate.

Training prompts come from the corpus's training works, evaluation prompts from its validation
works (research.data.shakespeare.VALIDATION_WORKS), which pre-training never reads. Files:
speaker.jsonl and speaker_eval.jsonl ({"prompt", "answer"}), prefs.jsonl and prefs_eval.jsonl
(reward-model and DPO pairs), question.jsonl and question_eval.jsonl ({"prompt"}).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from research.data import shakespeare

MAX_PROMPT_CHARS = 120  # two one-line speeches: at most about 100 tokens of a 512-piece BPE
MAX_LINE_CHARS = 60
MIN_LINE_CHARS = 12


def first_line(completion: str) -> tuple[str, bool]:
  """(the completion's first line, stripped; whether a newline ended it)."""
  line, newline, _ = completion.partition('\n')
  return line.strip(), bool(newline)


def speaker_reward(prompt: str, completion: str, row: dict) -> float:
  """1.0 when the completion names the next speaker (its first line is row['answer']), 0.5 when
  it names the prompt's other speaker, else 0. The half credit is a step on the way: a
  pre-trained decoder rarely names the right speaker at first, and copying a name from the
  prompt comes before choosing the right one. (Credit for any tag-shaped line was tried and is
  a trap: GRPO settled within 10 iterations on one made-up tag for every prompt.)"""
  line = first_line(completion)[0]
  if line == row['answer']:
    return 1.0
  tags = [block.split('\n', 1)[0] for block in prompt.split('\n\n') if block]
  return 0.5 if line in tags else 0.0


def question_reward(prompt: str, completion: str, row: dict) -> float:
  """1.0 when the completion is one finished line that ends in a question mark."""
  del prompt, row
  line, finished = first_line(completion)
  return float(finished and line.endswith('?'))


def _is_tag(line: str) -> bool:
  """'Pol.', 'First Lord.', 'KING HENRY.': a short capitalised line ending in '.'."""
  s = line.strip()
  return 2 <= len(s) <= 24 and s.endswith('.') and s[0].isupper() and len(s.split()) <= 3


def speeches(path: str) -> list[tuple[str, list[str]]]:
  """(speaker tag, lines) of every speech of a play, in order: blocks after a blank line that
  start with a tag; the Project Gutenberg front and back matter (3 % each) skipped."""
  with open(path, encoding='utf-8', errors='replace') as f:
    raw = [line.rstrip() for line in f]
  raw = raw[int(0.03 * len(raw)):int(0.97 * len(raw))]
  out, block = [], []
  for line in raw + ['']:
    if line.strip():
      block.append(line.strip())
      continue
    if len(block) >= 2 and _is_tag(block[0]) and not any(_is_tag(b) for b in block[1:]):
      out.append((block[0], block[1:]))
    elif block:
      out.append(('', []))  # a stage direction or heading: breaks the dialogue
    block = []
  return out


def _speech_text(tag: str, lines: list[str], max_lines: int = 1) -> str:
  return tag + '\n' + '\n'.join(lines[-max_lines:]) + '\n\n'


def speaker_rows(works: dict[str, str]) -> list[dict]:
  rows = []
  for play in sorted(works):
    turns = speeches(works[play])
    for a, b, c in zip(turns, turns[1:], turns[2:]):
      if not (a[0] and b[0] and c[0]) or c[0] not in (a[0], b[0]) or a[0] == b[0]:
        continue
      prompt = _speech_text(*a) + _speech_text(*b)
      if len(prompt) <= MAX_PROMPT_CHARS:
        rows.append({'prompt': prompt, 'answer': c[0], 'play': play})
  return rows


def _lines(turns) -> list[str]:
  return [line for tag, lines in turns if tag for line in lines
          if MIN_LINE_CHARS <= len(line) <= MAX_LINE_CHARS and not line.startswith('[')]


def preference_rows(works: dict[str, str], rng) -> list[dict]:
  """A pair per question line of each play: the prompt is another line of the play, chosen a
  question line, rejected a non-question line drawn from the same play."""
  rows = []
  for play in sorted(works):
    lines = _lines(speeches(works[play]))
    questions = [s for s in lines if s.endswith('?')]
    others = [s for s in lines if not s.endswith('?')]
    if not questions or not others:
      continue
    for q in questions:
      prompt = lines[rng.integers(len(lines))]
      rows.append({'prompt': prompt + '\n', 'chosen': q + '\n',
                   'rejected': others[rng.integers(len(others))] + '\n', 'play': play})
  return rows


def build(out: str, *, speaker_train: int = 2048, speaker_eval: int = 256,
          prefs_train: int = 2048, prefs_eval: int = 256, question_train: int = 2048,
          question_eval: int = 256, seed: int = 0) -> dict[str, int]:
  """Writes the task files into `out` (byte-identical for a seed); returns their row counts."""
  paths = shakespeare.work_paths()
  train = {w: p for w, p in paths.items() if w not in shakespeare.VALIDATION_WORKS}
  held = {w: p for w, p in paths.items() if w in shakespeare.VALIDATION_WORKS}
  rng = np.random.default_rng(seed)
  pick = lambda rows, n: [rows[i] for i in sorted(rng.choice(len(rows), min(n, len(rows)),
                                                             replace=False))]
  files = {
      'speaker.jsonl': pick(speaker_rows(train), speaker_train),
      'speaker_eval.jsonl': pick(speaker_rows(held), speaker_eval),
      'prefs.jsonl': pick(preference_rows(train, rng), prefs_train),
      'prefs_eval.jsonl': pick(preference_rows(held, rng), prefs_eval),
  }
  for name, works, n in (('question.jsonl', train, question_train),
                         ('question_eval.jsonl', held, question_eval)):
    lines = [s for w in sorted(works) for s in _lines(speeches(works[w]))]
    files[name] = [{'prompt': s + '\n'} for s in pick(lines, n)]
  os.makedirs(out, exist_ok=True)
  for name, rows in files.items():
    order = rng.permutation(len(rows))  # mix plays across batches
    with open(os.path.join(out, name), 'w') as f:
      f.writelines(json.dumps(rows[i]) + '\n' for i in order)
  return {name: len(rows) for name, rows in files.items()}


def main(argv):
  del argv
  print(json.dumps(build(flags.FLAGS.out)))


if __name__ == '__main__':
  # Defined here, not on import: experiments.finetune.build_data has an --out flag of its own.
  flags.DEFINE_string('out', 'runs/rl_data', 'directory for the JSONL files')
  app.run(main)
