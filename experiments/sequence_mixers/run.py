r"""Recurrent sequence mixers against attention: cost, quality, recall and decoding.

    python -m experiments.sequence_mixers.run \
        --config=configs/experiments/sequence_mixers/cost.py --workdir=runs/mixers_cost

(and quality.py, recall.py, decode.py). The config's `sequence_mixers.kind` chooses the study:

* `cost`: forward + backward time and memory vs length of each recurrent mixer's chunkwise
  kernel (experiments/sequence_mixers/cost.py) beside sparse_attention's attention cases
  (`attention_cases`, e.g. full:xla and sliding:blockwise, with model.attention's window; full
  attention stops where its T x T scores pass `max_dense_bytes`). results.csv, results.md,
  time_vs_length.png and memory_vs_length.png (log-log).
* `quality`: one decoder per `variants` on the config's data (Shakespeare) through
  research.training.trainer.train in WORKDIR/lm/NAME; with `match_params`, each variant's
  model.d_ff is set so that its parameter count matches the first variant's. Validation loss
  and parameters: results.csv, results.md, quality.png.
* `recall`: multi-query associative recall (experiments/sequence_mixers/mqar.py): one model per
  (`recall.variants`, `recall.widths`) trained on a mixture of `recall.kv_pairs`, accuracy over
  the query positions per number of pairs. results.csv, results.md, recall.png.
* `decode`: decoding tokens/s and cache bytes vs `decode.contexts` for `decode.variants`
  (experiments/sequence_mixers/decode.py). results.csv, results.md, decode.png.

A finished training run (its result.json) is never rerun; an interrupted one resumes from its
checkpoint. Cost and decode rows are measured again (they take seconds to minutes).
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import ml_collections
from absl import flags

from experiments.sparse_attention import run as sparse_run
from research import config_lib
from research.errors import ConfigError, UserError

FLAGS = flags.FLAGS
SECTION = 'sequence_mixers'
KINDS = ('cost', 'quality', 'recall', 'decode')
COST_COLUMNS = ('case', 'pattern', 'implementation', 'length', 'time_s', 'time_min_s',
                'time_max_s', 'repeats', 'memory_bytes', 'compile_s', 'note')
QUALITY_COLUMNS = ('variant', 'num_layers', 'd_ff', 'params', 'params_vs_first', 'eval_loss',
                   'train_time_s', 'steps', 'name')
RECALL_COLUMNS = ('variant', 'd_model', 'num_layers', 'num_heads', 'state_floats_per_layer',
                  'params', 'kv_pairs', 'accuracy', 'eval_loss', 'chance', 'train_time_s',
                  'steps', 'name')
DECODE_COLUMNS = ('variant', 'context', 'prompt', 'new_tokens', 'batch', 'cache_bytes',
                  'prefill_s', 'step_s', 'decode_tokens_per_s')
write_csv, environment = sparse_run.write_csv, sparse_run.environment


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'output directory: results.csv, results.md, PNGs, runs')


# ------------------------------------------------------------------------------------ config


def default_section() -> ml_collections.ConfigDict:
  """Every field of `config.sequence_mixers`, with its default."""
  s = ml_collections.ConfigDict()
  s.kind = 'cost'  # 'cost' | 'quality' | 'recall' | 'decode'
  # cost (chunk size and Mamba-2's state_dim come from model.mixer)
  s.lengths = (1024, 2048, 4096, 8192, 16384, 32768)
  s.mixers = ('linear_attention', 'mamba2', 'gated_deltanet')
  s.attention_cases = 'full:xla,sliding:blockwise'  # sparse_attention's PATTERN:IMPLEMENTATION
  s.batch = 1
  s.heads = 4
  s.head_dim = 64
  s.warmup = 1
  s.repeats = 3
  s.max_dense_bytes = 8e9  # skip full attention where its score-sized arrays pass this
  # quality: model.mixer patterns (variants.py), trained on the config's data
  s.variants = ('attention', 'linear_attention', 'mamba2', 'gated_deltanet',
                'gated_deltanet*3,attention')
  s.match_params = True  # set each variant's model.d_ff so its parameters match the first's
  # recall (MQAR)
  s.recall = ml_collections.ConfigDict()
  s.recall.variants = ('attention', 'linear_attention', 'mamba2', 'gated_deltanet',
                       'gated_deltanet*3,attention', 'gated_deltanet*7,attention/8')
  s.recall.widths = (32, 64)  # model.d_model
  # Widths for the hybrids and for variants of their own depth (PATTERN/LAYERS, e.g. a hybrid's
  # attention-only control); (): recall.widths.
  s.recall.hybrid_widths = ()
  s.recall.num_heads = 2
  s.recall.kv_pairs = (4, 8, 16, 32)
  s.recall.num_keys = 64
  s.recall.num_values = 64
  s.recall.seq_len = 128
  s.recall.steps = 500
  s.recall.batch_size = 32
  s.recall.lr = 3e-3
  s.recall.warmup_steps = 50
  s.recall.eval_examples = 256
  # decode
  s.decode = ml_collections.ConfigDict()
  s.decode.variants = ('attention', 'sliding@256', 'linear_attention', 'mamba2',
                       'gated_deltanet', 'gated_deltanet*3,attention')
  s.decode.contexts = (256, 1024, 4096, 16384)  # prompt + generated tokens
  s.decode.new_tokens = 64
  s.decode.batch = 1
  s.decode.repeats = 3  # timed calls (median) after one that compiles
  return s


def with_section(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Adds `sequence_mixers` (defaults updated with `fields`) to a config."""
  return config_lib.add_section(config, SECTION, default_section(), fields)


