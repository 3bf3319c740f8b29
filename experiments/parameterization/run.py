r"""Learning-rate transfer study: final validation loss over learning rate x width, per
parameterization, and the optimal learning rate's drift with width (Yang et al. 2022, Figure 1).

    python -m experiments.parameterization.run --workdir=runs/lr_transfer \
        [--config=configs/experiments/parameterization/lr_transfer.py[:tiny]]

The config is a scaling-law sweep config (experiments/scaling_laws/sweep.py) whose `sweep`
section gives the widths (`sizes`), one token budget (`tokens`), the learning rates (`lr_grid`)
and `base_width`, plus a `study` section naming the parameterizations. Each parameterization is
one sweep (`sweep.parameterization` set to it) trained by the scaling-law runner
(experiments.scaling_laws.run.run_sweep) in WORKDIR/<parameterization>: every
(width, learning rate) run has its own directory and result.json, a rerun skips finished runs
and resumes an interrupted one from its checkpoint, and each run prints a progress line with the
sweep's ETA. A run stopped by non-finite steps is finished with loss nan: it diverged.

Then, in WORKDIR:
* results.csv and results.json: one row per run (parameterization, d_model, lr, loss, diverged,
  ...); in results.json a diverged run's loss is null.
* lr_star.csv and results.json's `lr_star`: per (parameterization, width) the optimal learning
  rate lr*, from a parabola in log10(lr) through the finite loss curve's minimum and its
  neighbours (`bracketed` false when no finite loss lies on one side of the minimum, at the
  grid's edge or before diverged runs: lr* is then that point, left out of the drift); and
  results.json's `drift` per parameterization: the least-squares slope of log2 lr* against
  log2 width (lr* ~ width^slope; 0: the optimum holds still) and the ratio of lr* at the widest
  to the narrowest width.
* lr_transfer.png: one panel of loss against learning rate per parameterization, one curve per
  width, lr* marked, diverged runs as crosses on the top edge (out of the fits); a last panel
  with lr* against width.
`run_study(config, workdir)` is the importable whole.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags

from experiments.parameterization import plot as plot_lib
from experiments.scaling_laws import run as sweep_run
from experiments.scaling_laws import sweep as sweep_lib
from research import config_lib
from research.errors import ConfigError

FLAGS = flags.FLAGS
DEFAULT_CONFIG = 'configs/experiments/parameterization/lr_transfer.py'
COLUMNS = ('parameterization', 'd_model', 'lr', 'loss', 'diverged', 'params', 'steps', 'tokens',
           'wall_time_s', 'name')
FIT_COLUMNS = ('parameterization', 'd_model', 'lr_star', 'loss_star', 'bracketed', 'points')


def define_flags() -> None:
  flags.DEFINE_string('workdir', 'runs/lr_transfer', 'study directory: one sweep per '
                      'parameterization, results.csv/json, lr_star.csv, lr_transfer.png')


def default_section() -> ml_collections.ConfigDict:
  """Every field of `config.study`, with its default."""
  s = ml_collections.ConfigDict()
  s.parameterizations = ('sp', 'mup')  # one sweep, one curve panel each
  s.fit_neighbours = 1  # grid points each side of a curve's minimum in its parabola
  return s


def with_section(c: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
  """Adds `study` (defaults overridden by `values`) to sweep config `c`."""
  return config_lib.add_section(c, 'study', default_section(), values)


def check_section(config) -> ml_collections.ConfigDict:
  if 'study' not in config:
    raise ConfigError('--config', config.name, f'has no study section: use {DEFAULT_CONFIG}')
  sweep_lib.sweep_section(config)
  if len(config.sweep.lr_grid) < 2:
    raise ConfigError('sweep.lr_grid', config.sweep.lr_grid, 'give two or more learning rates')
  if config.sweep.parameterization:
    raise ConfigError('sweep.parameterization', config.sweep.parameterization,
                      'leave it unset: study.parameterizations chooses it per sweep')
  if not config.study.parameterizations:
    raise ConfigError('study.parameterizations', (), "give one or more, e.g. ('sp', 'mup')")
  if config.study.fit_neighbours < 1:
    raise ConfigError('study.fit_neighbours', config.study.fit_neighbours, 'at least 1')
  return config.study


def sweep_config(config, parameterization: str) -> ml_collections.ConfigDict:
  """The study's sweep for one parameterization (runs named by width and learning rate)."""
  c = copy.deepcopy(config)
  del c['study']
  c.name = f'{config.name}/{parameterization}'
  c.sweep.parameterization = parameterization
  return c


