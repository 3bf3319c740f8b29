r"""Runs a scaling-law sweep: every (model size, budget) run of a sweep config, then the fit.

    python -m experiments.scaling_laws.run \
        --config=configs/experiments/scaling_laws/shakespeare_isoflop.py --workdir=runs/scaling \
        [--mode=run|commands|collect] [--nofit] [--max_runs=K] [--config.sweep.budgets=...]

The grid and the per-size recipes come from the config's `sweep` section
(experiments/scaling_laws/sweep.py documents it). Modes:

* `run` (default): trains the runs one after another in this process, each in
  WORKDIR/runs/NAME with `research.training.trainer.train` (so each checkpoints and resumes),
  on one dataset (and one tokenizer, WORKDIR/tokenizer.model) loaded once. A finished run is
  never rerun: it has WORKDIR/runs/NAME/result.json, or a row in results.csv. A killed sweep
  continues where it stopped (the interrupted run resumes from its last checkpoint). After each
  run WORKDIR/results.csv is rewritten atomically; after the grid, the fit and its plots go to
  WORKDIR/fit (unless --nofit). SIGTERM stops the sweep after the current run saved a checkpoint.
* `commands`: writes WORKDIR/commands.sh, one `python -m research.train` command per run (the
  sweep config plus that run's `--config.*` overrides and --workdir), for a cluster scheduler
  (e.g. line $SLURM_ARRAY_TASK_ID, or `xargs -P`).
* `collect`: after the commands ran, reads each run's final validation loss from its
  metrics.jsonl and writes results.csv (and the fit, unless --nofit). Wall time there is the sum
  of the logged training intervals (no compilation or evaluation time).

results.csv has one row per finished run, in grid order: `params`, `non_embedding_params`,
`tokens`, `flops` (the trainer's per-architecture FLOPs per step x steps), `loss` (final
validation loss, nats/token), `name`, `config` (the run's config name), `wall_time_s`, then the
budget, steps and recipe, then one column per `sweep.columns` metric (e.g. `eval/bpb`, or
`eval/few_shot/accuracy` of an `eval.during_training` task), read from the same final evaluation.
It is what `python -m experiments.scaling_laws.fit --data=... [--target=COLUMN]` reads.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import sys
import time
from typing import Callable, Sequence

from absl import flags

from experiments.scaling_laws import sweep as sweep_lib
from research.errors import UserError

RESULT_FILE = 'result.json'
WALL_TIME_FILE = 'wall_time.json'
RESULTS_CSV = 'results.csv'
COMMANDS_FILE = 'commands.sh'
COLUMNS = ('params', 'non_embedding_params', 'tokens', 'flops', 'loss', 'name', 'config',
           'wall_time_s', 'budget', 'budget_kind', 'steps', 'd_model', 'num_layers', 'num_heads',
           'd_ff', 'lr', 'warmup_steps', 'flops_6nd')
MODES = ('run', 'commands', 'collect')

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined only when run as a command (research.train also has --workdir,
  and tests import both)."""
  flags.DEFINE_string('workdir', None, 'sweep directory: runs/, results.csv, fit/')
  flags.DEFINE_enum('mode', 'run', MODES, 'run the grid here, write cluster commands, or '
                    'collect the results of commands that ran elsewhere')
  flags.DEFINE_boolean('fit', True, 'fit scaling laws and plot into WORKDIR/fit at the end')
  flags.DEFINE_integer('max_runs', None, 'train at most this many unfinished runs, then stop '
                       '(the rest run on the next invocation)')


def run_dir(workdir: str, run: sweep_lib.SweepRun) -> str:
  return os.path.join(workdir, 'runs', run.name)


# Results: one result.json per finished run, results.csv rebuilt from them.


