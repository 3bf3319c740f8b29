"""The RL study: its tasks' rewards and files, its `:tiny` variant end to end from a given base
decoder (the reward model, GRPO against it, DPO, the table and plots, a rerun that redoes
nothing), and its config errors."""

import csv
import json
import os

import pytest

from experiments.rl import run, tasks
from research import config_lib
from research.data import tokenizer as tokenizer_lib
from research.errors import ConfigError
from tests.finetune.conftest import make_source_workdir, source_config

CONFIG = 'configs/experiments/rl/study.py'


def test_rewards_follow_their_rules():
  prompt, row = 'Pol.\nAnd then, sir,--\n\nRey.\nVery good, my lord.\n\n', {'answer': 'Pol.'}
  assert tasks.speaker_reward(prompt, 'Pol.\nMy lord', row) == 1.0
  assert tasks.speaker_reward(prompt, ' Pol.', row) == 1.0  # the line, stripped
  assert tasks.speaker_reward(prompt, 'Rey.\nPol.', row) == 0.5  # the prompt's other speaker
  assert tasks.speaker_reward(prompt, 'HAMLET.\nPol.', row) == 0.0  # a speaker not in the prompt
  assert tasks.speaker_reward(prompt, '[Exeunt.]', row) == 0.0
  assert tasks.question_reward('', 'What, my lord?\nAy', {}) == 1.0
  assert tasks.question_reward('', 'What, my lord?', {}) == 0.0  # the line never finished
  assert tasks.question_reward('', 'Ay, my lord.\nWhat?', {}) == 0.0


def test_task_files_are_deterministic_and_split_by_work(tmp_path):
  counts = tasks.build(str(tmp_path / 'a'), speaker_train=64, speaker_eval=16, prefs_train=64,
                       prefs_eval=16, question_train=64, question_eval=16)
  tasks.build(str(tmp_path / 'b'), speaker_train=64, speaker_eval=16, prefs_train=64,
              prefs_eval=16, question_train=64, question_eval=16)
  assert counts == {'speaker.jsonl': 64, 'speaker_eval.jsonl': 16, 'prefs.jsonl': 64,
                    'prefs_eval.jsonl': 16, 'question.jsonl': 64, 'question_eval.jsonl': 16}
  for name in counts:
    assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
  read = lambda name: [json.loads(line) for line in (tmp_path / 'a' / name).open()]
  from research.data import shakespeare
  for row in read('speaker.jsonl') + read('prefs.jsonl'):
    assert row['play'] not in shakespeare.VALIDATION_WORKS
  for row in read('speaker_eval.jsonl') + read('prefs_eval.jsonl'):
    assert row['play'] in shakespeare.VALIDATION_WORKS
  for row in read('speaker.jsonl'):  # the answer is in the prompt: its first speaker
    assert row['prompt'].endswith('\n\n') and row['prompt'].split('\n')[0] == row['answer']
  for row in read('prefs.jsonl'):  # the hidden rule separates every pair
    assert tasks.question_reward('', row['chosen'], row) == 1.0
    assert tasks.question_reward('', row['rejected'], row) == 0.0


@pytest.fixture(name='base', scope='module')
def _base(tmp_path_factory):
  """A 1-layer decoder (untrained) with a tokenizer of the tasks' own text."""
  root = tmp_path_factory.mktemp('rl_base')
  tasks.build(str(root / 'text'), speaker_train=256, prefs_train=256, question_train=256)
  docs = [line for name in os.listdir(root / 'text') for line in (root / 'text' / name).open()]
  tokenizer_file = str(root / 'tokenizer.model')
  tokenizer = tokenizer_lib.train_tokenizer(docs, 512, tokenizer_file, num_sentinels=0)
  config = source_config(**{'data.vocab_size': tokenizer.vocab_size, 'model.position': 'rope'})
  return str(make_source_workdir(root / 'base', config, tokenizer_file)[0])


@pytest.mark.slow  # three tiny runs and two evaluations, each compiled
def test_tiny_study_from_a_base_then_rerun_redoes_nothing(base, tmp_path):
  config = config_lib.load_config(CONFIG + ':tiny', [('rl_study.tasks', "('preference',)"),
                                                     ('rl_study.algorithms', "('grpo',)")])
  rows = run.run_study(config, str(tmp_path), base=base, log=lambda _: None)
  assert [(r['task'], r['method']) for r in rows] == [
      ('preference', 'reward model'), ('preference', 'grpo'), ('preference', 'dpo')]
  with open(tmp_path / 'results.csv', newline='') as f:
    table = list(csv.DictReader(f))
  assert len(table) == 3
  grpo, dpo = rows[1], rows[2]
  # GRPO's first held-out evaluation is the base's, as is DPO's start: the same prompts,
  # greedy completions and rule.
  assert grpo['start_accuracy'] == dpo['start_accuracy']
  assert grpo['start_reward'] == dpo['start_reward']
  for r in (grpo, dpo):
    assert 0 <= r['accuracy'] <= 1
  path = tmp_path / 'preference' / 'grpo' / 'metrics.jsonl'
  metrics = [json.loads(line) for line in path.open()]
  assert any('rl/reward_mean' in m and 'rl/kl' in m for m in metrics)
  assert sum('eval/accuracy' in m for m in metrics) == 3  # the start, iterations 1 and 2
  md = (tmp_path / 'results.md').read_text()
  assert '| preference | GRPO | reward model |' in md and '## What holds' in md
  assert os.path.getsize(tmp_path / 'preference.png') > 0
  logs = []
  again = run.run_study(config, str(tmp_path), base=base, log=logs.append)
  assert [r['accuracy'] for r in again] == [r['accuracy'] for r in rows]
  assert all('done before' in line for line in logs if line.startswith('  '))


@pytest.mark.parametrize('key, value, field', [
    ('rl_study.algorithms', "('grpo', 'reinforce')", 'rl_study.algorithms'),
    ('rl_study.tasks', '()', 'rl_study.tasks'),
    ('rl_study.samples_per_prompt', '1', 'rl_study.samples_per_prompt'),
    ('rl_study.iterations', '0', 'rl_study.iterations'),
    ('rl_study.lr', '0.0', 'rl_study.lr'),
])
def test_bad_values_are_config_errors_naming_the_field(key, value, field):
  config = config_lib.load_config(CONFIG, [(key, value)])
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')) as e:
    run.section(config)
  assert '\n' not in str(e.value)
