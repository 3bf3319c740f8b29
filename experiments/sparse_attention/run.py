r"""Sparse and sliding-window attention: what it costs, and what it loses.

    python -m experiments.sparse_attention.run \
        --config=configs/experiments/sparse_attention/cost.py --workdir=runs/sparse_cost
    python -m experiments.sparse_attention.run \
        --config=configs/experiments/sparse_attention/quality.py --workdir=runs/sparse_quality

The config's `sparse_attention.kind` chooses the study:

* `cost`: forward + backward time and memory of one causal self-attention vs sequence length
  (`sparse_attention.lengths`), for each `pattern:implementation` case
  (`sparse_attention.cases`, plus `gpu_cases` on a GPU and `tpu_cases` on a TPU); the pattern's
  window, global tokens, blocks and chunk come from `model.attention`. Full attention and the
  mask-only control (`sliding:xla`: full scores, masked) stop where their T x T scores would
  pass `sparse_attention.max_dense_bytes` (a note says so). Writes WORKDIR/results.csv,
  results.md (tables, growth factors per doubling, the targets of `sparse_attention.targets`
  checked) and time_vs_length.png, memory_vs_length.png (log-log, ideal slopes 1 and 2 drawn).
* `quality`: trains one decoder per `sparse_attention.variants` ('PATTERN@WINDOW') on the
  config's data (Shakespeare) with research.training.trainer.train, in WORKDIR/lm/NAME, and one
  per `sparse_attention.retrieval.variants` on the synthetic long-range retrieval task
  (experiments/sparse_attention/retrieval.py) in WORKDIR/retrieval/NAME. A finished run (its
  result.json) is never rerun; an interrupted one resumes from its checkpoint. Writes
  results.csv (one row per run: validation loss, retrieval accuracy, receptive field, FLOPs per
  token, wall time), results.md and quality.png.
"""

from __future__ import annotations

import copy
import csv
import datetime
import io
import json
import math
import os
import platform
import sys
import time
from typing import Callable

import ml_collections
from absl import flags

from research import config_lib
from research.errors import ConfigError, UserError

FLAGS = flags.FLAGS
KINDS = ('cost', 'quality')
COST_COLUMNS = ('case', 'pattern', 'implementation', 'length', 'time_s', 'time_min_s',
                'time_max_s', 'repeats', 'memory_bytes', 'device_peak_bytes', 'compile_s',
                'attended_keys', 'model_flops', 'tflops_per_s', 'note')
QUALITY_COLUMNS = ('task', 'variant', 'seed', 'pattern', 'window', 'num_layers', 'receptive_field',
                   'distance', 'eval_loss', 'retrieval_accuracy', 'chance', 'flops_per_token',
                   'train_time_s', 'steps', 'name')


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'output directory: results.csv, results.md, PNGs, runs')


# ------------------------------------------------------------------------------------ config


def default_section() -> ml_collections.ConfigDict:
  """Every field of `config.sparse_attention`, with its default."""
  s = ml_collections.ConfigDict()
  s.kind = 'cost'  # 'cost' | 'quality'
  # cost
  s.lengths = (1024, 2048, 4096, 8192, 16384, 32768)
  s.cases = ('full:xla,sliding:xla,sliding:blockwise,longformer:blockwise,bigbird:blockwise,'
             'chunked:blockwise')
  s.gpu_cases = 'full:cudnn,sliding:cudnn'  # added when the backend is a GPU
  s.tpu_cases = 'full:splash,sliding:splash'  # added on a TPU
  s.batch = 1
  s.heads = 2
  s.kv_heads = 0  # 0: heads
  s.head_dim = 64
  s.dtype = 'auto'  # 'auto': float32 on CPU, bfloat16 on GPU/TPU
  s.causal = True
  s.warmup = 1
  s.repeats = 3
  s.max_dense_bytes = 8e9  # skip quadratic cases whose score-sized arrays pass this
  s.targets = ml_collections.ConfigDict()
  s.targets.from_length = 8192
  s.targets.to_length = 16384
  s.targets.windowed_case = 'sliding:blockwise'
  s.targets.full_case = 'full:xla'
  s.targets.max_windowed_growth = 2.3
  s.targets.min_full_growth = 3.2
  s.targets.min_speedup = 8.0
  # quality
  s.variants = ('full', 'sliding@16', 'sliding@64', 'sliding*3,full@16')
  # Each LM variant trains once per seed (initialisation and batch order: config.seed); the
  # differences between variants are about 1 %, so one seed cannot tell them from noise.
  s.seeds = (0, 1, 2)
  s.retrieval = ml_collections.ConfigDict()
  s.retrieval.variants = ('full', 'sliding@8', 'sliding*3,full@8')
  s.retrieval.seq_len = 128
  s.retrieval.steps = 200
  s.retrieval.batch_size = 16
  s.retrieval.lr = 3e-3
  s.retrieval.warmup_steps = 30
  s.retrieval.num_values = 16
  s.retrieval.num_filler = 32
  s.retrieval.value_repeats = 8  # copies of the value after the key marker, at the start
  s.retrieval.eval_examples = 256
  s.retrieval.eval_every = 0  # 0: at the end only
  return s


