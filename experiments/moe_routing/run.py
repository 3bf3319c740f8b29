r"""Trains the MoE routing study's variants and writes its table and figures.

    python -m experiments.moe_routing.run \
        --config=configs/experiments/moe_routing/shakespeare.py --workdir=runs/moe_routing \
        [--config.moe_routing.variants=dense,top2] [--config.train.steps=...] [--noplot]

The variants (experiments/moe_routing/variants.py: a dense baseline and MoE routers at equal
active FLOPs per token) train one after another in this process, each in WORKDIR/<variant> with
`research.training.trainer.train`, on one dataset (and tokenizer) loaded once and the same seed,
so they see the same batches in the same order and are evaluated on the same held-out batches.
Each variant checkpoints and resumes; a finished one (WORKDIR/<variant>/result.json) is never
retrained, and a killed study continues where it stopped. SIGTERM stops it after the current
variant saved a checkpoint.

Outputs in WORKDIR:

* results.csv, results.md: one row per finished variant -- router, k, experts, expert width,
  balancing, total and active parameters, training FLOPs per token (the trainer's count), final
  validation loss, training tokens/s (median over the logged intervals after the first, which
  holds the compilation), wall time, and the last logged dropped fraction and load CV
  (coefficient of variation of the tokens per expert, mean over MoE layers).
* val_loss_vs_steps.png, val_loss_vs_wall_time.png, expert_load.png, dropped_fraction.png
  (experiments/moe_routing/plot.py).
* <variant>/timeline.jsonl: {step, wall_s} at every logging and evaluation step; wall_s is the
  variant's elapsed time from the start of `train` (model build, compilation, checkpoints and
  the periodic evaluations included), accumulated across resumptions.
* variants.json: the grid as it was run (what plot.py reads).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from typing import Callable, Sequence

from absl import flags

from experiments.moe_routing import variants as variants_lib
from research.errors import UserError

RESULT_FILE = 'result.json'
TIMELINE_FILE = 'timeline.jsonl'
RESULTS_CSV = 'results.csv'
RESULTS_MD = 'results.md'
VARIANTS_FILE = 'variants.json'
COLUMNS = ('variant', 'label', 'router', 'top_k', 'num_experts', 'expert_d_ff', 'balance',
           'capacity_factor', 'active_experts', 'causal', 'total_params', 'active_params',
           'router_params', 'flops_per_token', 'steps', 'final_val_loss', 'tokens_per_sec',
           'wall_time_s', 'dropped_fraction', 'load_cv')

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'study directory: one subdirectory per variant, the '
                      'table and the figures')
  flags.DEFINE_boolean('plot', True, 'draw the figures at the end')


# ---------------------------------------------------------------------------------------------
# Small file helpers


def _atomic_write(path: str, text: str) -> None:
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', newline='') as f:
    f.write(text)
  os.replace(tmp, path)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def read_jsonl(path: str) -> list[dict]:
  """The entries of a .jsonl log; a line cut short by a kill is skipped."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  return out


def format_seconds(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


# ---------------------------------------------------------------------------------------------
# Trainer hooks


class Timeline:
  """Hook: appends {step, wall_s} to timeline.jsonl at every logging and evaluation step.

  Those steps end with a host sync (the logged metrics, or the evaluation), so the time is that
  of finished work. wall_s counts from this object's creation (just before `train`) and carries
  on from the last entry when a variant resumes.
  """

  def __init__(self, path: str, eval_every: int, last_step: int, enabled: bool = True):
    self.path, self.eval_every, self.last_step = path, eval_every, last_step
    self.enabled = enabled  # process 0 only
    entries = read_jsonl(path)
    self.before = float(entries[-1]['wall_s']) if entries else 0.0
    self.start = time.perf_counter()

  def seconds(self) -> float:
    return self.before + time.perf_counter() - self.start

  def __call__(self, step, state, metrics) -> None:
    del state
    evaluated = step % self.eval_every == 0 or step == self.last_step
    if not self.enabled or (metrics is None and not evaluated):
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), 'wall_s': round(self.seconds(), 3)}) + '\n')


class Progress:
  """Hook: one line per logging step -- variant i/n, step, loss, speed and ETAs."""

  def __init__(self, index: int, count: int, name: str, steps: int, remaining_steps: int,
               log: Callable[[str], None]):
    self.index, self.count, self.name, self.steps = index, count, name, steps
    self.remaining_after = remaining_steps  # steps of the variants after this one
    self.log = log
    self.first = None  # (time, step) at the first logged step: compilation is behind it

  def __call__(self, step, state, metrics) -> None:
    del state
    if metrics is None:
      return
    now = time.perf_counter()
    if self.first is None:
      self.first = (now, step)
      rate = None
    else:
      rate = (now - self.first[0]) / max(step - self.first[1], 1)
    line = (f'[{self.index}/{self.count}] {self.name}: step {step}/{self.steps}, '
            f"loss {metrics['train/loss']:.3f}")
    if 'train/moe/dropped_fraction' in metrics:
      line += (f", dropped {metrics['train/moe/dropped_fraction']:.3f}, "
               f"load CV {metrics['train/moe/load_cv']:.2f}")
    if rate is not None:
      left = (self.steps - step) * rate
      line += (f', {rate:.2f} s/step; variant ETA {format_seconds(left)}, study ETA '
               f'{format_seconds(left + self.remaining_after * rate)}')
    self.log(line)