def section(config) -> ml_collections.ConfigDict:
  """The validated `sequence_mixers` section (every variant and case parsed)."""
  if SECTION not in config:
    raise ConfigError(SECTION, None, 'the config has no `sequence_mixers` section: build it '
                      'with experiments.sequence_mixers.run.with_section(config, ...)')
  from experiments.sequence_mixers import variants  # pylint: disable=g-import-not-at-top
  from experiments.sparse_attention import cost as attention_cost  # pylint: disable=g-import-not-at-top
  from research.layers import mixers  # pylint: disable=g-import-not-at-top
  s = config[SECTION]
  if s.kind not in KINDS:
    raise ConfigError(f'{SECTION}.kind', s.kind, f'choose one of {list(KINDS)}')
  if not s.lengths or any(int(t) <= 0 for t in s.lengths):
    raise ConfigError(f'{SECTION}.lengths', s.lengths, 'give positive lengths')
  for m in s.mixers:
    if m not in mixers.RECURRENT:
      raise ConfigError(f'{SECTION}.mixers', s.mixers,
                        f"unknown mixer '{m}': choose from {list(mixers.RECURRENT)}")
  if s.attention_cases:
    attention_cost.parse_cases(s.attention_cases)
  for field, names in (('variants', s.variants), ('recall.variants', s.recall.variants),
                       ('decode.variants', s.decode.variants)):
    if not names:
      raise ConfigError(f'{SECTION}.{field}', names, 'give at least one variant')
    for name in names:
      variants.parse(name, f'{SECTION}.{field}')
  for field in ('repeats', 'batch', 'heads', 'head_dim'):
    if s[field] <= 0:
      raise ConfigError(f'{SECTION}.{field}', s[field], 'must be a positive integer')
  from experiments.sequence_mixers import mqar  # pylint: disable=g-import-not-at-top
  r = s.recall
  if not r.kv_pairs or max(r.kv_pairs) > min(r.num_keys, mqar.max_pairs(r.seq_len)):
    raise ConfigError(f'{SECTION}.recall.kv_pairs', r.kv_pairs,
                      f'each count must be at most recall.num_keys={r.num_keys} (keys are '
                      f'distinct) and {mqar.max_pairs(r.seq_len)} (4 tokens a pair and its '
                      f'query in recall.seq_len={r.seq_len})')
  extra = sorted(set(r.hybrid_widths) - set(r.widths))
  if extra:
    raise ConfigError(f'{SECTION}.recall.hybrid_widths', r.hybrid_widths,
                      f'{extra} not in recall.widths={tuple(r.widths)}: hybrids run at a subset '
                      'of the widths (or () for all)')
  new, contexts = s.decode.new_tokens, s.decode.contexts
  if new < 2 or any(int(t) <= new for t in contexts):
    raise ConfigError(f'{SECTION}.decode.contexts', contexts,
                      f'each context must exceed decode.new_tokens={new} (>= 2): it holds the '
                      'prompt and the generated tokens')
  return s