def with_section(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Adds `sparse_attention` (defaults updated with `fields`) to a config."""
  return config_lib.add_section(config, 'sparse_attention', default_section(), fields)


def section(config) -> ml_collections.ConfigDict:
  """The validated `sparse_attention` section."""
  if 'sparse_attention' not in config:
    raise ConfigError('sparse_attention', None, 'the config has no `sparse_attention` section: '
                      'build it with experiments.sparse_attention.run.with_section(config, ...)')
  s = config.sparse_attention
  if s.kind not in KINDS:
    raise ConfigError('sparse_attention.kind', s.kind, f'choose one of {list(KINDS)}')
  if not s.lengths or any(int(t) <= 0 for t in s.lengths):
    raise ConfigError('sparse_attention.lengths', s.lengths, 'give positive lengths')
  for field in ('repeats', 'batch', 'heads', 'head_dim'):
    if s[field] <= 0:
      raise ConfigError(f'sparse_attention.{field}', s[field], 'must be a positive integer')
  from experiments.sparse_attention import cost, quality  # pylint: disable=g-import-not-at-top
  cost.parse_cases(s.cases)
  for v in list(s.variants) + list(s.retrieval.variants):
    quality.parse_variant(v)
  if not s.seeds or len(set(s.seeds)) != len(s.seeds):
    raise ConfigError('sparse_attention.seeds', s.seeds, 'give one or more distinct seeds')
  return s


# ------------------------------------------------------------------------------------ output


def _atomic_write(path: str, text: str) -> None:
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', newline='') as f:
    f.write(text)
  os.replace(tmp, path)


def write_csv(path: str, rows, columns) -> str:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in columns})
  _atomic_write(path, out.getvalue())
  return path


def environment(command: str | None = None) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  try:
    load = os.getloadavg()
  except OSError:
    load = None
  return {'date': datetime.date.today().isoformat(), 'device': device.device_kind,
          'backend': jax.default_backend(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
          'python': platform.python_version(),
          'load_average': None if load is None else [round(x, 2) for x in load],
          'command': command or ' '.join(['python -m experiments.sparse_attention.run'] +
                                         sys.argv[1:])}


def _fmt_bytes(b) -> str:
  return '' if b in (None, '') else f'{b / 2**20:,.0f}'


def _fmt_s(s) -> str:
  if s in (None, ''):
    return ''
  return f'{s:.3g}' if s < 10 else f'{s:,.1f}'


# -------------------------------------------------------------------------------------- cost


def cost_cases(s, backend: str):
  from experiments.sparse_attention import cost  # pylint: disable=g-import-not-at-top
  cases = cost.parse_cases(s.cases)
  extra = {'gpu': s.gpu_cases, 'tpu': s.tpu_cases}.get(backend, '')
  if extra:
    cases += [c for c in cost.parse_cases(extra) if c not in cases]
  return cases


def growth(rows, case_name: str, a: int, b: int) -> float | None:
  """time(b) / time(a) of one case, or None where either is missing."""
  times = {r['length']: r['time_s'] for r in rows if r['case'] == case_name and r.get('time_s')}
  if a in times and b in times:
    return times[b] / times[a]
  return None


def check_targets(rows, t) -> list[dict]:
  """The `sparse_attention.targets` checks: growth from_length -> to_length and the speedup."""
  from experiments.sparse_attention import cost  # pylint: disable=g-import-not-at-top
  windowed = cost.parse_cases(t.windowed_case)[0].name
  full = cost.parse_cases(t.full_case)[0].name
  a, b = int(t.from_length), int(t.to_length)
  g_w, g_f = growth(rows, windowed, a, b), growth(rows, full, a, b)
  times = {(r['case'], r['length']): r['time_s'] for r in rows if r.get('time_s')}
  speedup = None
  if (full, b) in times and (windowed, b) in times:
    speedup = times[(full, b)] / times[(windowed, b)]
  checks = [
      {'check': f'{windowed}: time growth {a} -> {b} tokens', 'value': g_w,
       'target': f'<= {t.max_windowed_growth}',
       'ok': None if g_w is None else g_w <= t.max_windowed_growth},
      {'check': f'{full}: time growth {a} -> {b} tokens', 'value': g_f,
       'target': f'>= {t.min_full_growth}', 'ok': None if g_f is None else g_f >= t.min_full_growth},
      {'check': f'speedup of {windowed} over {full} at {b} tokens', 'value': speedup,
       'target': f'>= {t.min_speedup}', 'ok': None if speedup is None else speedup >= t.min_speedup},
  ]
  return checks


def cost_markdown(rows, checks, env: dict, s, att) -> str:
  lengths = sorted({r['length'] for r in rows})
  cases = []
  for r in rows:
    if r['case'] not in cases:
      cases.append(r['case'])
  by = {(r['case'], r['length']): r for r in rows}
  lines = ['# Sparse attention: cost vs length', '',
           f"{env['date']}, {env['device']} ({env['backend']}, {env['cpu_count']} CPUs), "
           f"jax {env['jax']}, load average {env['load_average']} at the end.", '',
           f"Command: `{env['command']}`", '',
           f'One causal self-attention, forward + backward (gradients of q, k, v), batch '
           f'{s.batch}, {s.heads} heads x {s.head_dim}, {s.kv_heads or s.heads} kv heads; '
           f'window {att.window}, global tokens {att.global_tokens}, block {att.block_size}, '
           f'random blocks {att.random_blocks}, chunk {att.chunk}. Time: median of {s.repeats} '
           f'after {s.warmup} warm-up; memory: XLA\'s compiled estimate (temporaries + '
           'arguments + outputs).', '',
           '## Time (s)', '', '| length | ' + ' | '.join(cases) + ' |',
           '|---:|' + '---:|' * len(cases)]
  for t in lengths:
    cells = []
    for c in cases:
      r = by.get((c, t))
      cells.append('' if r is None else (_fmt_s(r['time_s']) if r.get('time_s') else 'skipped'))
    lines.append(f'| {t:,} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Memory (MiB)', '', '| length | ' + ' | '.join(cases) + ' |',
            '|---:|' + '---:|' * len(cases)]
  for t in lengths:
    cells = []
    for c in cases:
      r = by.get((c, t))
      cells.append('' if r is None else (_fmt_bytes(r['memory_bytes']) if r.get('time_s')
                                         else 'skipped'))
    lines.append(f'| {t:,} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Time growth per doubling of length', '',
            '| from -> to | ' + ' | '.join(cases) + ' |', '|---|' + '---:|' * len(cases)]
  for a, b in zip(lengths, lengths[1:]):
    cells = []
    for c in cases:
      g = growth(rows, c, a, b)
      cells.append('' if g is None else f'{g:.2f}x')
    lines.append(f'| {a:,} -> {b:,} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Targets', '', '| check | measured | target | met |', '|---|---:|---|---|']
  for ch in checks:
    value = '' if ch['value'] is None else f"{ch['value']:.2f}x"
    met = 'not measured' if ch['ok'] is None else ('yes' if ch['ok'] else 'NO')
    lines.append(f"| {ch['check']} | {value} | {ch['target']} | {met} |")
  lines += notes_lines(rows)
  lines += ['', '![time](time_vs_length.png)', '', '![memory](memory_vs_length.png)', '']
  return '\n'.join(lines)


def notes_lines(rows) -> list[str]:
  """A cost table's '## Notes' section: each case's note (a skip, a backend it cannot run
  on) once, from the first length it applies to; nothing when no row has a note."""
  notes = sorted({(r['case'], r['note']) for r in rows if r.get('note')})
  if not notes:
    return []
  lines = ['', '## Notes', '']
  for case, note in notes:
    first = min(r['length'] for r in rows if r['case'] == case and r.get('note') == note)
    lines.append(f'- {case}: {note} (from {first:,} tokens)')
  return lines


def run_cost(config, workdir: str, *, log: Callable[[str], None] = print) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from experiments.sparse_attention import cost, plot  # pylint: disable=g-import-not-at-top
  s = section(config)
  att = config.model.attention
  backend = jax.default_backend()
  dtype = (jnp.float32 if backend == 'cpu' else jnp.bfloat16) if s.dtype == 'auto' else (
      jnp.dtype(s.dtype))
  cases = cost_cases(s, backend)
  os.makedirs(workdir, exist_ok=True)
  rows = []
  csv_path = os.path.join(workdir, 'results.csv')
  log(f'{len(cases)} cases x {len(s.lengths)} lengths on {jax.devices()[0].device_kind} '
      f'({backend}), {jnp.dtype(dtype).name}')
  for length in sorted(int(t) for t in s.lengths):
    for case in cases:
      pattern = cost.pattern_of(case, att)
      row = {'case': case.name, 'pattern': case.pattern, 'implementation': case.implementation,
             'length': length}
      reason = cost.unavailable(case, pattern, causal=s.causal, backend=backend)
      if reason is None and case.implementation in cost.QUADRATIC:
        need = cost.dense_bytes(s.batch, s.heads, length)
        if need > s.max_dense_bytes:
          reason = (f'skipped: its T x T scores need about {need / 2**30:.1f} GiB, more than '
                    f'sparse_attention.max_dense_bytes={s.max_dense_bytes / 2**30:.1f} GiB')
      if reason is None:
        try:
          row = cost.measure(case, pattern, length, batch=s.batch, heads=s.heads,
                             kv_heads=s.kv_heads or s.heads, head_dim=s.head_dim, dtype=dtype,
                             causal=s.causal, warmup=s.warmup, repeats=s.repeats)
          row['case'] = case.name
        except Exception as e:  # pylint: disable=broad-except
          if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in str(e).lower():
            raise
          reason = f'out of memory: {str(e).splitlines()[0][:120]}'
      if reason is not None:
        row['note'] = reason
        log(f'{length:>7,} {case.name:<34} {reason}')
      else:
        log(f"{length:>7,} {case.name:<34} {row['time_s']:9.4f} s  "
            f"{(row['memory_bytes'] or 0) / 2**20:10,.0f} MiB  {row['tflops_per_s']:.3f} TFLOP/s")
      rows.append(row)
      write_csv(csv_path, rows, COST_COLUMNS)
  env = environment()
  checks = check_targets(rows, s.targets)
  for ch in checks:
    value = 'not measured' if ch['value'] is None else f"{ch['value']:.2f}x"
    log(f"target: {ch['check']}: {value} (want {ch['target']})"
        f"{'' if ch['ok'] is None else (' met' if ch['ok'] else ' MISSED')}")
  subtitle = (f"{env['device']}, B={s.batch} H={s.heads} K={s.head_dim}, "
              f"W={att.window}, block {att.block_size}")
  # Skipped rows go too: the plot marks where a case stops and says why.
  plot.cost_plots([r for r in rows if r.get('time_s') or r.get('note')], workdir, subtitle)
  _atomic_write(os.path.join(workdir, 'results.md'), cost_markdown(rows, checks, env, s, att))
  with open(os.path.join(workdir, 'environment.json'), 'w') as f:
    json.dump({**env, 'checks': checks}, f, indent=1)
  log(f'wrote {csv_path}, results.md, time_vs_length.png, memory_vs_length.png in {workdir}')
  return rows


# ----------------------------------------------------------------------------------- quality


def _run_config(config, overrides: dict, name: str, study: str = 'sparse_attention'):
  """One run's config: the study's config without its `study` section, with `overrides`."""
  c = copy.deepcopy(config)
  del c[study]
  config_lib.set_fields(c, overrides)
  c.name = name
  return config_lib.finalize(c)


def check_finished(final: dict, steps: int, directory: str) -> None:
  """Stops the study where the trainer returned early (SIGTERM saves a checkpoint and returns):
  a run cut short must not be recorded as finished."""
  if final.get('preempted_at') is not None:
    raise UserError(f"the run in {directory} stopped at step {final['preempted_at']} of "
                    f"{steps} ({final.get('preempted_by', 'a signal')}): rerun the same command "
                    'to resume it')


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _flops_per_token(cfg_config) -> float:
  from research import models  # pylint: disable=g-import-not-at-top
  from research.training import flops as flops_lib  # pylint: disable=g-import-not-at-top
  c = cfg_config
  cfg = models.transformer_config(c.model, seq_len=c.data.seq_len)
  return flops_lib.flops_per_step(cfg, c) / (c.train.batch_size * c.data.seq_len)


def _evaluate_checkpoint(directory: str, dataset, **kwargs) -> dict:
  """The final metrics of a finished run whose last evaluation was not logged."""
  import research  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  lm = research.load(directory)
  return trainer.evaluate(lm.run, lm.params, dataset, model_state=lm.model_state, **kwargs)


def run_quality(config, workdir: str, *, dataset=None, log: Callable[[str], None] = print
                ) -> list[dict]:
  from experiments.sparse_attention import plot, quality, retrieval  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  s = section(config)
  os.makedirs(workdir, exist_ok=True)
  rows = []
  start_all = time.perf_counter()
  num_layers = config.model.num_layers

  lm_variants = [quality.parse_variant(v) for v in s.variants]
  runs = [(v, seed) for v in lm_variants for seed in s.seeds]
  for i, (v, seed) in enumerate(runs):
    # Seed 0 keeps the directory it had before seeds existed, so old runs resume.
    directory = os.path.join(workdir, 'lm', v.slug if seed == 0 else f'{v.slug}_seed{seed}')
    done = _read_json(os.path.join(directory, 'result.json'))
    if done is None:
      if dataset is None:
        from research.data import pipeline  # pylint: disable=g-import-not-at-top
        dataset = pipeline.load_dataset(config.data, workdir=workdir)
      c = _run_config(config, {**quality.variant_overrides(v), 'seed': seed},
                      f'{config.name}/lm/{v.name}/seed{seed}')
      log(f'[lm {i + 1}/{len(runs)}] {v.name}, seed {seed}: {c.train.steps} steps of '
          f'{c.train.batch_size} x {c.data.seq_len} tokens')
      start = time.perf_counter()
      final = trainer.train(c, directory, dataset=dataset)
      check_finished(final, c.train.steps, directory)
      loss = final.get('eval/loss')
      if loss is None:
        loss = _evaluate_checkpoint(directory, dataset,
                                    num_batches=c.train.eval_batches)['eval/loss']
      done = {'task': 'shakespeare', 'variant': v.name, 'seed': seed, 'pattern': v.pattern,
              'window': v.window, 'num_layers': num_layers,
              'receptive_field': quality.receptive_field(v, num_layers),
              'eval_loss': float(loss), 'flops_per_token': _flops_per_token(c),
              'train_time_s': round(time.perf_counter() - start, 1), 'steps': c.train.steps,
              'name': c.name}
      with open(os.path.join(directory, 'result.json'), 'w') as f:
        json.dump(done, f, indent=1)
      log(f"  {v.name}, seed {seed}: validation loss {done['eval_loss']:.4f} "
          f"({done['train_time_s']} s)")
    done.setdefault('seed', 0)  # written before seeds existed
    rows.append(done)
    write_csv(os.path.join(workdir, 'results.csv'), rows, QUALITY_COLUMNS)

  r = s.retrieval
  objective = retrieval.register()
  probe = retrieval.RetrievalDataset(num_values=r.num_values, num_filler=r.num_filler,
                                     value_repeats=r.value_repeats,
                                     eval_examples=r.eval_examples, seed=config.seed)
  distance = probe.distance(r.seq_len)  # the value is at least this far back from the query
  retrieval_variants = [quality.parse_variant(x) for x in r.variants]
  for i, v in enumerate(retrieval_variants):
    directory = os.path.join(workdir, 'retrieval', v.slug)
    done = _read_json(os.path.join(directory, 'result.json'))
    if done is None:
      c = _run_config(config, {
          **quality.variant_overrides(v), 'data.seq_len': r.seq_len,
          'data.vocab_size': probe.tokenizer.vocab_size,
          'model.vocab_size': probe.tokenizer.vocab_size, 'train.steps': r.steps,
          'train.batch_size': r.batch_size, 'train.lr': r.lr,
          'train.warmup_steps': r.warmup_steps, 'train.eval_every': r.eval_every or r.steps,
          'train.checkpoint_every': r.steps, 'train.log_every': max(1, r.steps // 10),
          'train.eval_batches': 0, 'objective.name': objective,
          'model.family': 'decoder'}, f'{config.name}/retrieval/{v.name}')
      rf = quality.receptive_field(v, num_layers)
      log(f'[retrieval {i + 1}/{len(retrieval_variants)}] {v.name}: receptive field '
          f'{rf if math.isinf(rf) else int(rf)} vs distance >= {distance}; {r.steps} steps')
      start = time.perf_counter()
      final = trainer.train(c, directory, dataset=probe)
      check_finished(final, r.steps, directory)
      if final.get('eval/accuracy') is None or final.get('step') != r.steps:
        final = _evaluate_checkpoint(directory, probe)
      done = {'task': 'retrieval', 'variant': v.name, 'pattern': v.pattern, 'window': v.window,
              'num_layers': num_layers, 'receptive_field': rf, 'distance': distance,
              'eval_loss': final['eval/loss'], 'retrieval_accuracy': final['eval/accuracy'],
              'chance': 1 / r.num_values, 'flops_per_token': _flops_per_token(c),
              'train_time_s': round(time.perf_counter() - start, 1), 'steps': r.steps,
              'name': c.name}
      with open(os.path.join(directory, 'result.json'), 'w') as f:
        json.dump(done, f, indent=1)
      log(f"  {v.name}: retrieval accuracy {done['retrieval_accuracy']:.3f} "
          f'(chance {1 / r.num_values:.3f})')
    rows.append(done)
    write_csv(os.path.join(workdir, 'results.csv'), rows, QUALITY_COLUMNS)

  env = environment()
  lm_rows = [x for x in rows if x['task'] == 'shakespeare']
  retrieval_rows = [x for x in rows if x['task'] == 'retrieval']
  subtitle = (f"{env['device']}: {num_layers} layers x d_model {config.model.d_model}; "
              f"LM {config.train.steps} steps of {config.train.batch_size} x "
              f"{config.data.seq_len}; retrieval {r.steps} steps, distance >= {distance}")
  plot.quality_plot(lm_rows, retrieval_rows, workdir, subtitle)
  _atomic_write(os.path.join(workdir, 'results.md'),
                quality_markdown(lm_rows, retrieval_rows, env, config, time.perf_counter() -
                                 start_all))
  log(f'wrote results.csv, results.md, quality.png in {workdir}')
  return rows


def _rf(x) -> str:
  return 'all (a full layer)' if math.isinf(float(x)) else f'{int(x)}'


def quality_markdown(lm_rows, retrieval_rows, env, config, seconds: float) -> str:
  s = config.sparse_attention
  m = config.model
  lines = ['# Sparse attention: quality', '',
           f"{env['date']}, {env['device']} ({env['backend']}, {env['cpu_count']} CPUs), "
           f"jax {env['jax']}; {seconds / 60:.1f} minutes in this invocation; load average "
           f"{env['load_average']} at the end.", '', f"Command: `{env['command']}`", '',
           f'Decoders of {m.num_layers} layers x d_model {m.d_model} ({m.num_heads} heads), '
           f'block {m.attention.block_size}, implementation {m.attention.implementation}.', '',
           f'## {config.data.source}: validation loss', '',
           f'{config.train.steps} steps of {config.train.batch_size} x {config.data.seq_len} '
           'tokens each.', '',
           f'Seeds {list(s.seeds)} (initialisation and batch order); validation loss '
           f'over {config.train.eval_batches} batches of {config.train.batch_size} x '
           f'{config.data.seq_len} tokens, the same batches for every run: mean, sample '
           'standard deviation over seeds, and each seed.', '',
           'A seed fixes the initialisation and the batch order for every variant alike, so the '
           'spread over seeds moves all variants together; the paired column compares each '
           'variant with the first one seed by seed (mean and s.d. of the differences).', '',
           '| variant | receptive field (tokens) | validation loss, mean | s.d. | per seed | '
           'paired difference to the first | FLOPs / token | train s (mean) |',
           '|---|---:|---:|---:|---|---:|---:|---:|']
  from experiments.sparse_attention import plot  # pylint: disable=g-import-not-at-top
  first = {x.get('seed', 0): x['eval_loss'] for x in lm_rows
           if x['variant'] == lm_rows[0]['variant']} if lm_rows else {}
  for variant, losses in plot.by_variant(lm_rows).items():
    rows = [x for x in lm_rows if x['variant'] == variant]
    mean, sd = plot.mean_std(losses)
    per_seed = ', '.join(f"{x['eval_loss']:.4f} ({x.get('seed', 0)})" for x in rows)
    diffs = [x['eval_loss'] - first[x.get('seed', 0)] for x in rows if x.get('seed', 0) in first]
    paired = ''
    if variant != lm_rows[0]['variant'] and diffs:
      d_mean, d_sd = plot.mean_std(diffs)
      paired = f'{d_mean:+.4f} \u00b1 {d_sd:.4f}'
    train_s = sum(float(x['train_time_s']) for x in rows) / len(rows)
    lines.append(f"| {variant} | {_rf(rows[0]['receptive_field'])} | {mean:.4f} | {sd:.4f} | "
                 f"{per_seed} | {paired} | {rows[0]['flops_per_token']:.3g} | {train_s:.1f} |")
  r = s.retrieval
  lines += ['', '## Long-range retrieval', '',
            f'Sequences of {r.seq_len} tokens: a key and {r.value_repeats} copies of its value '
            f'at the start, a query at the end whose target is the value (at least '
            f'{r.seq_len - 1 - r.value_repeats} positions back); only the answer is scored; '
            f'{r.num_values} values (chance {1 / r.num_values:.3f}); {r.steps} steps of '
            f'{r.batch_size} sequences; accuracy on {r.eval_examples} held-out sequences.', '',
            '| variant | receptive field (tokens) | retrieval accuracy | validation loss |',
            '|---|---:|---:|---:|']
  for x in retrieval_rows:
    loss = '' if x.get('eval_loss') is None else f"{x['eval_loss']:.4f}"
    lines.append(f"| {x['variant']} | {_rf(x['receptive_field'])} | "
                 f"{x['retrieval_accuracy']:.3f} | {loss} |")
  lines += ['', '![quality](quality.png)', '']
  return '\n'.join(lines)


def main(config, argv):
  del argv
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/sparse_cost')
  s = section(config)
  if s.kind == 'cost':
    run_cost(config, FLAGS.workdir)
  else:
    run_quality(config, FLAGS.workdir)


if __name__ == '__main__':
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run_with_config(main)
