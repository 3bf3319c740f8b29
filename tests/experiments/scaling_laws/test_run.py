"""Sweep runner: resumable in-process runs, results.csv, cluster commands, collect, fit."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from experiments.scaling_laws import data as data_lib
from experiments.scaling_laws import fit as fit_lib
from experiments.scaling_laws import laws
from experiments.scaling_laws import run as run_lib
from experiments.scaling_laws import sweep
from research import config_lib
from research.errors import UserError
from tests import helpers
from tests.experiments.scaling_laws import conftest

SHAKESPEARE = 'configs/experiments/scaling_laws/shakespeare_isoflop.py'


def _config(**fields):
  c = helpers.tiny_config(**{'train.log_every': 4, 'train.checkpoint_every': 4,
                             'train.async_checkpoints': False})
  c.name = 'test_run'
  defaults = dict(sizes=((32, 1, 2), (64, 1, 2)), budgets=(2e9,), min_steps=1,
                  eval_batches=2)
  defaults.update(fields)
  return sweep.with_sweep(c, **defaults)


class _Counter:
  """A trainer hook recording (run config name, step) of every step it sees."""

  def __init__(self, fail_at=None):
    self.steps, self.fail_at = [], fail_at

  def __call__(self, step, state, metrics):
    del state, metrics
    self.steps.append(step)
    if self.fail_at is not None and len(self.steps) == self.fail_at:
      raise KeyboardInterrupt('killed')


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_sweep_resumes_and_never_reruns_a_finished_run(tmp_path):
  c = _config()
  c.sweep.columns = ('eval/accuracy', 'eval/perplexity')  # collected from the final evaluation
  grid = sweep.build_grid(c)
  small, large = grid.runs
  assert small.steps > large.steps > 4
  dataset = helpers.PatternDataset()
  workdir = str(tmp_path)

  # First invocation: one run, then stop (as --max_runs=1 does).
  first = _Counter()
  rows = run_lib.run_sweep(c, workdir, dataset=dataset, max_runs=1, fit=False, hooks=(first,),
                           log=lambda _: None)
  assert [r['name'] for r in rows] == [small.name] and len(first.steps) == small.steps
  result_json = os.path.join(workdir, 'runs', small.name, 'result.json')
  mtime = os.path.getmtime(result_json)

  # Second invocation is killed in the middle of the second run, after its first checkpoint.
  killed = _Counter(fail_at=6)
  with pytest.raises(KeyboardInterrupt):
    run_lib.run_sweep(c, workdir, dataset=dataset, fit=False, hooks=(killed,), log=lambda _: None)
  assert killed.steps == [1, 2, 3, 4, 5, 6]  # the finished run was not rerun
  assert [r['name'] for r in _rows(os.path.join(workdir, 'results.csv'))] == [small.name]

  # Third invocation finishes the second run from its checkpoint at step 4.
  resumed = _Counter()
  lines = []
  rows = run_lib.run_sweep(c, workdir, dataset=dataset, fit=False, hooks=(resumed,),
                           log=lines.append)
  assert resumed.steps == list(range(5, large.steps + 1))
  assert os.path.getmtime(result_json) == mtime
  assert any('1 of 2 runs already finished' in line for line in lines)
  assert any(line.startswith(f'[2/2] {large.name}: N=') for line in lines)

  table = _rows(os.path.join(workdir, 'results.csv'))
  assert [r['name'] for r in table] == [small.name, large.name]
  assert list(table[0])[:8] == ['params', 'non_embedding_params', 'tokens', 'flops', 'loss',
                                'name', 'config', 'wall_time_s']
  for row, run in zip(table, grid.runs):
    assert int(row['params']) == run.params and int(row['tokens']) == run.tokens
    assert float(row['flops']) == pytest.approx(run.flops)
    assert int(row['non_embedding_params']) == run.non_embedding_params
    assert np.isfinite(float(row['loss'])) and float(row['loss']) > 0
    assert float(row['wall_time_s']) > 0
    assert row['config'] == f'test_run/{run.name}'
  # The logged final validation loss is the one recorded, and the collected metric columns too.
  for row, run in zip(table, grid.runs):
    final = run_lib.final_eval_metrics(os.path.join(workdir, 'runs', run.name), run.steps)
    assert float(row['loss']) == pytest.approx(final['eval/loss'])
    assert float(row['eval/accuracy']) == pytest.approx(final['eval/accuracy'])
    assert float(row['eval/perplexity']) == pytest.approx(np.exp(float(row['loss'])), rel=1e-5)

  # Nothing left: a fourth invocation trains nothing.
  idle = _Counter()
  run_lib.run_sweep(c, workdir, dataset=dataset, fit=False, hooks=(idle,), log=lambda _: None)
  assert idle.steps == []

  # Killed after training but before its row was written, with no final evaluation logged: the
  # run is not retrained; its last checkpoint is evaluated instead.
  small_dir = os.path.join(workdir, 'runs', small.name)
  os.remove(os.path.join(small_dir, 'result.json'))
  os.remove(os.path.join(workdir, 'results.csv'))
  with open(os.path.join(small_dir, 'metrics.jsonl')) as f:
    kept = [line for line in f if 'eval/loss' not in line]
  with open(os.path.join(small_dir, 'metrics.jsonl'), 'w') as f:
    f.writelines(kept)
  again = _Counter()
  rows = run_lib.run_sweep(c, workdir, dataset=dataset, fit=False, hooks=(again,),
                           log=lambda _: None)
  assert again.steps == []
  assert float(rows[0]['loss']) == pytest.approx(float(table[0]['loss']), rel=1e-5)


def test_a_row_in_results_csv_alone_marks_a_run_finished(tmp_path):
  c = _config(sizes=((32, 1, 2),))
  run = sweep.build_grid(c).runs[0]
  grid = sweep.build_grid(c)
  run_lib.write_results(str(tmp_path), grid, {run.name: run_lib.result_row(run, 'x', 3.0, 1.0)})
  idle = _Counter()
  rows = run_lib.run_sweep(c, str(tmp_path), dataset=helpers.PatternDataset(), fit=False,
                           hooks=(idle,), log=lambda _: None)
  assert idle.steps == [] and float(rows[0]['loss']) == 3.0


def test_commands_mode_writes_one_research_train_command_per_run(tmp_path):
  spec = str(conftest.REPO / SHAKESPEARE)
  config = config_lib.load_config(spec, [('train.batch_size', '32')])
  grid = sweep.build_grid(config)
  path = run_lib.write_commands(config, str(tmp_path), spec, [('train.batch_size', '32')],
                                log=lambda _: None)
  lines = open(path).read().splitlines()
  commands = [line for line in lines if line and not line.startswith('#')]
  assert len(commands) == len(grid.runs) >= 10
  assert any('--mode=collect' in line for line in lines if line.startswith('#'))
  for command, run in zip(commands, grid.runs):
    argv = shlex.split(command)
    assert argv[:4] == ['python', '-m', 'research.train', f'--config={spec}']
    assert argv[-1] == f'--workdir={os.path.join(str(tmp_path), "runs", run.name)}'
    # What research.train will build from the command is exactly the sweep's run config.
    got_spec, overrides, rest = config_lib.split_config_args(argv[3:])
    assert rest == [argv[-1]]
    built = config_lib.load_config(got_spec, overrides)
    assert built.to_dict() == sweep.run_config(config, run).to_dict()
    assert built.train.batch_size == 32


def test_collect_reads_final_losses_from_metrics_jsonl(tmp_path):
  c = _config()
  grid = sweep.build_grid(c)
  done, pending = grid.runs
  directory = tmp_path / 'runs' / done.name
  directory.mkdir(parents=True)
  entries = [{'step': 4, 'train/loss': 4.0, 'train/tokens_per_sec': 1000.0},
             {'step': done.steps, 'train/loss': 3.5, 'train/tokens_per_sec': 2000.0},
             {'step': done.steps, 'eval/loss': 3.25}]
  (directory / 'metrics.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in entries))
  (directory / 'config.json').write_text(json.dumps({'name': f'test_run/{done.name}'}))
  (tmp_path / 'runs' / pending.name).mkdir()
  lines = []
  rows = run_lib.collect(c, str(tmp_path), fit=False, log=lines.append)
  assert [r['name'] for r in rows] == [done.name]
  assert rows[0]['loss'] == 3.25
  expected = 4 * 512 / 1000 + (done.steps - 4) * 512 / 2000
  assert rows[0]['wall_time_s'] == pytest.approx(expected, abs=0.01)
  assert any(f'unfinished (1): {pending.name}' in line for line in lines)
  assert [r['name'] for r in _rows(tmp_path / 'results.csv')] == [done.name]


def test_results_csv_round_trips_through_the_loader_into_the_fit(tmp_path):
  """Losses from a known Chinchilla law on a real sweep grid: Approach 2 finds its exponents."""
  spec = str(conftest.REPO / SHAKESPEARE)
  config = config_lib.load_config(spec, [('sweep.budgets', '(3e11, 3e12, 3e13)'),
                                         ('sweep.min_steps', '1'),
                                         ('sweep.min_tokens_per_param', '0'),
                                         ('sweep.max_tokens_per_param', '0')])
  sizes = tuple((d, 2, 2) for d in (16, 24, 32, 48, 64, 96, 128))
  config.sweep.sizes = sizes
  grid = sweep.build_grid(config)
  truth = laws.Chinchilla(E=1.5, A=100.0, B=440.0, alpha=0.35, beta=0.35)
  # A downstream metric collected as a column: an accuracy whose error rate follows its own law.
  error = laws.Chinchilla(E=0.2, A=30.0, B=90.0, alpha=0.3, beta=0.4)
  column = 'eval/few_shot/accuracy'
  rows = {r.name: run_lib.result_row(
      r, f'x/{r.name}', float(truth.loss(r.params, r.tokens)), 1.0,
      {column: 1.0 - float(error.loss(r.params, r.tokens))}, (column,)) for r in grid.runs}
  path = run_lib.write_results(str(tmp_path), grid, rows, (column,))
  downstream = data_lib.read_csv(path, target=f'1-{column}')
  np.testing.assert_allclose(downstream.L, [error.loss(r.params, r.tokens) for r in grid.runs])
  assert fit_lib.fit_all(downstream, ['3'], bootstrap=0)['approach3'].values['alpha'] == (
      pytest.approx(0.3, abs=0.02))
  with pytest.raises(UserError, match="no column 'eval/bpb'.*eval/few_shot/accuracy"):
    data_lib.read_csv(path, target='eval/bpb')
  data = data_lib.read_csv(path)
  assert len(data) == len(grid.runs) == 21
  np.testing.assert_allclose(data.N, [r.params for r in grid.runs])
  np.testing.assert_allclose(data.C, [r.flops for r in grid.runs])
  results = fit_lib.fit_all(data, ['2', '3'], bootstrap=0)
  assert len(results['approach2'].extra['groups']) == 3
  assert results['approach3'].values['alpha'] == pytest.approx(0.35, abs=0.02)
  assert results['approach2'].values['a'] == pytest.approx(0.5, abs=0.1)
  kaplan = data_lib.read_csv(path, params_column='non_embedding_params')
  np.testing.assert_allclose(kaplan.N, [r.non_embedding_params for r in grid.runs])
  # The runner's own fit step writes fit.json and the plots into WORKDIR/fit.
  config.sweep.fit_approaches = '2,3'
  run_lib.fit_results(config, str(tmp_path), bootstrap=0, log=lambda _: None)
  assert json.loads((tmp_path / 'fit' / 'fit.json').read_text())['fits']['approach2'][
      'status'] == 'ok'
  assert (tmp_path / 'fit' / 'isoflop.png').exists()


def test_cli_commands_mode(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(conftest.REPO))
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.scaling_laws.run', f'--config={SHAKESPEARE}:tiny',
       f'--workdir={tmp_path}', '--mode=commands'],
      cwd=conftest.REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert 'wrote 4 commands' in result.stdout
  lines = (tmp_path / 'commands.sh').read_text().splitlines()
  assert len([line for line in lines if line.startswith('python -m research.train')]) == 4
  bad = subprocess.run(
      [sys.executable, '-m', 'experiments.scaling_laws.run', '--config=configs/decoder/'
       'shakespeare.py', f'--workdir={tmp_path}', '--mode=commands'],
      cwd=conftest.REPO, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and 'no `sweep` section' in bad.stderr


@pytest.mark.slow
def test_cli_run_mode_on_shakespeare_tiny(tmp_path):
  """The researcher's command, on the `:tiny` grid: two runs now (--max_runs), not fitting."""
  # One CPU device, as on the researcher's machine.
  env = helpers.subprocess_env(PYTHONPATH=str(conftest.REPO))
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.scaling_laws.run', f'--config={SHAKESPEARE}:tiny',
       f'--workdir={tmp_path}', '--max_runs=2', '--nofit'],
      cwd=conftest.REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '[1/4] d16_l1_C1e9: N=' in result.stdout
  assert 'stopping after 2 runs' in result.stdout
  rows = _rows(tmp_path / 'results.csv')
  assert [r['name'] for r in rows] == ['d16_l1_C1e9', 'd32_l1_C1e9']
  assert (tmp_path / 'runs' / 'd16_l1_C1e9' / 'tokenizer.model').exists()