# ---------------------------------------------------------------------------------------------
# Per-variant summary


def summarize(v: variants_lib.Variant, directory: str) -> dict | None:
  """A variant's results row from its logs; None when it has not finished."""
  steps = v.config.train.steps
  entries = read_jsonl(os.path.join(directory, 'metrics.jsonl'))
  final_loss = None
  for e in entries:
    if e.get('step') == steps and e.get('eval/loss') is not None:
      final_loss = float(e['eval/loss'])
  if final_loss is None:
    return None
  train = [e for e in entries if e.get('train/tokens_per_sec') is not None]
  by_step = {}
  for e in train:  # a resumed variant logs some steps twice: keep the last
    by_step[e['step']] = e
  train = [by_step[s] for s in sorted(by_step)]
  rates = [e['train/tokens_per_sec'] for e in train[1:]] or [e['train/tokens_per_sec']
                                                               for e in train]
  last = train[-1] if train else {}
  timeline = read_jsonl(os.path.join(directory, TIMELINE_FILE))
  return {
      'variant': v.name, 'label': v.label, 'router': v.router, 'top_k': v.top_k,
      'num_experts': v.num_experts, 'expert_d_ff': v.expert_d_ff, 'balance': v.balance,
      'capacity_factor': v.capacity_factor, 'active_experts': v.active_experts,
      'causal': v.causal, 'total_params': v.total_params, 'active_params': v.active_params,
      'router_params': v.router_params, 'flops_per_token': v.flops_per_token, 'steps': steps,
      'final_val_loss': final_loss,
      'tokens_per_sec': statistics.median(rates) if rates else None,
      'wall_time_s': float(timeline[-1]['wall_s']) if timeline else None,
      'dropped_fraction': last.get('train/moe/dropped_fraction'),
      'load_cv': last.get('train/moe/load_cv'),
  }