def result_row(run: sweep_lib.SweepRun, config_name: str, loss: float,
               wall_time_s: float | None, metrics: dict | None = None,
               columns: Sequence[str] = ()) -> dict:
  """The run's results.csv row; `columns` are read from its final evaluation `metrics`."""
  return {**{c: (metrics or {}).get(c) for c in columns},
          'params': run.params, 'non_embedding_params': run.non_embedding_params,
          'tokens': run.tokens, 'flops': run.flops, 'loss': loss, 'name': run.name,
          'config': config_name,
          'wall_time_s': None if wall_time_s is None else round(wall_time_s, 2),
          'budget': run.budget, 'budget_kind': run.budget_kind, 'steps': run.steps,
          'd_model': run.size.d_model, 'num_layers': run.size.num_layers,
          'num_heads': run.size.num_heads, 'd_ff': run.d_ff, 'lr': run.lr,
          'warmup_steps': run.warmup_steps, 'flops_6nd': run.flops_6nd}


def _atomic_write(path: str, text: str) -> None:
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', newline='') as f:
    f.write(text)
  os.replace(tmp, path)


def _write_json(path: str, value) -> None:
  _atomic_write(path, json.dumps(value, indent=1, sort_keys=True) + '\n')


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def read_results_csv(path: str) -> dict[str, dict]:
  """Rows of an existing results.csv by run name (empty when there is none)."""
  if not os.path.exists(path):
    return {}
  with open(path, newline='') as f:
    return {row['name']: row for row in csv.DictReader(f) if row.get('name')}