# -------------------------------------------------------------------------------------- cost


def cost_markdown(rows, env: dict, s, config) -> str:
  cases = list(dict.fromkeys(r['case'] for r in rows))
  lengths = sorted({r['length'] for r in rows})
  by = {(r['case'], r['length']): r for r in rows}
  mix = config.model.mixer

  def table(title, cell):
    out = [f'## {title}', '', '| length | ' + ' | '.join(cases) + ' |',
           '|---:|' + '---:|' * len(cases)]
    for t in lengths:
      cells = []
      for c in cases:
        r = by.get((c, t))
        cells.append('' if r is None else (cell(r) if r.get('time_s') else 'skipped'))
      out.append(f'| {t:,} | ' + ' | '.join(cells) + ' |')
    return out + ['']

  lines = ['# Sequence mixers: cost vs length', '',
           f"{env['date']}, {env['device']} ({env['backend']}, {env['cpu_count']} CPUs), "
           f"jax {env['jax']}, load average {env['load_average']} at the end.", '',
           f"Command: `{env['command']}`", '',
           f'Forward + backward (gradients of every input) of one layer\'s sequence mixing, '
           f'batch {s.batch}, {s.heads} heads x {s.head_dim}: the recurrent mixers\' chunkwise '
           f'kernel (chunks of {mix.chunk_size}; Mamba-2 state_dim {mix.state_dim}) and '
           f'attention ({s.attention_cases}; window {config.model.attention.window}). Time: '
           f'median of {s.repeats} after {s.warmup} warm-up; memory: XLA\'s compiled estimate '
           '(temporaries + arguments + outputs).', '']
  lines += table('Time (s)', lambda r: sparse_run._fmt_s(r['time_s']))  # pylint: disable=protected-access
  lines += table('Memory (MiB)', lambda r: sparse_run._fmt_bytes(r['memory_bytes']))  # pylint: disable=protected-access
  lines += ['## Time growth per doubling of length', '',
            '| from -> to | ' + ' | '.join(cases) + ' |', '|---|' + '---:|' * len(cases)]
  for a, b in zip(lengths, lengths[1:]):
    cells = [sparse_run.growth(rows, c, a, b) for c in cases]
    lines.append(f'| {a:,} -> {b:,} | ' + ' | '.join('' if g is None else f'{g:.2f}x'
                                                     for g in cells) + ' |')
  lines += sparse_run.notes_lines(rows)
  lines += ['', '![time](time_vs_length.png)', '', '![memory](memory_vs_length.png)', '']
  return '\n'.join(lines)


