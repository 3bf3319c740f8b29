"""CLIs: fit on Epoch's CSV writes fit.json and PNGs, optimal reads it, bad input exits 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from experiments.scaling_laws import fit
from experiments.scaling_laws import laws
from experiments.scaling_laws import optimal
from tests.experiments.scaling_laws import conftest

PNGS = ('loss_vs_compute.png', 'isoflop.png', 'fitted_vs_observed.png', 'optimal_allocation.png')


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(conftest.REPO))
  return subprocess.run([sys.executable, '-m', f'experiments.scaling_laws.{module}', *args],
                        cwd=conftest.REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def epoch_run(epoch_csv, tmp_path_factory):
  out = tmp_path_factory.mktemp('fit')
  result = _run('fit', f'--data={epoch_csv}', f'--out={out}', '--bootstrap=8', '--seed=1')
  assert result.returncode == 0, result.stderr
  return out, result


def test_fit_cli_writes_fit_json_pngs_and_a_table(epoch_run):
  out, result = epoch_run
  assert 'dropping the 5 highest-loss points' in result.stdout
  content = json.loads((out / 'fit.json').read_text())
  assert content['data']['n_points'] == 240 and content['data']['dropped_highest'] == 5
  assert content['bootstrap'] == {'resamples': 8, 'seed': 1, 'ci': 0.95,
                                  'method': 'percentile, resampling points with replacement'}
  a3 = content['fits']['approach3']
  assert a3['status'] == 'ok'
  assert 1.77 <= a3['params']['E']['value'] <= 1.87
  assert 0.331 <= a3['params']['beta']['value'] <= 0.415
  lo, hi = a3['params']['a']['ci95']
  assert lo <= a3['params']['a']['value'] <= hi and lo < hi
  assert len(a3['bootstrap_samples']['alpha']) == 8
  # Every approach either fitted or says why not.
  for name in ('approach1', 'approach2', 'approach3', 'kaplan_nd', 'kaplan_n', 'kaplan_d'):
    entry = content['fits'][name]
    assert entry['status'] == 'ok' or entry['reason'], name
  row = re.search(r'^approach3\s+E\s+([\d.]+)\s+\[', result.stdout, re.M)
  assert row and float(row.group(1)) == pytest.approx(a3['params']['E']['value'], rel=1e-3)
  for name in PNGS:
    png = (out / name).read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 20_000, name


def test_optimal_cli_agrees_with_the_fit(epoch_run):
  out, _ = epoch_run
  result = _run('optimal', f'--fit={out / "fit.json"}', '--flops=5.76e23,1e24', '--approach=3')
  assert result.returncode == 0, result.stderr
  values = {k: p['value'] for k, p in
            json.loads((out / 'fit.json').read_text())['fits']['approach3']['params'].items()}
  expected = laws.Chinchilla.from_mapping(values).optimal_n(5.76e23)
  row = re.search(r'^\s*5\.76e\+23\s+([\d.e+]+) \[([\d.e+]+), ([\d.e+]+)\]', result.stdout, re.M)
  assert row, result.stdout
  n_opt, lo, hi = (float(x) for x in row.groups())
  assert n_opt == pytest.approx(expected, rel=5e-3)  # printed to 3 significant digits
  assert lo < n_opt < hi
  assert 4e10 < n_opt < 1.2e11  # Chinchilla's budget: tens of billions of parameters


def test_bad_csv_exits_2_with_one_line(tmp_path):
  bad = tmp_path / 'bad.csv'
  bad.write_text('params,tokens,lost\n1,2,3\n')
  result = _run('fit', f'--data={bad}', f'--out={tmp_path / "out"}')
  assert result.returncode == 2
  assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr
  assert result.stderr.startswith(f"error: --data={bad} has no column 'loss': expected params,")


@pytest.mark.parametrize('argv, message', [
    (['--data=nope.csv', '--out=o'], '--data=nope.csv: no such file'),
    (['--data=x.csv', '--out=o', '--approaches=2,4'], '--approaches=2,4: expected'),
    (['--data=x.csv', '--out=o', '--bootstrap=-1'], '--bootstrap=-1: must be >= 0'),
])
def test_fit_main_user_errors(argv, message, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as e:
    fit.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: {message}') and err.count('\n') == 1


def test_optimal_main_user_errors(capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    optimal.main([f'--fit={tmp_path / "fit.json"}', '--flops=1e24'])
  assert e.value.code == 2
  assert 'no such file' in capsys.readouterr().err
  (tmp_path / 'fit.json').write_text(json.dumps({'fits': {'approach2': {'status': 'skipped',
                                                                         'reason': 'x'}}}))
  with pytest.raises(SystemExit):
    optimal.main([f'--fit={tmp_path / "fit.json"}', '--flops=1e24'])
  assert 'holds no fit with a compute-optimal frontier' in capsys.readouterr().err


def test_drop_highest_defaults_to_five_only_for_the_epoch_file(epoch_csv, tmp_path):
  messages = []
  epoch = fit.load_data(str(epoch_csv), None, log=messages.append)
  assert len(epoch) == 240 and 'dropping the 5 highest-loss points' in messages[0]
  assert len(fit.load_data(str(epoch_csv), 0, log=messages.append)) == 245
  lmforge = tmp_path / 'results.csv'
  lmforge.write_text('params,tokens,loss\n1e6,2e7,4.0\n2e6,3e7,3.5\n4e6,5e7,3.1\n8e6,1e8,9.0\n')
  assert len(fit.load_data(str(lmforge), None, log=messages.append)) == 4
  assert len(messages) == 1
