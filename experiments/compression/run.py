r"""Compression of one pre-trained decoder: quantization, pruning and distillation (issue 23).

    python -m experiments.compression.run \
        --config=configs/experiments/compression/study.py --workdir=runs/compression

From Python: `run_study(config, workdir)` (a `dataset=` may replace the config's data).

The config's model, data and train sections define the base decoder; `config.compression`
(`default_section`) the four parts, each in its own folder of the workdir:

1. base/: the decoder trained with research.training.trainer.train; the reference of every row.
2. ptq/NAME/: research.compress.quantize_workdir of base/ for every (`ptq.bits` x
   `ptq.group_sizes`, symmetric) case and, for `ptq.asymmetric_bits`, the asymmetric ones;
   validation perplexity, parameter bytes (int4: half a byte) and checkpoint bytes on disk.
3. prune/NAME/oneshot and prune/NAME/finetuned: research.compress.prune_workdir of base/ for
   every `prune.methods` x `prune.sparsities` (2:4 only at 0.5), evaluated as pruned, then
   fine-tuned `prune.finetune_steps` with init_from (magnitude and 2:4 keep their masks; heads
   and channels are smaller models). `prune.control` adds the unpruned base fine-tuned alike,
   so what the fine-tune gives by itself is visible.
4. distill/student and distill/scratch: a smaller decoder (`distill.d_model` ...) trained
   `distill.steps` on the same batches (same seed), once distilled from base/ (objective
   distill, the base frozen as teacher) and once from scratch (causal LM).

Every row's validation loss is over the same `train.eval_batches` batches of the validation
split; perplexity is exp(loss). Writes WORKDIR/results.csv (one row per run, `part` says which),
results.md (a table per part and a "what holds" section computed from the numbers), ptq.png,
pruning.png, distill.png and environment.json. A finished run (its result.json) is never redone;
an interrupted training run resumes from its checkpoint, an interrupted quantization or pruning
is written again.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
from typing import Callable

import ml_collections
from absl import flags

from experiments.sequence_mixers import run as mixers_run
from experiments.sparse_attention import run as sparse_run
from research import config_lib
from research.errors import ConfigError, UserError

FLAGS = flags.FLAGS
SECTION = 'compression'
PRUNE_METHODS = ('magnitude', '2:4', 'heads', 'channels')
COLUMNS = ('part', 'case', 'method', 'bits', 'group_size', 'symmetric', 'sparsity', 'finetuned',
           'steps', 'eval_loss', 'perplexity', 'perplexity_vs_base', 'params', 'param_bytes',
           'checkpoint_bytes', 'seconds', 'directory')
# pylint: disable=protected-access
write_csv, environment = sparse_run.write_csv, sparse_run.environment
_atomic_write, _read_json = sparse_run._atomic_write, sparse_run._read_json
_save_json = mixers_run._save_json
_run_config = sparse_run._run_config
# pylint: enable=protected-access


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'output directory: results.csv, results.md, PNGs, runs')


# ------------------------------------------------------------------------------------ config


def default_section() -> ml_collections.ConfigDict:
  """Every field of `config.compression`, with its default."""
  s = ml_collections.ConfigDict()
  s.ptq = ml_collections.ConfigDict()
  s.ptq.bits = (8, 4)
  s.ptq.group_sizes = (0, 32)  # 0: a scale per output channel; else per group of inputs
  s.ptq.asymmetric_bits = (4,)  # bit widths also run with min-max scales and a zero point
  s.ptq.layers = 'attention,mlp'  # research.compress.quantize's --layers
  s.prune = ml_collections.ConfigDict()
  s.prune.methods = PRUNE_METHODS
  s.prune.sparsities = (0.25, 0.5, 0.75)  # of weights, heads or channels; 2:4 is 0.5 only
  s.prune.finetune_steps = 100
  s.prune.finetune_lr = 1e-3
  s.prune.finetune_warmup_steps = 10
  s.prune.control = True  # also fine-tune the unpruned base the same way
  s.distill = ml_collections.ConfigDict()
  s.distill.d_model = 64  # the student; the teacher is the base
  s.distill.num_layers = 2
  s.distill.num_heads = 2
  s.distill.steps = 400
  s.distill.lr = 3e-3
  s.distill.warmup_steps = 30
  s.distill.eval_every = 100  # the loss curves' evaluations
  s.distill.alpha = 0.5
  s.distill.temperature = 2.0
  return s


def with_section(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Adds `compression` (defaults updated with `fields`) to a config."""
  return config_lib.add_section(config, SECTION, default_section(), fields)