def run_cost(config, workdir: str, *, log: Callable[[str], None] = print) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from experiments.sequence_mixers import cost  # pylint: disable=g-import-not-at-top
  from experiments.sparse_attention import cost as attention_cost, plot  # pylint: disable=g-import-not-at-top
  s = section(config)
  att, mix = config.model.attention, config.model.mixer
  dtype = jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  os.makedirs(workdir, exist_ok=True)
  csv_path = os.path.join(workdir, 'results.csv')
  cases = attention_cost.parse_cases(s.attention_cases) if s.attention_cases else []
  rows = []
  start_all = time.perf_counter()
  for length in sorted(int(t) for t in s.lengths):
    for case in cases:
      pattern = attention_cost.pattern_of(case, att)
      row = {'case': case.name, 'pattern': case.pattern, 'implementation': case.implementation,
             'length': length}
      need = attention_cost.dense_bytes(s.batch, s.heads, length)
      if case.implementation in attention_cost.QUADRATIC and need > s.max_dense_bytes:
        row['note'] = (f'skipped: its T x T scores need about {need / 2**30:.1f} GiB, more than '
                       f'{SECTION}.max_dense_bytes={s.max_dense_bytes / 2**30:.1f} GiB')
      else:
        row = attention_cost.measure(case, pattern, length, batch=s.batch, heads=s.heads,
                                     kv_heads=s.heads, head_dim=s.head_dim, dtype=dtype,
                                     warmup=s.warmup, repeats=s.repeats)
      rows.append(row)
      _log_cost(log, row)
      write_csv(csv_path, rows, COST_COLUMNS)
    for kind in s.mixers:
      rows.append(cost.measure(kind, length, chunk_size=mix.chunk_size, batch=s.batch,
                               heads=s.heads, head_dim=s.head_dim, state_dim=mix.state_dim,
                               dtype=dtype, warmup=s.warmup, repeats=s.repeats))
      _log_cost(log, rows[-1])
      write_csv(csv_path, rows, COST_COLUMNS)
  env = environment(_command())
  env['seconds'] = round(time.perf_counter() - start_all, 1)
  subtitle = (f"{env['device']}, B={s.batch} H={s.heads} K={s.head_dim}; chunk "
              f"{mix.chunk_size}, window {att.window}")
  plot.cost_plots([r for r in rows if r.get('time_s') or r.get('note')], workdir, subtitle,
                  what='Sequence mixing')
  sparse_run._atomic_write(os.path.join(workdir, 'results.md'),  # pylint: disable=protected-access
                           cost_markdown(rows, env, s, config))
  _write_env(workdir, env)
  log(f"wrote results.csv, results.md, time_vs_length.png, memory_vs_length.png in {workdir} "
      f"({env['seconds']} s)")
  return rows


def _log_cost(log, row):
  if row.get('note'):
    log(f"{row['length']:>7,} {row['case']:<34} {row['note']}")
  else:
    log(f"{row['length']:>7,} {row['case']:<34} {row['time_s']:9.4f} s  "
        f"{(row['memory_bytes'] or 0) / 2**20:10,.0f} MiB")


def _command() -> str:
  import sys  # pylint: disable=g-import-not-at-top
  return ' '.join(['python -m experiments.sequence_mixers.run'] + sys.argv[1:])


def _write_env(workdir: str, env: dict) -> None:
  with open(os.path.join(workdir, 'environment.json'), 'w') as f:
    json.dump(env, f, indent=1)


# ------------------------------------------------------------------------- models and params


def _variant_config(config, variant, extra: dict, name: str):
  from experiments.sequence_mixers import variants  # pylint: disable=g-import-not-at-top
  return sparse_run._run_config(config, {**variants.overrides(variant), **extra}, name,  # pylint: disable=protected-access
                                study=SECTION)