def test_a_diverged_run_is_a_result_with_keep_diverged(tmp_path, monkeypatch):
  """A learning-rate sweep expects runs to diverge: with keep_diverged such a run finishes
  with loss nan (and is not retrained); by default the sweep stops with the error."""
  from research.training import guards, trainer  # pylint: disable=g-import-not-at-top

  def diverge(config, workdir, **kwargs):
    del config, workdir, kwargs
    raise guards.Diverged('step 3: loss nan (train.on_nonfinite=stop)')

  monkeypatch.setattr(trainer, 'train', diverge)
  c = _config(sizes=((32, 1, 2),))
  kwargs = dict(dataset=helpers.PatternDataset(), fit=False, log=lambda _: None)
  with pytest.raises(guards.Diverged):
    run_lib.run_sweep(c, str(tmp_path), **kwargs)
  rows = run_lib.run_sweep(c, str(tmp_path), keep_diverged=True, **kwargs)
  assert len(rows) == 1 and np.isnan(rows[0]['loss'])
  assert _rows(tmp_path / 'results.csv')[0]['loss'] == 'nan'
  monkeypatch.setattr(trainer, 'train', None)  # a finished run is never trained again
  assert np.isnan(run_lib.run_sweep(c, str(tmp_path), **kwargs)[0]['loss'])