def _positive(s, fields) -> None:
  for field in fields:
    node = s
    for part in field.split('.'):
      node = node[part]
    if not isinstance(node, int) or isinstance(node, bool) or node <= 0:
      raise ConfigError(f'{SECTION}.{field}', node, 'must be a positive integer')


def section(config) -> ml_collections.ConfigDict:
  """The validated `compression` section: every case it names can run on the base model."""
  if SECTION not in config:
    raise ConfigError(SECTION, None, 'the config has no `compression` section: build it with '
                      'experiments.compression.run.with_section(config, ...)')
  s = config[SECTION]
  _check_ptq(config, s.ptq)
  _check_prune(config, s.prune)
  _positive(s, ('distill.d_model', 'distill.num_layers', 'distill.num_heads', 'distill.steps',
                'distill.eval_every'))
  d = s.distill
  if d.d_model % d.num_heads:
    raise ConfigError(f'{SECTION}.distill.num_heads', d.num_heads,
                      f'must divide distill.d_model={d.d_model}')
  if not 0 <= d.alpha <= 1:
    raise ConfigError(f'{SECTION}.distill.alpha', d.alpha, 'must be in [0, 1]')
  if not d.temperature > 0:
    raise ConfigError(f'{SECTION}.distill.temperature', d.temperature, 'must be > 0')
  if not d.lr > 0:
    raise ConfigError(f'{SECTION}.distill.lr', d.lr, 'must be > 0')
  return s


def _model_cfg(config):
  from research import models  # pylint: disable=g-import-not-at-top
  return models.transformer_config(config.model, seq_len=config.data.seq_len)


def _check_ptq(config, p) -> None:
  from research.compress import quantize  # pylint: disable=g-import-not-at-top
  from research.layers import quantization  # pylint: disable=g-import-not-at-top
  for field, bits in (('bits', p.bits), ('asymmetric_bits', p.asymmetric_bits)):
    if any(b not in quantize.BITS for b in bits) or (field == 'bits' and not bits):
      raise ConfigError(f'{SECTION}.ptq.{field}', bits,
                        f'give bit widths from {sorted(quantize.BITS)}')
  kinds = [k.strip() for k in p.layers.split(',') if k.strip()]
  unknown = [k for k in kinds if k not in quantization.LAYER_KINDS]
  if not kinds or unknown:
    raise ConfigError(f'{SECTION}.ptq.layers', p.layers,
                      f'give comma-separated kinds from {sorted(quantization.LAYER_KINDS)}')
  if not p.group_sizes or any(not isinstance(g, int) or g < 0 for g in p.group_sizes):
    raise ConfigError(f'{SECTION}.ptq.group_sizes', p.group_sizes,
                      'give group sizes >= 0 (0: a scale per output channel)')
  for g in p.group_sizes:
    problem = quantization.group_size_problem(_model_cfg(config), kinds, g)
    if problem:
      raise ConfigError(f'{SECTION}.ptq.group_sizes', p.group_sizes, problem)


