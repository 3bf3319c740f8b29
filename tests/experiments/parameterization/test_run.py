"""The learning-rate transfer study: a smoke run that resumes, and the lr* fit."""

import csv
import json
import math
import os

import jax
import numpy as np
import pytest

from experiments.parameterization import run
from experiments.scaling_laws import sweep
from research import config_lib
from research.errors import ConfigError
from tests import helpers

CONFIG = 'configs/experiments/parameterization/lr_transfer.py'


def _tiny():
  """The ':tiny' variant on a 128-id pattern corpus: widths 16 and 32 x lrs 3e-3 and 3e-2."""
  c = config_lib.load_config(CONFIG + ':tiny')
  c.data.vocab_size = 128
  return c


class _Steps:
  """A trainer hook counting the steps it sees."""

  def __init__(self):
    self.count = 0

  def __call__(self, step, state, metrics):
    del step, state, metrics
    self.count += 1


def _csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_smoke_run_resumes_and_writes_table_fit_and_figure(tmp_path):
  c, workdir = _tiny(), str(tmp_path)
  steps = c.sweep.tokens[0] // (c.train.batch_size * c.data.seq_len)
  kwargs = dict(dataset=helpers.PatternDataset(vocab_size=128), devices=jax.devices()[:1],
                log=lambda _: None)
  # A first invocation trains sp's four runs (and stops there, as an interrupted study would).
  c.study.parameterizations = ('sp',)
  first = _Steps()
  run.run_study(c, workdir, hooks=(first,), plot=False, **kwargs)
  assert first.count == 4 * steps
  # The whole study: sp's finished runs are skipped, only mup's four train.
  c.study.parameterizations = ('sp', 'mup')
  again = _Steps()
  result = run.run_study(c, workdir, hooks=(again,), **kwargs)
  assert again.count == 4 * steps

  rows = _csv(tmp_path / 'results.csv')
  assert len(rows) == len(result['rows']) == 8
  assert {(r['parameterization'], r['d_model'], float(r['lr'])) for r in rows} == {
      (p, w, lr) for p in ('sp', 'mup') for w in ('16', '32') for lr in (3e-3, 3e-2)}
  assert all(math.isfinite(float(r['loss'])) and r['diverged'] == 'False' for r in rows)
  # At the base width (16) μP is SP: the same losses.
  loss = {(r['parameterization'], r['d_model'], r['lr']): float(r['loss']) for r in rows}
  for lr in ('0.003', '0.03'):
    assert loss[('mup', '16', lr)] == pytest.approx(loss[('sp', '16', lr)], rel=1e-6)
  document = json.loads((tmp_path / 'results.json').read_text())
  assert len(document['rows']) == 8 and set(document['drift']) == {'sp', 'mup'}
  assert len(_csv(tmp_path / 'lr_star.csv')) == len(document['lr_star']) == 4
  assert os.path.getsize(tmp_path / 'lr_transfer.png') > 10_000


def test_fit_recovers_a_parabolas_optimum_and_ignores_diverged_runs():
  lrs = 1e-3 * 10 ** (np.arange(7) / 3)
  rows = []
  for width in (32, 64, 128, 256):
    optimum = 1e-2 * (width / 32) ** -1.2  # lr* ~ width^-1.2, off the grid's points
    losses = 3 + 0.4 * np.log10(lrs / optimum) ** 2
    losses[-2:] = (math.nan, math.inf)  # diverged: NaN or inf, never a point of a fit
    rows += [dict(parameterization='sp', d_model=width, lr=lr, loss=loss)
             for lr, loss in zip(lrs, losses)]
  fits = run.fit_all(rows)
  by_width = {f['d_model']: f for f in fits['lr_star']}
  for width in (32, 64, 128):
    assert by_width[width]['lr_star'] == pytest.approx(1e-2 * (width / 32) ** -1.2, rel=1e-6)
    assert by_width[width]['bracketed'] and by_width[width]['points'] == 3
  assert not by_width[256]['bracketed']  # 8.2e-4 is below the grid: the edge, not a fit
  assert by_width[256]['lr_star'] == pytest.approx(1e-3)
  assert fits['drift']['sp']['slope'] == pytest.approx(-1.2, abs=1e-6)
  assert fits['drift']['sp']['widths'] == 3
  # Falling until the runs diverge: the best finite point, not bracketed by a finite loss.
  falling = run.fit_lr_star(lrs, [5.0, 4.0, 3.0, 2.0, 1.0, math.nan, math.nan])
  assert falling['lr_star'] == lrs[4] and not falling['bracketed']


def test_study_sections_are_checked():
  c = _tiny()
  c.sweep.parameterization = 'mup'
  with pytest.raises(ConfigError, match='study.parameterizations chooses it'):
    run.check_section(c)
  c = _tiny()
  with pytest.raises(ConfigError, match='unknown field'):
    run.with_section(c, widths=(1, 2))


@pytest.mark.parametrize('path, runs', [(CONFIG, 35),
                                        ('configs/experiments/parameterization/pod.py', 50)])
def test_configs_sweep_5_widths_over_8x_and_7_rates_over_2_decades(path, runs):
  c = config_lib.load_config(path)
  run.check_section(c)
  widths = sorted(size[0] for size in c.sweep.sizes)
  lrs = sorted(c.sweep.lr_grid)
  assert len(widths) >= 5 and widths[-1] / widths[0] >= 8
  assert len(lrs) >= 7 and lrs[-1] / lrs[0] >= 100 * (1 - 1e-9)
  assert c.study.parameterizations == ('sp', 'mup') and c.sweep.base_width == widths[0]
  for name in c.study.parameterizations:
    grid = sweep.build_grid(run.sweep_config(c, name))
    assert len(grid.runs) == runs and len({r.steps for r in grid.runs}) == 1
