"""The worked example's instruction set: deterministic, and no evaluation line is trained on."""

import json

from experiments.finetune import build_data


def _read(path):
  with open(path) as f:
    return f.read()


def test_deterministic_and_held_out(tmp_path):
  counts = build_data.build(str(tmp_path / 'a'))
  build_data.build(str(tmp_path / 'b'))
  for name in ('train.jsonl', 'eval.jsonl', 'questions.json', 'prefs.jsonl', 'prefs_eval.jsonl'):
    assert _read(tmp_path / 'a' / name) == _read(tmp_path / 'b' / name), name
  assert counts == {'train': 8 * (150 + 60), 'eval': 8 * (30 + 15), 'questions': 8 * 45,
                    'preferences': 8 * 150, 'preferences_eval': 8 * 30}
  prefs = [json.loads(l) for l in _read(tmp_path / 'a' / 'prefs.jsonl').splitlines()]
  titles = {' ' + build_data.title(p) for p in build_data.PLAYS}
  for pair in prefs:  # DPO rows: the true title against another one
    assert pair['chosen'] in titles and pair['rejected'] in titles
    assert pair['chosen'] != pair['rejected'] and pair['prompt'].endswith('Answer:')
  train = [json.loads(l) for l in _read(tmp_path / 'a' / 'train.jsonl').splitlines()]
  questions = json.loads(_read(tmp_path / 'a' / 'questions.json'))
  trained_text = set()
  for row in train:
    trained_text.add(row['prompt'].splitlines()[1].split('. ', 1)[-1])  # without the speaker
    trained_text.add(row['response'].strip())
  for q in questions:
    line = q['prompt'].splitlines()[1]
    if q['task'] == 'which_play':
      line = line.split('. ', 1)[-1]
    assert line not in trained_text, line  # the question's line was never a training example
    assert 0 <= q['answer'] < len(q['candidates'])
  which = [q for q in questions if q['task'] == 'which_play']
  assert {q['candidates'][q['answer']].strip() for q in which} == {
      build_data.title(p) for p in build_data.PLAYS}
  assert sum(q['unseen'] for q in which) == 3 * 30