def _check_prune(config, p) -> None:
  from research.compress import prune  # pylint: disable=g-import-not-at-top
  unknown = [m for m in p.methods if m not in PRUNE_METHODS]
  if not p.methods or unknown or len(set(p.methods)) != len(p.methods):
    raise ConfigError(f'{SECTION}.prune.methods', p.methods,
                      f'give distinct methods from {list(PRUNE_METHODS)}')
  if not p.sparsities or any(not 0 < float(x) < 1 for x in p.sparsities):
    raise ConfigError(f'{SECTION}.prune.sparsities', p.sparsities,
                      'give fractions in (0, 1), e.g. (0.25, 0.5, 0.75)')
  _positive(config[SECTION], ('prune.finetune_steps',))
  if not p.finetune_lr > 0:
    raise ConfigError(f'{SECTION}.prune.finetune_lr', p.finetune_lr, 'must be > 0')
  cfg = _model_cfg(config)
  for sparsity in p.sparsities:
    if 'heads' in p.methods:
      try:
        prune.head_plan(config, _kept(cfg.num_heads, sparsity))
      except UserError as e:
        raise ConfigError(f'{SECTION}.prune.sparsities', p.sparsities,
                          f'heads at {sparsity}: {str(e).split(": ", 1)[-1]}') from None
    if 'channels' in p.methods and not 1 <= _kept(cfg.d_ff, sparsity) < cfg.d_ff:
      raise ConfigError(f'{SECTION}.prune.sparsities', p.sparsities,
                        f'channels at {sparsity} keep none or all of d_ff={cfg.d_ff}')


def _kept(total: int, sparsity: float) -> int:
  """What prune_workdir keeps of `total` heads or channels at `sparsity`."""
  return total - int(round(sparsity * total))


# ------------------------------------------------------------------------------- shared steps


def _config_for(config, overrides: dict, name: str):
  return _run_config(config, overrides, name, study=SECTION)