# The fit: lr* per width, and its drift.


def fit_lr_star(lrs: Sequence[float], losses: Sequence[float], neighbours: int = 1) -> dict:
  """lr* of one loss-vs-learning-rate curve: the vertex of a parabola in log10(lr) through the
  lowest finite loss and up to `neighbours` finite grid points each side of it. Non-finite
  losses (diverged runs) are left out. The vertex is kept inside the fitted points. With no
  finite loss on one side of the lowest (the grid's edge, or only diverged runs beyond it), or
  no curvature, lr* is the lowest point's rate and `bracketed` is false."""
  points = sorted((float(lr), float(loss)) for lr, loss in zip(lrs, losses)
                  if math.isfinite(float(loss)))
  if not points:
    return dict(lr_star=math.nan, loss_star=math.nan, bracketed=False, points=0)
  i = min(range(len(points)), key=lambda k: points[k][1])
  window = points[max(0, i - neighbours):i + neighbours + 1]
  x = np.log10([lr for lr, _ in window])
  y = np.array([loss for _, loss in window])
  bracketed = 0 < i < len(points) - 1
  best = dict(lr_star=points[i][0], loss_star=points[i][1], bracketed=bracketed,
              points=len(window))
  if not bracketed or len(window) < 3:
    return best
  a, b, c = np.polyfit(x, y, 2)
  if a <= 0:
    return best
  x_star = float(np.clip(-b / (2 * a), x[0], x[-1]))
  return dict(best, lr_star=float(10 ** x_star), loss_star=float(np.polyval([a, b, c], x_star)))


def drift(fits: Sequence[dict]) -> dict:
  """Slope of log2 lr* against log2 width over the bracketed optima (lr* ~ width^slope), and
  lr* at the widest over the narrowest of them."""
  used = sorted((f['d_model'], f['lr_star']) for f in fits if f['bracketed'])
  if len(used) < 2:
    return dict(slope=math.nan, ratio=math.nan, widths=len(used))
  x, y = np.log2([w for w, _ in used]), np.log2([lr for _, lr in used])
  return dict(slope=float(np.polyfit(x, y, 1)[0]), ratio=float(used[-1][1] / used[0][1]),
              widths=len(used))


def fit_all(rows: Sequence[dict], neighbours: int = 1) -> dict:
  """{'lr_star': [one fit row per (parameterization, width)], 'drift': {parameterization: ..}}."""
  fits, drifts = [], {}
  for name in dict.fromkeys(r['parameterization'] for r in rows):
    mine = [r for r in rows if r['parameterization'] == name]
    per_width = []
    for width in sorted({r['d_model'] for r in mine}):
      curve = [r for r in mine if r['d_model'] == width]
      fit = fit_lr_star([r['lr'] for r in curve], [r['loss'] for r in curve], neighbours)
      per_width.append(dict(parameterization=name, d_model=width, **fit))
    fits += per_width
    drifts[name] = drift(per_width)
  return {'lr_star': fits, 'drift': drifts}


# Results.


def study_row(parameterization: str, row: dict) -> dict:
  """A sweep's results row (typed, or text from its results.csv) as the study's row."""
  loss = float(row['loss'])
  wall = row.get('wall_time_s')
  return dict(parameterization=parameterization, d_model=int(row['d_model']),
              lr=float(row['lr']), loss=loss, diverged=not math.isfinite(loss),
              params=int(row['params']), steps=int(row['steps']), tokens=int(row['tokens']),
              wall_time_s=float(wall) if wall not in (None, '') else None, name=row['name'])


def _json_number(x):
  return x if not isinstance(x, float) or math.isfinite(x) else None