def count_params(run_config) -> int:
  """Parameters of the model `run_config` builds (shapes only: nothing is computed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from research import models  # pylint: disable=g-import-not-at-top
  model = models.build_model(run_config)
  tokens = jax.ShapeDtypeStruct((1, run_config.data.seq_len), jnp.int32)
  shapes = jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)['params']
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def matching_d_ff(config, variant, target: int, extra: dict) -> int:
  """The model.d_ff (a multiple of 8) whose parameter count is nearest `target`: parameters are
  linear in d_ff, so two counts give the line."""
  counts = {}
  for d_ff in (256, 512):
    counts[d_ff] = count_params(_variant_config(config, variant, {**extra, 'model.d_ff': d_ff},
                                                'count'))
  per_unit = (counts[512] - counts[256]) / 256
  d_ff = 256 + (target - counts[256]) / per_unit
  return max(8, int(round(d_ff / 8)) * 8)


def _read_json(path):
  return sparse_run._read_json(path)  # pylint: disable=protected-access


def _save_json(path: str, data: dict) -> None:
  with open(path, 'w') as f:
    json.dump(data, f, indent=1)


# ----------------------------------------------------------------------------------- quality


def run_quality(config, workdir: str, *, dataset=None, log: Callable[[str], None] = print
                ) -> list[dict]:
  from experiments.sequence_mixers import plot, variants  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  s = section(config)
  os.makedirs(workdir, exist_ok=True)
  start_all = time.perf_counter()
  rows, target = [], None
  todo = [variants.parse(v) for v in s.variants]
  for i, v in enumerate(todo):
    directory = os.path.join(workdir, 'lm', v.slug)
    done = _read_json(os.path.join(directory, 'result.json'))
    if done is None:
      extra = {}
      if s.match_params and target is not None:
        extra['model.d_ff'] = matching_d_ff(config, v, target, {})
      c = _variant_config(config, v, extra, f'{config.name}/lm/{v.name}')
      params = count_params(c)
      if dataset is None:
        from research.data import pipeline  # pylint: disable=g-import-not-at-top
        dataset = pipeline.load_dataset(config.data, workdir=workdir)
      log(f'[lm {i + 1}/{len(todo)}] {v.name}: {params:,} parameters '
          f'(d_ff {c.model.d_ff or "auto"}), {c.train.steps} steps of {c.train.batch_size} x '
          f'{c.data.seq_len} tokens')
      start = time.perf_counter()
      final = trainer.train(c, directory, dataset=dataset)
      sparse_run.check_finished(final, c.train.steps, directory)
      loss = final.get('eval/loss')
      if loss is None:
        loss = sparse_run._evaluate_checkpoint(directory, dataset,  # pylint: disable=protected-access
                                               num_batches=c.train.eval_batches)['eval/loss']
      from research import models  # pylint: disable=g-import-not-at-top
      cfg = models.transformer_config(c.model, seq_len=c.data.seq_len)
      done = {'variant': v.name, 'num_layers': cfg.num_layers, 'd_ff': cfg.d_ff,
              'params': params, 'eval_loss': float(loss),
              'train_time_s': round(time.perf_counter() - start, 1), 'steps': c.train.steps,
              'name': c.name}
      _save_json(os.path.join(directory, 'result.json'), done)
      log(f"  {v.name}: validation loss {done['eval_loss']:.4f} ({done['train_time_s']} s)")
    if target is None:
      target = done['params']
    done['params_vs_first'] = round(done['params'] / target - 1, 4)
    rows.append(done)
    write_csv(os.path.join(workdir, 'results.csv'), rows, QUALITY_COLUMNS)
  env = environment(_command())
  env['seconds'] = round(time.perf_counter() - start_all, 1)
  m = config.model
  subtitle = (f"{env['device']}: {m.num_layers} layers x d_model {m.d_model}, "
              f"{config.train.steps} steps of {config.train.batch_size} x {config.data.seq_len}")
  plot.quality_plot(rows, workdir, subtitle)
  sparse_run._atomic_write(os.path.join(workdir, 'results.md'),  # pylint: disable=protected-access
                           quality_markdown(rows, env, config))
  _write_env(workdir, env)
  log(f'wrote results.csv, results.md, quality.png in {workdir}')
  return rows


def quality_markdown(rows, env, config) -> str:
  m, s = config.model, config[SECTION]
  lines = ['# Sequence mixers: quality', '',
           f"{env['date']}, {env['device']} ({env['backend']}, {env['cpu_count']} CPUs), "
           f"jax {env['jax']}; {env['seconds'] / 60:.1f} minutes in this invocation; load "
           f"average {env['load_average']} at the end.", '', f"Command: `{env['command']}`", '',
           f'Decoders of {m.num_layers} layers x d_model {m.d_model} ({m.num_heads} heads), '
           f'{config.data.source}, {config.train.steps} steps of {config.train.batch_size} x '
           f'{config.data.seq_len} tokens, one seed; validation loss over '
           f'{config.train.eval_batches} batches (the same for every run). '
           + ('Each variant\'s d_ff is set so that its parameters match the first\'s.'
              if s.match_params else 'd_ff as configured.'), '',
           '| variant | layers | d_ff | parameters | vs first | validation loss | train s |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['variant']} | {r['num_layers']} | {r['d_ff']} | {r['params']:,} | "
                 f"{r['params_vs_first']:+.1%} | {r['eval_loss']:.4f} | {r['train_time_s']} |")
  lines += ['', '![quality](quality.png)', '']
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------ recall


def state_floats(run_config) -> dict[str, int]:
  """Per layer kind, the floats a layer carries from token to token in one row (attention: its
  key and value per position, so 'per token')."""
  from experiments.sequence_mixers import cost  # pylint: disable=g-import-not-at-top
  from research import models  # pylint: disable=g-import-not-at-top
  from research.layers import mixers  # pylint: disable=g-import-not-at-top
  cfg = models.transformer_config(run_config.model, seq_len=run_config.data.seq_len)
  out = {}
  for kind in dict.fromkeys(cfg.mixer.layer_kinds(cfg.num_layers)):
    if kind == 'attention':
      out[kind] = 2 * cfg.num_kv_heads * cfg.head_dim
      continue
    head_dim = mixers.head_dim_of(kind, cfg.mixer, d_model=cfg.d_model,
                                  num_heads=cfg.num_heads, head_dim=cfg.head_dim)
    k, v, _ = cost.kernel_shapes(kind, head_dim=head_dim, state_dim=cfg.mixer.state_dim)
    out[kind] = cfg.num_heads * k * v
  return out


def _describe_state(floats: dict[str, int]) -> str:
  return ', '.join(f'{k}: {n:,}' + (' per token' if k == 'attention' else '')
                   for k, n in floats.items())


def run_recall(config, workdir: str, *, log: Callable[[str], None] = print) -> list[dict]:
  from experiments.sequence_mixers import mqar, plot, variants  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  s = section(config)
  r = s.recall
  os.makedirs(workdir, exist_ok=True)
  start_all = time.perf_counter()
  objective = mqar.register()
  data = mqar.MQARDataset(kv_pairs=r.kv_pairs, num_keys=r.num_keys, num_values=r.num_values,
                          eval_examples=r.eval_examples, seed=config.seed)
  vocab = data.tokenizer.vocab_size
  hybrid_widths = tuple(r.hybrid_widths) or tuple(r.widths)
  todo = [(v, int(w)) for w in r.widths for v in map(variants.parse, r.variants)
          if (len(set(v.kinds)) == 1 and not v.num_layers) or w in hybrid_widths]
  rows = []
  for i, (v, width) in enumerate(todo):
    directory = os.path.join(workdir, f'd{width}', v.slug)
    done = _read_json(os.path.join(directory, 'result.json'))
    if done is None:
      c = _variant_config(config, v, {
          'model.d_model': width, 'model.num_heads': r.num_heads, 'data.seq_len': r.seq_len,
          'data.vocab_size': vocab, 'model.vocab_size': vocab, 'train.steps': r.steps,
          'train.batch_size': r.batch_size, 'train.lr': r.lr,
          'train.warmup_steps': r.warmup_steps, 'train.eval_every': r.steps,
          'train.checkpoint_every': r.steps, 'train.log_every': max(1, r.steps // 5),
          'train.eval_batches': 0, 'objective.name': objective, 'model.family': 'decoder'},
                            f'{config.name}/d{width}/{v.name}')
      floats = state_floats(c)
      log(f'[recall {i + 1}/{len(todo)}] {v.name}, d_model {width}: state '
          f'{_describe_state(floats)}; {r.steps} steps')
      start = time.perf_counter()
      final = trainer.train(c, directory, dataset=data)
      sparse_run.check_finished(final, r.steps, directory)
      if final.get('eval/accuracy') is None or final.get('step') != r.steps:
        final = sparse_run._evaluate_checkpoint(directory, data)  # pylint: disable=protected-access
      done = {'variant': v.name, 'd_model': width, 'num_layers': c.model.num_layers,
              'num_heads': r.num_heads, 'state': floats,
              'state_floats_per_layer': max((n for k, n in floats.items() if k != 'attention'),
                                            default=None),
              'params': count_params(c), 'chance': 1 / r.num_values,
              # str keys: what a reread result.json gives back
              'accuracy': {str(n): final[f'eval/kv{n}/accuracy'] for n in r.kv_pairs},
              'eval_loss': {str(n): final[f'eval/kv{n}/loss'] for n in r.kv_pairs},
              'train_time_s': round(time.perf_counter() - start, 1), 'steps': r.steps,
              'name': c.name}
      _save_json(os.path.join(directory, 'result.json'), done)
      log(f'  {v.name}, d_model {width}: accuracy ' + ', '.join(
          f"{n} pairs {done['accuracy'][str(n)]:.3f}" for n in r.kv_pairs) +
          f" ({done['train_time_s']} s)")
    for n in r.kv_pairs:
      rows.append({**done, 'kv_pairs': int(n), 'accuracy': done['accuracy'][str(n)],
                   'eval_loss': done['eval_loss'][str(n)]})
    write_csv(os.path.join(workdir, 'results.csv'), rows, RECALL_COLUMNS)
  env = environment(_command())
  env['seconds'] = round(time.perf_counter() - start_all, 1)
  subtitle = (f"{env['device']}: MQAR, seq_len {r.seq_len}, {r.num_keys} keys, "
              f"{r.num_values} values; {r.steps} steps of {r.batch_size}")
  plot.recall_plot(rows, workdir, subtitle)
  sparse_run._atomic_write(os.path.join(workdir, 'results.md'),  # pylint: disable=protected-access
                           recall_markdown(rows, env, config))
  _write_env(workdir, env)
  log(f'wrote results.csv, results.md, recall.png in {workdir}')
  return rows


def recall_markdown(rows, env, config) -> str:
  r = config[SECTION].recall
  kv = [int(n) for n in r.kv_pairs]
  lines = ['# Sequence mixers: multi-query associative recall (MQAR)', '',
           f"{env['date']}, {env['device']} ({env['backend']}, {env['cpu_count']} CPUs), "
           f"jax {env['jax']}; {env['seconds'] / 60:.1f} minutes in this invocation; load "
           f"average {env['load_average']} at the end.", '', f"Command: `{env['command']}`", '',
           f'Sequences of {r.seq_len} tokens: n key-value pairs, then every key queried once at '
           f'random places; accuracy over the query positions only, on {r.eval_examples} '
           f'held-out sequences per n ({r.num_keys} keys, {r.num_values} values: chance '
           f'{1 / r.num_values:.3f}). One model per row, trained {r.steps} steps of '
           f'{r.batch_size} sequences with n drawn from {kv}; {r.num_heads} heads. State: the '
           'floats one recurrent layer carries per row (attention: its cache grows by '
           '2 x d_model floats per token).', '',
           '| d_model | variant | layers | state floats / layer | parameters | ' +
           ' | '.join(f'{n} pairs' for n in kv) + ' | train s |',
           '|---:|---|---:|---:|---:|' + '---:|' * len(kv) + '---:|']
  seen = {}
  for row in rows:
    seen.setdefault((row['d_model'], row['variant']), {})[int(row['kv_pairs'])] = row
  for (width, variant), by_n in seen.items():
    first = next(iter(by_n.values()))
    state = first.get('state_floats_per_layer')
    lines.append(f"| {width} | {variant} | {first['num_layers']} | "
                 f"{'' if state in (None, '') else f'{int(state):,}'} | {first['params']:,} | "
                 + ' | '.join(f"{by_n[n]['accuracy']:.3f}" if n in by_n else '' for n in kv)
                 + f" | {first['train_time_s']} |")
  lines += ['', '![recall](recall.png)', '']
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------ decode


def run_decode(config, workdir: str, *, log: Callable[[str], None] = print) -> list[dict]:
  from experiments.sequence_mixers import decode, plot, variants  # pylint: disable=g-import-not-at-top
  s = section(config)
  d = s.decode
  os.makedirs(workdir, exist_ok=True)
  start_all = time.perf_counter()
  rows = []
  for v in (variants.parse(x) for x in d.variants):
    c = _variant_config(config, v, {}, f'{config.name}/{v.name}')
    for context in sorted(int(t) for t in d.contexts):
      row = {'variant': v.name, **decode.measure(c, context, d.new_tokens, batch=d.batch,
                                                 repeats=d.repeats)}
      rows.append(row)
      rate = row['decode_tokens_per_s']
      log(f"{v.name:<28} {context:>7,}: cache {row['cache_bytes'] / 2**20:9.2f} MiB, prefill "
          f"{row['prefill_s']:7.3f} s, {'no rate' if rate is None else f'{rate:8.1f}'} tokens/s")
      write_csv(os.path.join(workdir, 'results.csv'), rows, DECODE_COLUMNS)
  env = environment(_command())
  env['seconds'] = round(time.perf_counter() - start_all, 1)
  m = config.model
  subtitle = (f"{env['device']}: {m.num_layers} layers x d_model {m.d_model}, batch {d.batch}, "
              f"{d.new_tokens} generated tokens")
  plot.decode_plot(rows, workdir, subtitle)
  sparse_run._atomic_write(os.path.join(workdir, 'results.md'),  # pylint: disable=protected-access
                           decode_markdown(rows, env, config))
  _write_env(workdir, env)
  log(f'wrote results.csv, results.md, decode.png in {workdir}')
  return rows


def decode_markdown(rows, env, config) -> str:
  m, d = config.model, config[SECTION].decode
  contexts = sorted({r['context'] for r in rows})
  names = list(dict.fromkeys(r['variant'] for r in rows))
  by = {(r['variant'], r['context']): r for r in rows}
  lines = ['# Sequence mixers: decoding cost', '',
           f"{env['date']}, {env['device']} ({env['backend']}, {env['cpu_count']} CPUs), "
           f"jax {env['jax']}; {env['seconds'] / 60:.1f} minutes in this invocation; load "
           f"average {env['load_average']} at the end.", '', f"Command: `{env['command']}`", '',
           f'research.inference.decoding.generate (greedy), {m.num_layers} layers x d_model '
           f'{m.d_model} ({m.num_heads} heads), batch {d.batch}: a prompt of context - '
           f'{d.new_tokens} tokens, then {d.new_tokens} generated. Tokens/s: batch / the '
           'median time of one decoding step against a cache of the context\'s length '
           '(experiments/sequence_mixers/decode.py); prefill: the median time of generate with '
           '1 new token, after a compiling call. Cache: the nbytes of init_cache\'s leaves for '
           'the context.', '']
  for title, cell in (('Decode tokens/s', lambda r: '' if r['decode_tokens_per_s'] in (None, '')
                        else f"{r['decode_tokens_per_s']:,.0f}"),
                      ('Cache (MiB)', lambda r: f"{r['cache_bytes'] / 2**20:,.2f}"),
                      ('Prefill (s)', lambda r: sparse_run._fmt_s(r['prefill_s']))):  # pylint: disable=protected-access
    lines += [f'## {title}', '', '| variant | ' + ' | '.join(f'{t:,}' for t in contexts) + ' |',
              '|---|' + '---:|' * len(contexts)]
    for name in names:
      lines.append(f'| {name} | ' + ' | '.join(cell(by[(name, t)]) if (name, t) in by else ''
                                              for t in contexts) + ' |')
    lines.append('')
  lines += ['![decode](decode.png)', '']
  return '\n'.join(lines)


def main(config, argv):
  del argv
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/mixers_cost')
  s = section(config)
  {'cost': run_cost, 'quality': run_quality, 'recall': run_recall,
   'decode': run_decode}[s.kind](config, FLAGS.workdir)


if __name__ == '__main__':
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run_with_config(main)