def _short(config, steps: int, eval_every: int | None = None) -> dict:
  """Overrides for a short run of `steps`: one checkpoint and evaluation at the end."""
  return {'train.steps': steps, 'train.eval_every': eval_every or steps,
          'train.checkpoint_every': steps,
          'train.log_every': max(1, min(config.train.log_every, steps // 5))}


def _evaluate(directory: str, dataset, config) -> float:
  return float(sparse_run._evaluate_checkpoint(  # pylint: disable=protected-access
      directory, dataset, num_batches=config.train.eval_batches)['eval/loss'])


def _train(c, directory: str, dataset) -> float:
  """Trains (or resumes) `c` in `directory`; the final validation loss."""
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  final = trainer.train(c, directory, dataset=dataset)
  sparse_run.check_finished(final, c.train.steps, directory)
  if final.get('eval/loss') is None or final.get('step') != c.train.steps:
    return _evaluate(directory, dataset, c)
  return float(final['eval/loss'])


def _fresh(directory: str) -> None:
  """Removes what an interrupted quantization or pruning left (they write from scratch)."""
  if os.path.exists(directory):
    shutil.rmtree(directory)


def _count(params) -> int:
  from research.compress import prune  # pylint: disable=g-import-not-at-top
  return prune._count(params)  # pylint: disable=protected-access


def _latest_checkpoint_bytes(directory: str) -> int:
  """Bytes on disk of the newest step folder of `directory`/checkpoints."""
  from research.compress import quantize  # pylint: disable=g-import-not-at-top
  root = os.path.join(directory, 'checkpoints')
  steps = [d for d in os.listdir(root) if d.isdigit()]
  return quantize.dir_bytes(os.path.join(root, max(steps, key=int))) if steps else 0


def _loss_line(done: dict) -> str:
  return (f"validation loss {done['eval_loss']:.4f}, perplexity "
          f"{math.exp(done['eval_loss']):.3f}")


def cached(directory: str, make: Callable[[], dict], log, label: str,
           describe: Callable[[dict], str] = _loss_line) -> dict:
  """result.json of `directory`, or `make()`'s result (timed) saved there: a study's finished
  part is never redone. `describe(result)` is what the log line says of a new result."""
  path = os.path.join(directory, 'result.json')
  done = _read_json(path)
  if done is not None:
    log(f'  {label}: done before, read {path}')
    return done
  start = time.perf_counter()
  done = make()
  done['seconds'] = round(time.perf_counter() - start, 1)
  os.makedirs(directory, exist_ok=True)
  _save_json(path, done)
  log(f"  {label}: {describe(done)} ({done['seconds']} s)")
  return done


# --------------------------------------------------------------------------------- the parts


def run_base(config, workdir: str, dataset, log) -> dict:
  directory = os.path.join(workdir, 'base')

  def make():
    c = _config_for(config, {}, f'{config.name}/base')
    log(f'[base] {c.model.num_layers} layers x d_model {c.model.d_model}: {c.train.steps} '
        f'steps of {c.train.batch_size} x {c.data.seq_len} tokens')
    loss = _train(c, directory, dataset)
    from research.compress import quantize  # pylint: disable=g-import-not-at-top
    import research  # pylint: disable=g-import-not-at-top
    params = research.load(directory).params
    return {'part': 'base', 'case': 'float32', 'method': 'none', 'bits': 32,
            'steps': c.train.steps, 'eval_loss': loss, 'params': _count(params),
            'param_bytes': quantize.tree_bytes(params),
            'checkpoint_bytes': _latest_checkpoint_bytes(directory), 'directory': 'base'}

  return cached(directory, make, log, 'base')


def ptq_cases(s) -> list[dict]:
  """(bits, group_size, symmetric) of every PTQ run, symmetric first."""
  cases = [{'bits': b, 'group_size': g, 'symmetric': True}
           for b in s.ptq.bits for g in s.ptq.group_sizes]
  cases += [{'bits': b, 'group_size': g, 'symmetric': False}
            for b in s.ptq.asymmetric_bits for g in s.ptq.group_sizes]
  return cases


def _ptq_name(case) -> str:
  scale = 'channel' if not case['group_size'] else f"g{case['group_size']}"
  return f"int{case['bits']}-{scale}-{'sym' if case['symmetric'] else 'asym'}"


def run_ptq(config, workdir: str, dataset, log, base_row: dict) -> list[dict]:
  from research.compress import quantize  # pylint: disable=g-import-not-at-top
  s = config[SECTION]
  base = os.path.join(workdir, 'base')
  cases = ptq_cases(s)
  rows = []
  for i, case in enumerate(cases):
    name = _ptq_name(case)
    directory = os.path.join(workdir, 'ptq', name)

    def make(case=case, name=name, directory=directory, i=i):
      log(f'[ptq {i + 1}/{len(cases)}] {name}')
      _fresh(directory)
      summary = quantize.quantize_workdir(base, directory, bits=case['bits'],
                                          group_size=case['group_size'],
                                          asymmetric=not case['symmetric'], layers=s.ptq.layers)
      return {'part': 'ptq', 'case': name, 'method': 'ptq', **case,
              'eval_loss': _evaluate(directory, dataset, config),
              'params': base_row['params'],  # the same weights, stored in fewer bits
              'param_bytes': summary['param_bytes_quantized'],
              'checkpoint_bytes': summary['checkpoint_bytes_quantized'],
              'directory': os.path.join('ptq', name)}

    rows.append(cached(directory, make, log, name))
  return rows


def prune_cases(s) -> list[dict]:
  """(method, sparsity) of every pruning run; 2:4 once, at 0.5."""
  cases = []
  for method in s.prune.methods:
    for sparsity in ((0.5,) if method == '2:4' else s.prune.sparsities):
      cases.append({'method': method, 'sparsity': float(sparsity)})
  return cases


def _prune_name(case) -> str:
  method = case['method'].replace(':', '_')
  return f"{method}-{round(100 * case['sparsity'])}"


def _finetune(config, source: str, directory: str, dataset, name: str) -> float:
  p = config[SECTION].prune
  c = _config_for(config, {'init_from': source, 'train.lr': p.finetune_lr,
                           'train.warmup_steps': p.finetune_warmup_steps,
                           **_short(config, p.finetune_steps)}, name)
  return _train(c, directory, dataset)


def run_prune(config, workdir: str, dataset, log, base_row: dict) -> list[dict]:
  from research.compress import prune  # pylint: disable=g-import-not-at-top
  s = config[SECTION]
  base = os.path.join(workdir, 'base')
  cases = prune_cases(s)
  steps = s.prune.finetune_steps
  rows = []
  if s.prune.control:
    directory = os.path.join(workdir, 'prune', 'control')

    def control():
      log(f'[prune control] the unpruned base fine-tuned {steps} steps')
      return {'part': 'prune', 'case': 'none-0 finetuned', 'method': 'none', 'sparsity': 0.0,
              'finetuned': True, 'steps': steps,
              'eval_loss': _finetune(config, base, directory, dataset,
                                     f'{config.name}/prune/control'),
              'params': base_row['params'], 'directory': 'prune/control'}

    rows.append(cached(directory, control, log, 'control'))
  for i, case in enumerate(cases):
    name = _prune_name(case)
    oneshot = os.path.join(workdir, 'prune', name, 'oneshot')
    tuned = os.path.join(workdir, 'prune', name, 'finetuned')

    def make_oneshot(case=case, name=name, oneshot=oneshot, i=i):
      log(f"[prune {i + 1}/{len(cases)}] {case['method']} at {case['sparsity']:g}: one-shot")
      _fresh(oneshot)
      sparsity = None if case['method'] == '2:4' else case['sparsity']  # 2:4 takes none
      summary = prune.prune_workdir(base, oneshot, case['method'], sparsity=sparsity)
      return {'part': 'prune', 'case': f'{name} one-shot', **case, 'finetuned': False,
              'steps': 0, 'eval_loss': _evaluate(oneshot, dataset, config),
              'params': summary['params_after'], 'directory': os.path.relpath(oneshot, workdir)}

    def make_tuned(case=case, name=name, oneshot=oneshot, tuned=tuned, i=i, params=None):
      log(f"[prune {i + 1}/{len(cases)}] {case['method']} at {case['sparsity']:g}: "
          f'fine-tune {steps} steps')
      return {'part': 'prune', 'case': f'{name} finetuned', **case, 'finetuned': True,
              'steps': steps, 'eval_loss': _finetune(config, oneshot, tuned, dataset,
                                                     f'{config.name}/prune/{name}'),
              'params': params, 'directory': os.path.relpath(tuned, workdir)}

    rows.append(cached(oneshot, make_oneshot, log, f'{name} one-shot'))
    # Fine-tuning keeps the pruned model's shapes (and masks): its parameter count.
    rows.append(cached(tuned, functools.partial(make_tuned, params=rows[-1]['params']), log,
                        f'{name} finetuned'))
  return rows


def _student(config, distilled: bool, workdir: str):
  d = config[SECTION].distill
  overrides = {'model.d_model': d.d_model, 'model.num_layers': d.num_layers,
               'model.num_heads': d.num_heads, 'model.num_kv_heads': 0, 'model.d_ff': 0,
               'model.head_dim': 0, 'train.lr': d.lr, 'train.warmup_steps': d.warmup_steps,
               **_short(config, d.steps, min(d.eval_every, d.steps))}
  if distilled:
    overrides.update({'objective.name': 'distill',
                      'distill.teacher': os.path.join(workdir, 'base'),
                      'distill.alpha': d.alpha, 'distill.temperature': d.temperature})
  kind = 'student' if distilled else 'scratch'
  return _config_for(config, overrides, f'{config.name}/distill/{kind}')


def run_distill(config, workdir: str, dataset, log, base_row: dict) -> list[dict]:
  del base_row
  d = config[SECTION].distill
  rows = []
  for distilled in (True, False):
    kind = 'student' if distilled else 'scratch'
    directory = os.path.join(workdir, 'distill', kind)

    def make(distilled=distilled, kind=kind, directory=directory):
      c = _student(config, distilled, workdir)
      how = (f'distilled from base (alpha {d.alpha}, T {d.temperature})' if distilled
             else 'from scratch (hard labels)')
      log(f'[distill] {kind}: {d.num_layers} layers x d_model {d.d_model}, {how}, {d.steps} '
          'steps')
      return {'part': 'distill', 'case': kind, 'method': 'distill' if distilled else 'scratch',
              'steps': d.steps, 'eval_loss': _train(c, directory, dataset),
              'params': mixers_run.count_params(c), 'directory': f'distill/{kind}'}

    rows.append(cached(directory, make, log, kind))
  return rows


def curves(directory: str) -> dict[str, list[tuple[int, float]]]:
  """{'eval/loss': [(step, loss)], 'train/loss': ...} from a run's metrics.jsonl."""
  import json  # pylint: disable=g-import-not-at-top
  out = {'eval/loss': [], 'train/loss': []}
  path = os.path.join(directory, 'metrics.jsonl')
  if not os.path.exists(path):
    return out
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      for key, points in out.items():
        if row.get(key) is not None:
          points.append((int(row['step']), float(row[key])))
  return out


# ----------------------------------------------------------------------------------- results


def _with_perplexity(rows, base_loss: float) -> list[dict]:
  base_ppl = math.exp(base_loss)
  for r in rows:
    r['perplexity'] = round(math.exp(r['eval_loss']), 4)
    r['perplexity_vs_base'] = round(r['perplexity'] / base_ppl - 1, 5)
  return rows


def run_study(config, workdir: str, *, dataset=None, log: Callable[[str], None] = print
              ) -> list[dict]:
  """Runs (or resumes) every part and writes the results; returns the rows of results.csv."""
  from experiments.compression import plot, report  # pylint: disable=g-import-not-at-top
  section(config)
  os.makedirs(workdir, exist_ok=True)
  start_all = time.perf_counter()
  if dataset is None:
    from research.data import pipeline  # pylint: disable=g-import-not-at-top
    # The tokenizer lands in base/, so every workdir copied from it (and sample) has it.
    dataset = pipeline.load_dataset(config.data, workdir=os.path.join(workdir, 'base'))
  csv_path = os.path.join(workdir, 'results.csv')
  rows = [run_base(config, workdir, dataset, log)]
  base_loss = rows[0]['eval_loss']
  for part in (run_ptq, run_prune, run_distill):
    rows += part(config, workdir, dataset, log, rows[0])
    write_csv(csv_path, _with_perplexity(rows, base_loss), COLUMNS)
  env = environment(_command())
  env['seconds'] = round(time.perf_counter() - start_all, 1)
  runs = {k: curves(os.path.join(workdir, 'distill', k)) for k in ('student', 'scratch')}
  subtitle = _subtitle(config, env)
  plot.ptq_plot(rows, workdir, subtitle)
  plot.pruning_plot(rows, workdir, subtitle)
  plot.distill_plot(runs, base_loss, workdir, subtitle)
  _atomic_write(os.path.join(workdir, 'results.md'), report.markdown(rows, runs, env, config))
  mixers_run._write_env(workdir, env)  # pylint: disable=protected-access
  log(f"wrote results.csv, results.md, ptq.png, pruning.png, distill.png in {workdir} "
      f"({env['seconds']} s)")
  return rows


def _subtitle(config, env) -> str:
  m = config.model
  return (f"{env['device']}: base {m.num_layers} x d_model {m.d_model}, {config.train.steps} "
          f'steps of {config.train.batch_size} x {config.data.seq_len}')


def _command() -> str:
  import sys  # pylint: disable=g-import-not-at-top
  return ' '.join(['python -m experiments.compression.run'] + sys.argv[1:])


def main(config, argv):
  del argv
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/compression')
  run_study(config, FLAGS.workdir)


if __name__ == '__main__':
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run_with_config(main)