def _csv_value(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return 'nan' if math.isnan(value) else repr(value)
  return str(value)


def finished_rows(workdir: str, grid: sweep_lib.Grid) -> dict[str, dict]:
  """Finished runs of the grid by name: result.json in the run's directory, else results.csv."""
  in_csv = read_results_csv(os.path.join(workdir, RESULTS_CSV))
  rows = {}
  for run in grid.runs:
    result = _read_json(os.path.join(run_dir(workdir, run), RESULT_FILE))
    if result is not None:
      rows[run.name] = result['row']
    elif run.name in in_csv:
      rows[run.name] = in_csv[run.name]
  return rows


def write_results(workdir: str, grid: sweep_lib.Grid, rows: dict[str, dict],
                  columns: Sequence[str] = ()) -> str:
  """Rewrites WORKDIR/results.csv atomically: the finished runs, in grid order, with the
  metric `columns` (sweep.columns) after the standard ones."""
  header = COLUMNS + tuple(c for c in columns if c not in COLUMNS)
  lines = [','.join(header)]
  for run in grid.runs:
    if run.name in rows:
      lines.append(','.join(_csv_value(rows[run.name].get(c)) for c in header))
  path = os.path.join(workdir, RESULTS_CSV)
  _atomic_write(path, '\n'.join(lines) + '\n')
  return path


def _mark_finished(workdir: str, run: sweep_lib.SweepRun, row: dict) -> None:
  _write_json(os.path.join(run_dir(workdir, run), RESULT_FILE),
              {'row': row, 'overrides': [[k, v] for k, v in run.overrides]})


def _check_recipe(workdir: str, run: sweep_lib.SweepRun, log: Callable) -> None:
  result = _read_json(os.path.join(run_dir(workdir, run), RESULT_FILE))
  if result and [tuple(o) for o in result.get('overrides', [])] != list(run.overrides):
    log(f'warning: {run.name} finished with another recipe than the config gives now; delete '
        f'{run_dir(workdir, run)} (and its results.csv row) to rerun it')


# Mode `run`.


def _format_seconds(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


class _WallClock:
  """A hook that keeps a run's accumulated wall time in its directory, across resumptions."""

  def __init__(self, path: str, every: int):
    self.path, self.every = path, max(1, every)
    self.before = float((_read_json(path) or {}).get('seconds', 0.0))
    self.start = time.perf_counter()

  def seconds(self) -> float:
    return self.before + time.perf_counter() - self.start

  def save(self) -> None:
    _write_json(self.path, {'seconds': round(self.seconds(), 3)})

  def __call__(self, step, state, metrics) -> None:
    del state, metrics
    if step % self.every == 0:
      self.save()


def final_eval_metrics(run_directory: str, steps: int) -> dict[str, float]:
  """The evaluation metrics (eval/*) logged at the run's last step, from its metrics.jsonl
  ({} if none)."""
  path = os.path.join(run_directory, 'metrics.jsonl')
  if not os.path.exists(path):
    return {}
  metrics = {}
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a kill
      if entry.get('step') == steps:
        metrics.update({k: float(v) for k, v in entry.items()
                        if k.startswith('eval/') and v is not None})
  return metrics


def logged_train_seconds(run_directory: str, tokens_per_step: int) -> float | None:
  """Training time summed over metrics.jsonl's logged intervals (tokens / tokens per second)."""
  path = os.path.join(run_directory, 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  seconds, last_step = 0.0, 0
  with open(path) as f:
    for line in f:
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:
        continue
      rate = entry.get('train/tokens_per_sec')
      if rate:
        step = int(entry['step'])
        if step > last_step:
          seconds += (step - last_step) * tokens_per_step / rate
          last_step = step
  return seconds or None


def _warn_missing(name: str, row: dict, columns: Sequence[str], log: Callable) -> None:
  absent = [c for c in columns if row.get(c) is None]
  if absent:
    log(f'warning: {name} logged no {", ".join(absent)} at its last step (sweep.columns): '
        'check eval.during_training; the cells stay empty')


def _evaluate_checkpoint(config, directory: str, dataset) -> float:
  """Final loss of a run whose training finished but whose last evaluation was not logged."""
  import research  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  lm = research.load(directory)
  return trainer.evaluate(lm.run, lm.params, dataset, num_batches=config.train.eval_batches,
                          model_state=lm.model_state)['eval/loss']


def run_sweep(config, workdir: str, *, dataset=None, devices=None, max_runs: int | None = None,
              fit: bool = True, bootstrap: int | None = None, hooks: Sequence[Callable] = (),
              keep_diverged: bool = False, log: Callable[[str], None] = print) -> list[dict]:
  """Trains every unfinished run of `config`'s grid in turn; returns the finished rows.

  `dataset` (default: `config.data` loaded once, its tokenizer kept in WORKDIR) serves every run.
  `hooks` go to each run's trainer. `max_runs` stops after that many runs were trained here.
  `keep_diverged`: a run stopped by non-finite steps is finished with loss nan (a learning-rate
  sweep expects some), instead of stopping the sweep with the error.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from research.training import guards  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  grid = sweep_lib.build_grid(config)
  columns = tuple(config.sweep.columns)
  os.makedirs(workdir, exist_ok=True)
  lead = jax.process_index() == 0
  _log_grid(grid, log)
  rows = finished_rows(workdir, grid)
  todo = [r for r in grid.runs if r.name not in rows]
  for r in grid.runs:
    if r.name in rows:
      _check_recipe(workdir, r, log)
  log(f'{len(rows)} of {len(grid.runs)} runs already finished; {len(todo)} to train')
  if todo and dataset is None:
    from research.data import pipeline  # pylint: disable=g-import-not-at-top
    dataset = pipeline.load_dataset(config.data, workdir=workdir)
  start, flops_done, trained = time.perf_counter(), 0.0, 0
  remaining_flops = sum(r.flops for r in todo)
  for r in todo:
    if max_runs is not None and trained >= max_runs:
      log(f'stopping after {trained} runs (--max_runs); rerun to continue')
      break
    elapsed = time.perf_counter() - start
    eta = (f'sweep ETA {_format_seconds(remaining_flops / (flops_done / elapsed))}'
           if flops_done else 'sweep ETA after the first run')
    log(f'[{r.index + 1}/{len(grid.runs)}] {r.name}: {sweep_lib.describe(r)}; {eta}')
    directory = run_dir(workdir, r)
    os.makedirs(directory, exist_ok=True)
    _save_tokenizer(dataset, directory, lead)
    cfg = sweep_lib.run_config(config, r)
    clock = _WallClock(os.path.join(directory, WALL_TIME_FILE), cfg.train.checkpoint_every)
    try:
      final = trainer.train(cfg, directory, dataset=dataset, hooks=(clock, *hooks),
                            devices=devices)
    except guards.Diverged as e:
      if not keep_diverged:
        raise
      log(f'{r.name}: diverged, recorded with loss nan: {e}')
      final = {'step': r.steps, 'eval/loss': math.nan}
    if lead:
      clock.save()
    preempted = 'preempted_at' in final
    if preempted and final.get('step') != r.steps:
      log(f'{r.name}: stopped at step {final["preempted_at"]} (SIGTERM); rerun to continue')
      break
    metrics = final
    if final.get('eval/loss') is None or final.get('step') != r.steps:  # trained before
      metrics = final_eval_metrics(directory, r.steps)
    loss = metrics.get('eval/loss')
    if loss is None:
      loss = _evaluate_checkpoint(cfg, directory, dataset)
    rows[r.name] = result_row(r, cfg.name, float(loss), clock.seconds(), metrics, columns)
    _warn_missing(r.name, rows[r.name], columns, log)
    if lead:
      _mark_finished(workdir, r, rows[r.name])
      write_results(workdir, grid, rows, columns)
    trained += 1
    flops_done += r.flops
    remaining_flops -= r.flops
    log(f'{r.name}: loss {float(loss):.4f} in {_format_seconds(clock.seconds())}')
    if preempted:  # SIGTERM during the last step: the run is complete, the sweep stops
      log('SIGTERM: stopping the sweep; rerun to continue')
      break
  if lead:
    path = write_results(workdir, grid, rows, columns)
    log(f'{len(rows)} of {len(grid.runs)} runs finished; wrote {path} '
        f'({_format_seconds(time.perf_counter() - start)} here)')
    if fit and len(rows) == len(grid.runs):
      fit_results(config, workdir, bootstrap=bootstrap, log=log)
    elif fit:
      log('not fitting yet: the grid is unfinished')
  return [rows[r.name] for r in grid.runs if r.name in rows]


def _save_tokenizer(dataset, directory: str, lead: bool) -> None:
  """Each run directory gets the sweep's tokenizer, so sampling and evaluation need only it."""
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  save = getattr(dataset.tokenizer, 'save', None)
  if lead and save is not None and not pipeline.has_tokenizer(directory):
    save(directory)


def _log_grid(grid: sweep_lib.Grid, log: Callable) -> None:
  log(f'sweep: {len(grid.runs)} runs, {sum(r.flops for r in grid.runs):.3g} training FLOP in all')
  for name, reason in grid.skipped:
    log(f'skipping {name}: {reason}')


def fit_results(config, workdir: str, *, bootstrap: int | None = None,
                log: Callable[[str], None] = print):
  """Fits scaling laws to WORKDIR/results.csv and writes fit.json and plots into WORKDIR/fit."""
  from experiments.scaling_laws import fit as fit_lib  # pylint: disable=g-import-not-at-top
  s = config.sweep
  approaches = [a.strip() for a in s.fit_approaches.split(',') if a.strip()]
  out = os.path.join(workdir, 'fit')
  log(f'fitting {",".join(approaches)} into {out}')
  try:
    return fit_lib.run(os.path.join(workdir, RESULTS_CSV), out, approaches=approaches,
                       bootstrap=s.fit_bootstrap if bootstrap is None else bootstrap,
                       target=s.fit_target, log=log)
  except UserError as e:
    log(f'fit skipped: {e}')
    return None


# Mode `commands` and `collect`.


def train_command(spec: str, cli_overrides: Sequence[tuple[str, str]], run: sweep_lib.SweepRun,
                  workdir: str, python: str = 'python') -> str:
  """One shell line that trains `run` with research.train."""
  args = [python, '-m', 'research.train', f'--config={spec}']
  args += [f'--config.{k}={v}' for k, v in cli_overrides if not k.startswith('sweep.')]
  args += [f'--config.{k}={sweep_lib.format_value(v)}' for k, v in run.overrides]
  args.append(f'--workdir={run_dir(workdir, run)}')
  return ' '.join(shlex.quote(a) for a in args)


def write_commands(config, workdir: str, spec: str, cli_overrides: Sequence[tuple[str, str]] = (),
                   *, python: str = 'python', log: Callable[[str], None] = print) -> str:
  """Writes WORKDIR/commands.sh: a header, then exactly one command line per run."""
  grid = sweep_lib.build_grid(config)
  _log_grid(grid, log)
  os.makedirs(workdir, exist_ok=True)
  collect = ['python', '-m', 'experiments.scaling_laws.run', f'--config={spec}',
             *[f'--config.{k}={v}' for k, v in cli_overrides], f'--workdir={workdir}',
             '--mode=collect']
  header = ['#!/bin/sh',
            f'# {len(grid.runs)} runs of {config.name}, one per line (a scheduler can run line i).',
            '# Every command resumes from its checkpoint when rerun. When all are done, collect:',
            '#   ' + ' '.join(shlex.quote(a) for a in collect)]
  lines = [train_command(spec, cli_overrides, r, workdir, python) for r in grid.runs]
  path = os.path.join(workdir, COMMANDS_FILE)
  _atomic_write(path, '\n'.join(header + lines) + '\n')
  os.chmod(path, 0o755)
  log(f'wrote {len(lines)} commands to {path}')
  return path


def collect(config, workdir: str, *, fit: bool = True, bootstrap: int | None = None,
            log: Callable[[str], None] = print) -> list[dict]:
  """results.csv from the runs' own logs (their final evaluation), for runs trained elsewhere."""
  grid = sweep_lib.build_grid(config)
  columns = tuple(config.sweep.columns)
  rows = finished_rows(workdir, grid)
  missing = []
  for r in grid.runs:
    if r.name in rows:
      continue
    directory = run_dir(workdir, r)
    metrics = final_eval_metrics(directory, r.steps)
    if 'eval/loss' not in metrics:
      missing.append(r.name)
      continue
    saved = _read_json(os.path.join(directory, 'config.json')) or {}
    rows[r.name] = result_row(r, saved.get('name', f'{config.name}/{r.name}'),
                              metrics['eval/loss'],
                              logged_train_seconds(directory, r.tokens_per_step), metrics,
                              columns)
    _warn_missing(r.name, rows[r.name], columns, log)
    _mark_finished(workdir, r, rows[r.name])
  path = write_results(workdir, grid, rows, columns)
  log(f'{len(rows)} of {len(grid.runs)} runs finished; wrote {path}')
  if missing:
    log(f'unfinished ({len(missing)}): {", ".join(missing)}')
  if fit and not missing:
    fit_results(config, workdir, bootstrap=bootstrap, log=log)
  return [rows[r.name] for r in grid.runs if r.name in rows]


def main(config, argv):
  del argv
  from research import config_lib  # pylint: disable=g-import-not-at-top
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/scaling')
  sweep_lib.sweep_section(config)
  if FLAGS.mode == 'commands':
    spec, overrides, _ = config_lib.split_config_args(sys.argv[1:])
    write_commands(config, FLAGS.workdir, spec, overrides)
  elif FLAGS.mode == 'collect':
    collect(config, FLAGS.workdir, fit=FLAGS.fit)
  else:
    run_sweep(config, FLAGS.workdir, max_runs=FLAGS.max_runs, fit=FLAGS.fit)


if __name__ == '__main__':
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run_with_config(main)