def _csv_value(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return 'nan' if math.isnan(value) else repr(value)
  return str(value)


def _fmt(value, spec: str, empty: str = '-') -> str:
  return empty if value is None or value == '' else format(value, spec)


def markdown_table(rows: Sequence[dict]) -> str:
  """The results as a markdown table (the rows of results.csv, formatted)."""
  header = ('| variant | router | k | experts | expert F | active params | total params | '
            'MFLOP/token | final val loss | tokens/s | wall time | dropped | load CV |')
  lines = [header, '|' + '---|' * 13]
  for r in rows:
    loss = _fmt(r['final_val_loss'], '.4f')
    if not r['causal']:
      loss += ' (leaks the future)'
    k = ('-' if r['router'] == 'dense' else
         f"{r['active_experts']:g} (avg)" if r['router'] == 'expert_choice' else str(r['top_k']))
    router = r['router'] + (', aux-free' if r['balance'] == 'aux_free' else '')
    lines.append(
        f"| {r['variant']} | {router} | {k} | {r['num_experts'] or '-'} | {r['expert_d_ff']} "
        f"| {r['active_params'] / 1e6:.3f}M | {r['total_params'] / 1e6:.3f}M "
        f"| {r['flops_per_token'] / 1e6:.3f} | {loss} | {_fmt(r['tokens_per_sec'], ',.0f')} "
        f"| {format_seconds(r['wall_time_s']) if r['wall_time_s'] is not None else '-'} "
        f"| {_fmt(r['dropped_fraction'], '.3f')} | {_fmt(r['load_cv'], '.3f')} |")
  return '\n'.join(lines)


NOTES = """\
Notes. Active params leave out the experts a token does not use (expert choice: the average
number of experts per token); MFLOP/token is training FLOPs per token as the trainer counts them
(research/training/flops.py: 6 x active matmul parameters + causal attention), equal for every
variant up to the router's d_model x E per MoE layer. Capacity padding and dropped assignments
are not counted. Final val loss: nats/token on the same held-out batches for every variant.
tokens/s: median of the logged training intervals after the first (no compilation, no
evaluation). Wall time: the whole variant (build, compilation, periodic evaluation, checkpoints).
Dropped and load CV: the last logging interval's mean over training steps and MoE layers
(dropped: fraction of (token, choice) assignments past capacity; load CV: std / mean of the
assignments per expert).
"""


def write_results(workdir: str, grid: Sequence[variants_lib.Variant], rows: dict) -> None:
  ordered = [rows[v.name] for v in grid if v.name in rows]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')  # labels hold commas: quoted
  writer.writerow(COLUMNS)
  for r in ordered:
    writer.writerow([_csv_value(r.get(c)) for c in COLUMNS])
  _atomic_write(os.path.join(workdir, RESULTS_CSV), out.getvalue())
  text = markdown_table(ordered) + '\n\n' + NOTES
  if any(not r['causal'] for r in ordered):
    text += ('\nExpert choice is not causal: each expert picks its tokens among the whole '
             'sequence, later tokens included, so in this decoder its loss (training and '
             'validation) benefits from the future and is not comparable with the others.\n')
  _atomic_write(os.path.join(workdir, RESULTS_MD), text)


def _write_grid(workdir: str, grid: Sequence[variants_lib.Variant]) -> None:
  entries = [{'name': v.name, 'label': v.label, 'router': v.router, 'top_k': v.top_k,
              'num_experts': v.num_experts, 'causal': v.causal,
              'steps': v.config.train.steps} for v in grid]
  _atomic_write(os.path.join(workdir, VARIANTS_FILE), json.dumps(entries, indent=1) + '\n')


def _save_tokenizer(dataset, directory: str) -> None:
  """Each variant directory gets the study's tokenizer: research.sample and evaluate need it."""
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  save = getattr(dataset.tokenizer, 'save', None)
  if save is not None and not pipeline.has_tokenizer(directory):
    save(directory)


# ---------------------------------------------------------------------------------------------
# The study


def run_study(config, workdir: str, *, dataset=None, devices=None, plot: bool = True,
              hooks: Sequence[Callable] = (), log: Callable[[str], None] = print) -> list[dict]:
  """Trains every unfinished variant of `config`'s grid; returns the rows of finished ones.

  `dataset` (default: `config.data` loaded once, its tokenizer kept in WORKDIR) serves every
  variant; `hooks` go to each variant's trainer.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  grid = variants_lib.build_grid(config)
  os.makedirs(workdir, exist_ok=True)
  lead = jax.process_index() == 0
  log(f'MoE routing study: {len(grid)} variants, {config.train.steps} steps of '
      f'{config.train.batch_size} x {config.data.seq_len} tokens each')
  for v in grid:
    log(f'  {v.name}: {variants_lib.describe(v)}')
  if lead:
    _write_grid(workdir, grid)
  rows = {}
  for v in grid:
    result = _read_json(os.path.join(workdir, v.name, RESULT_FILE))
    if result is not None:
      rows[v.name] = result
  todo = [v for v in grid if v.name not in rows]
  log(f'{len(rows)} of {len(grid)} variants already finished; {len(todo)} to train')
  if todo and dataset is None:
    from research.data import pipeline  # pylint: disable=g-import-not-at-top
    dataset = pipeline.load_dataset(config.data, workdir=workdir)
  start = time.perf_counter()
  for i, v in enumerate(todo):
    directory = os.path.join(workdir, v.name)
    os.makedirs(directory, exist_ok=True)
    if lead:
      _save_tokenizer(dataset, directory)
    c = v.config
    log(f'[{grid.index(v) + 1}/{len(grid)}] training {v.name} in {directory}')
    timeline = Timeline(os.path.join(directory, TIMELINE_FILE), c.train.eval_every,
                        c.train.steps, enabled=lead)
    progress = Progress(grid.index(v) + 1, len(grid), v.name, c.train.steps,
                        sum(u.config.train.steps for u in todo[i + 1:]),
                        log if lead else lambda line: None)
    final = trainer.train(c, directory, dataset=dataset, hooks=(timeline, progress, *hooks),
                          devices=devices)
    if 'preempted_at' in final and final.get('step') != c.train.steps:
      log(f'{v.name}: stopped at step {final["preempted_at"]} (SIGTERM); rerun to continue')
      break
    if lead:  # only process 0 writes (and reads) the logs
      row = summarize(v, directory)
      if row is None:
        raise UserError(f'{directory}: training ended at step {final.get("step")} without a '
                        f'final evaluation logged; delete the directory to retrain {v.name}')
      rows[v.name] = row
      _atomic_write(os.path.join(directory, RESULT_FILE), json.dumps(row, indent=1) + '\n')
      write_results(workdir, grid, rows)
      log(f'{v.name}: final val loss {row["final_val_loss"]:.4f}, '
          f'{format_seconds(row["wall_time_s"] or 0)} '
          f'({format_seconds(time.perf_counter() - start)} into this invocation)')
    if 'preempted_at' in final:
      log('SIGTERM: stopping the study; rerun to continue')
      break
  if lead:
    write_results(workdir, grid, rows)
    log(f'{len(rows)} of {len(grid)} variants finished; wrote '
        f'{os.path.join(workdir, RESULTS_MD)}')
    log(markdown_table([rows[v.name] for v in grid if v.name in rows]))
    if plot and rows:
      from experiments.moe_routing import plot as plot_lib  # pylint: disable=g-import-not-at-top
      for path in plot_lib.plot_all(workdir):
        log(f'wrote {path}')
  return [rows[v.name] for v in grid if v.name in rows]


def main(config, argv):
  del argv
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/moe_routing')
  variants_lib.section(config)
  run_study(config, FLAGS.workdir, plot=FLAGS.plot,
            log=lambda line: print(line, flush=True))


if __name__ == '__main__':
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run_with_config(main)
