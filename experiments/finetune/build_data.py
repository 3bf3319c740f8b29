"""The worked example's instruction set, built deterministically from the embedded corpus.

  python -m experiments.finetune.build_data --out=runs/ft_data

Two tasks over eight plays, three of them (`UNSEEN_PLAYS`) from the corpus's validation works,
which pre-training never reads, and five from its training works:
  which play   "Which play is this line from?\\n<SPEAKER.> <line>\\nAnswer:" -> " <Title>"
  continue     "Continue this speech:\\n<line>\\n" -> "<next line>"
Each play's usable lines (verse or prose lines of at least MIN_CHARS characters, without stage
directions, away from the Project Gutenberg front and back matter) are cut at 80 % of the play:
training questions come from the first part, evaluation questions from the last, so no
evaluation line (nor its continuation) is ever a training example. The speaker's tag (the
line above the speech, such as "BRUTUS." or "Ham.") leads the line: the characters of a play
speak in both parts, so the question is answerable from what fine-tuning teaches. For the
unseen plays no evaluation line was in pre-training either; for the other five the line was
pre-training text, but never a question. Sampling uses a fixed seed: the files are byte-identical on every run.

Files: train.jsonl and eval.jsonl (SFT rows), questions.json (evaluation questions with their
multiple-choice candidates: the eight titles; the true continuation and three other lines of
the same play's evaluation part), and prefs.jsonl and prefs_eval.jsonl: preference rows for DPO
(configs/finetune/dpo.py), {"prompt", "chosen", "rejected"}, one per which-play question of
train.jsonl / eval.jsonl: the true title chosen, another of the eight titles (drawn with its
own seed, so the SFT files do not change) rejected.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from research.data import shakespeare

UNSEEN_PLAYS = ('henry_v', 'julius_caesar', 'much_ado_about_nothing')
SEEN_PLAYS = ('hamlet', 'macbeth', 'othello', 'romeo_and_juliet', 'tempest')
PLAYS = UNSEEN_PLAYS + SEEN_PLAYS
MIN_CHARS = 25
MAX_CHARS = 90
TRAIN_FRACTION = 0.8
WHICH_PROMPT = 'Which play is this line from?\n{speaker} {line}\nAnswer:'
CONTINUE_PROMPT = 'Continue this speech:\n{line}\n'


def title(play: str) -> str:
  """'much_ado_about_nothing' -> 'Much Ado About Nothing'."""
  return ' '.join(word.capitalize() for word in play.split('_'))


def usable(line: str) -> bool:
  s = line.strip()
  return (MIN_CHARS <= len(s) <= MAX_CHARS and not s.startswith(('[', '<', '*')) and
          'gutenberg' not in s.lower() and 'ebook' not in s.lower() and not s.isupper())


def is_speaker_tag(line: str, previous: str) -> bool:
  """'BRUTUS.', 'Ham.', 'Cor. and Volt.': a short capitalised line ending in '.', after a blank."""
  s = line.strip()
  return (not previous.strip() and 2 <= len(s) <= 24 and s.endswith('.') and s[0].isupper() and
          len(s.split()) <= 4)


def play_lines(path: str):
  """(train lines, eval lines, train continuation pairs, eval continuation pairs) of a play;
  lines are (speaker tag, text) pairs."""
  with open(path, encoding='utf-8', errors='replace') as f:
    raw = [line.rstrip() for line in f]
  lo, hi = int(0.03 * len(raw)), int(0.97 * len(raw))  # skip front and back matter
  raw = raw[lo:hi]
  cut = int(TRAIN_FRACTION * len(raw))
  speakers, speaker = [], ''
  for previous, line in zip([''] + raw, raw):
    if is_speaker_tag(line, previous):
      speaker = line.strip()
    speakers.append(speaker)
  parts = []
  for lo, hi in ((0, cut), (cut, len(raw))):
    part = raw[lo:hi]
    lines = [(speakers[lo + i], s.strip()) for i, s in enumerate(part)
             if usable(s) and speakers[lo + i]]
    pairs = [(a.strip(), b.strip()) for a, b in zip(part, part[1:]) if usable(a) and usable(b)]
    parts.append((lines, pairs))
  (train_lines, train_pairs), (eval_lines, eval_pairs) = parts
  return train_lines, eval_lines, train_pairs, eval_pairs


def build(out: str, *, which_train: int = 150, continue_train: int = 60, which_eval: int = 30,
          continue_eval: int = 15, seed: int = 0) -> dict:
  """Writes the files into `out`; returns their counts."""
  rng = np.random.default_rng(seed)
  paths = shakespeare.work_paths()
  titles = [title(p) for p in PLAYS]
  train_rows, eval_rows, questions = [], [], []
  for play in PLAYS:
    train_lines, eval_lines, train_pairs, eval_pairs = play_lines(paths[play])
    pick = lambda items, n: [items[i] for i in sorted(rng.choice(len(items), n, replace=False))]
    for speaker, line in pick(train_lines, which_train):
      train_rows.append({'prompt': WHICH_PROMPT.format(speaker=speaker, line=line),
                         'response': ' ' + title(play)})
    for a, b in pick(train_pairs, continue_train):
      train_rows.append({'prompt': CONTINUE_PROMPT.format(line=a), 'response': b})
    for speaker, line in pick(eval_lines, which_eval):
      prompt = WHICH_PROMPT.format(speaker=speaker, line=line)
      eval_rows.append({'prompt': prompt, 'response': ' ' + title(play)})
      questions.append({'task': 'which_play', 'play': play, 'unseen': play in UNSEEN_PLAYS,
                        'prompt': prompt, 'candidates': [' ' + t for t in titles],
                        'answer': titles.index(title(play))})
    for a, b in pick(eval_pairs, continue_eval):
      prompt = CONTINUE_PROMPT.format(line=a)
      eval_rows.append({'prompt': prompt, 'response': b})
      others = [line for _, line in eval_lines if line not in (a, b)]
      distractors = [others[i] for i in rng.choice(len(others), 3, replace=False)]
      candidates = [b] + distractors
      order = rng.permutation(4)
      questions.append({'task': 'continue', 'play': play, 'unseen': play in UNSEEN_PLAYS,
                        'prompt': prompt, 'candidates': [candidates[i] for i in order],
                        'answer': int(np.argmax(order == 0))})
  order = rng.permutation(len(train_rows))  # mix tasks and plays across packed rows
  train_rows = [train_rows[i] for i in order]
  os.makedirs(out, exist_ok=True)
  for name, rows in (('train.jsonl', train_rows), ('eval.jsonl', eval_rows)):
    with open(os.path.join(out, name), 'w') as f:
      f.writelines(json.dumps(row) + '\n' for row in rows)
  with open(os.path.join(out, 'questions.json'), 'w') as f:
    json.dump(questions, f, indent=1)
  prefs_rng = np.random.default_rng([seed, 1])  # its own stream: the files above stay as they were
  prefs = {name: preference_rows(rows, titles, prefs_rng)
           for name, rows in (('prefs.jsonl', train_rows), ('prefs_eval.jsonl', eval_rows))}
  for name, rows in prefs.items():
    with open(os.path.join(out, name), 'w') as f:
      f.writelines(json.dumps(row) + '\n' for row in rows)
  return {'train': len(train_rows), 'eval': len(eval_rows), 'questions': len(questions),
          'preferences': len(prefs['prefs.jsonl']),
          'preferences_eval': len(prefs['prefs_eval.jsonl'])}


def preference_rows(rows, titles, rng) -> list[dict]:
  """A DPO pair per which-play row: its true title chosen, another title rejected."""
  pairs = []
  for row in rows:
    if not row['prompt'].startswith(WHICH_PROMPT.split('\n', 1)[0]):
      continue
    true = row['response'].strip()
    others = [t for t in titles if t != true]
    pairs.append({'prompt': row['prompt'], 'chosen': row['response'],
                  'rejected': ' ' + others[rng.integers(len(others))]})
  return pairs


_OUT = flags.DEFINE_string('out', 'runs/ft_data', 'directory for the JSONL files')


def main(argv):
  del argv
  print(json.dumps(build(_OUT.value)))


if __name__ == '__main__':
  app.run(main)