def write_results(rows: Sequence[dict], fits: dict, workdir: str) -> dict[str, str]:
  """results.csv, lr_star.csv and results.json (rows, lr* per width, drifts) in `workdir`."""
  paths = {name: os.path.join(workdir, name)
           for name in ('results.csv', 'lr_star.csv', 'results.json')}
  for name, columns, table in (('results.csv', COLUMNS, rows),
                               ('lr_star.csv', FIT_COLUMNS, fits['lr_star'])):
    with open(paths[name], 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=columns)
      writer.writeheader()
      writer.writerows(table)
  clean = lambda table: [{k: _json_number(v) for k, v in r.items()} for r in table]
  document = {'rows': clean(rows), 'lr_star': clean(fits['lr_star']),
              'drift': {k: clean([v])[0] for k, v in fits['drift'].items()}}
  with open(paths['results.json'], 'w') as f:
    json.dump(document, f, indent=1)
  return paths


def _load_dataset_if_needed(config, workdir: str, grids: dict):
  """The corpus, loaded once for every sweep (one tokenizer), and only if a run is unfinished."""
  for name, grid in grids.items():
    if len(sweep_run.finished_rows(os.path.join(workdir, name), grid)) < len(grid.runs):
      from research.data import pipeline  # pylint: disable=g-import-not-at-top
      return pipeline.load_dataset(config.data, workdir=workdir)
  return None


def run_study(config, workdir: str, *, dataset=None, devices=None, hooks: Sequence[Callable] = (),
              plot: bool = True, log: Callable[[str], None] = print) -> dict:
  """Trains every unfinished run, then writes the tables, the fit and the figure into
  `workdir`. Returns {'rows', 'lr_star', 'drift', 'files'}; `dataset`, `devices` and `hooks`
  go to the sweep runner (and from it to each run's trainer)."""
  s = check_section(config)
  os.makedirs(workdir, exist_ok=True)
  configs = {name: sweep_config(config, name) for name in s.parameterizations}
  grids = {name: sweep_lib.build_grid(c) for name, c in configs.items()}
  if dataset is None:
    dataset = _load_dataset_if_needed(config, workdir, grids)
  rows = []
  for k, name in enumerate(s.parameterizations):
    log(f'parameterization {name} ({k + 1} of {len(s.parameterizations)}): '
        f'{len(grids[name].runs)} runs')
    finished = sweep_run.run_sweep(configs[name], os.path.join(workdir, name), dataset=dataset,
                                   devices=devices, fit=False, hooks=hooks, keep_diverged=True,
                                   log=log)
    rows += [study_row(name, r) for r in finished]
    if len(finished) < len(grids[name].runs):  # stopped (SIGTERM): tables of what is done
      log('the study is unfinished: rerun the same command to continue')
      break
  fits = fit_all(rows, s.fit_neighbours)
  if jax.process_index() != 0:  # every host ran the sweeps; one writes the results
    return {'rows': rows, **fits, 'files': {}}
  files = write_results(rows, fits, workdir)
  if plot:
    files['png'] = plot_lib.lr_transfer_png(rows, fits, config.sweep.base_width,
                                            os.path.join(workdir, 'lr_transfer.png'))
  for line in summary(fits):
    log(line)
  return {'rows': rows, **fits, 'files': files}


def summary(fits: dict) -> list[str]:
  """lr* per width and the drift, one line per parameterization."""
  lines = []
  for name, d in fits['drift'].items():
    optima = ', '.join(f"{f['d_model']}: {f['lr_star']:.3g}" + ('' if f['bracketed'] else '?')
                       for f in fits['lr_star'] if f['parameterization'] == name)
    edge = ' (? = at the grid edge)' if '?' in optima else ''
    lines.append(f'{name}: lr* by width {optima}{edge}; {plot_lib.drift_text(d)}')
  return lines


def main(config, argv):
  del argv
  if config is None:
    config = config_lib.load_config(DEFAULT_CONFIG)
  result = run_study(config, FLAGS.workdir)
  print(f"wrote {', '.join(result['files'].values())}")


if __name__ == '__main__':
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run_with_config(main, config_required=False)
