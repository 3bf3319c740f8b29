"""The compression study: its `:tiny` variant end to end (every part, resume) and its config
errors."""

import csv
import os
import subprocess
import sys

import pytest

from experiments.compression import run
from research import config_lib
from research.errors import ConfigError
from tests import helpers

CONFIG = 'configs/experiments/compression/study.py'


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # ~11 tiny runs, each compiled
def test_tiny_study_runs_every_part_and_resumes(tmp_path):
  config = config_lib.load_config(CONFIG + ':tiny', [('data.vocab_size', '128')])
  dataset = helpers.PatternDataset(vocab_size=128, num_tokens=20_000)
  workdir = str(tmp_path)
  rows = run.run_study(config, workdir, dataset=dataset, log=lambda _: None)

  table = _rows(tmp_path / 'results.csv')
  assert len(table) == len(rows)
  parts = [r['part'] for r in table]
  assert parts.count('base') == 1 and parts.count('distill') == 2
  ptq = {r['case']: r for r in table if r['part'] == 'ptq'}
  assert set(ptq) == {'int8-g16-sym', 'int4-g16-sym', 'int4-g16-asym'}
  base = next(r for r in table if r['part'] == 'base')
  for r in ptq.values():  # fewer bytes than float, and a finite perplexity
    assert int(r['param_bytes']) < int(base['param_bytes'])
    assert float(r['perplexity']) > 1
  assert int(ptq['int4-g16-sym']['param_bytes']) < int(ptq['int8-g16-sym']['param_bytes'])
  pruned = {(r['method'], r['finetuned']) for r in table if r['part'] == 'prune'}
  assert pruned == {('magnitude', 'True'), ('magnitude', 'False'), ('none', 'True')}

  md = (tmp_path / 'results.md').read_text()
  for title in ('## 1. Post-training quantization', '## 2. Pruning', '## 3. Distillation',
                '## What holds', 'int8 PTQ (groups of 16, symmetric) within 1 %',
                'distilled student beats scratch'):
    assert title in md
  for name in ('ptq.png', 'pruning.png', 'distill.png', 'environment.json'):
    assert os.path.getsize(tmp_path / name) > 0

  logs = []
  again = run.run_study(config, workdir, dataset=dataset, log=logs.append)
  assert [r['eval_loss'] for r in again] == [r['eval_loss'] for r in rows]
  assert all('done before' in line for line in logs if line.startswith('  '))
  assert not any(line.startswith('[') for line in logs)  # nothing trained, pruned or quantized


@pytest.mark.parametrize('key, value, field', [
    ('compression.ptq.bits', '(8, 3)', 'compression.ptq.bits'),
    ('compression.ptq.group_sizes', '(0, 24)', 'compression.ptq.group_sizes'),
    ('compression.ptq.layers', "'attention,conv'", 'compression.ptq.layers'),
    ('compression.prune.methods', "('magnitude', 'random')", 'compression.prune.methods'),
    ('compression.prune.sparsities', '(0.5, 1.0)', 'compression.prune.sparsities'),
    ('compression.prune.finetune_steps', '0', 'compression.prune.finetune_steps'),
    ('compression.distill.num_heads', '3', 'compression.distill.num_heads'),
    ('compression.distill.alpha', '1.5', 'compression.distill.alpha'),
])
def test_bad_values_are_config_errors_naming_the_field(key, value, field):
  config = config_lib.load_config(CONFIG, [(key, value)])
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')) as e:
    run.section(config)
  assert '\n' not in str(e.value)


def test_config_and_variant_validate():
  for spec in (CONFIG, CONFIG + ':tiny'):
    run.section(config_lib.load_config(spec))
  config = config_lib.load_config(CONFIG)
  assert len(run.ptq_cases(config.compression)) == 6
  assert len(run.prune_cases(config.compression)) == 10  # 3 x 3 + 2:4 once


def test_command_error_is_one_line_and_a_nonzero_exit(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.compression.run', f'--config={CONFIG}',
       f'--workdir={tmp_path}', '--config.compression.prune.sparsities=(0.5, 1.0)'],
      capture_output=True, text=True, env=helpers.subprocess_env(), check=False, timeout=120)
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith('error')]
  assert len(errors) == 1 and 'compression.prune.sparsities' in errors[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
