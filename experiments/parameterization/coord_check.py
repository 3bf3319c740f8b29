r"""Coordinate check: mean |activation| of every layer across widths, a few steps into training.

    python -m experiments.parameterization.coord_check [--workdir=runs/coord_check] \
        [--config=configs/experiments/parameterization/coord_check.py[:tiny]] \
        [--config.coord_check.widths=(64,128,256)]

For each parameterization in `coord_check.parameterizations` and each width (d_model) in
`coord_check.widths`, the config's model is built at that width (head_dim and d_ff derived,
base width `coord_check.base_width`) and trained `train.steps` steps with the trainer's
own step (research.training.trainer: the run's optimizer, per-class learning rates included);
before each step and after the last, one forward pass records the mean |x| of every
embedding, attention and feed-forward output, block output (the residual stream) and the
logits: the coordinate check of Yang et al. 2022 (Tensor Programs V) and the `mup` package.
Under μP these stay flat in width; under SP with Adam they grow with it, at least in
proportion (an Adam step moves a hidden matrix's output by about lr x fan_in, and this
codebase's SP starts every matrix at a constant std, so outputs grow as sqrt(fan_in) per
matrix already at init). configs/experiments/parameterization/coord_check.py has the numbers.

Writes WORKDIR/results.csv (parameterization, width, step, layer, mean_abs), results.json (the
same rows and, per parameterization and step, each layer's slope of log2 mean |x| against
log2 width with their median and largest), and coord_check_<parameterization>.png (one panel
per step, one line per layer, log-log). `coord_check(config)` is the importable whole.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from experiments.parameterization import plot as plot_lib
from research.errors import ConfigError

FLAGS = flags.FLAGS
DEFAULT_CONFIG = 'configs/experiments/parameterization/coord_check.py'
COLUMNS = ('parameterization', 'width', 'step', 'layer', 'mean_abs')
DATA = ('synthetic', 'config')
# Modules whose __call__ output is recorded, by class name (the residual stream's pieces).
_RECORDED = ('Embed', 'Block', 'Attention', 'MLP', 'MoE')
_LOGIT_METHODS = ('__call__', 'logits', 'decode_logits')


def define_flags() -> None:
  flags.DEFINE_string('workdir', 'runs/coord_check', 'output directory: results.csv, '
                      'results.json, coord_check_<parameterization>.png')


def default_section() -> ml_collections.ConfigDict:
  """Every field of `config.coord_check`, with its default."""
  s = ml_collections.ConfigDict()
  s.parameterizations = ('sp', 'mup')  # model.parameterization values, one PNG each
  s.widths = (64, 128, 256, 512, 1024)  # d_model of each model
  s.base_width = 64  # model.base_width: where μP is SP
  # 'synthetic': repeated random n-grams over the vocabulary (no corpus, no tokenizer);
  # 'config': the config's data section through the trainer's loader (tokenizer in WORKDIR).
  s.data = 'synthetic'
  return s


def with_section(c: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
  """Adds `coord_check` (defaults overridden by `values`) to config `c`."""
  c.coord_check = default_section()
  for key, value in values.items():
    c.coord_check[key] = value
  return c


def check_section(config) -> ml_collections.ConfigDict:
  if 'coord_check' not in config:
    raise ConfigError('--config', config.name, 'has no coord_check section: use '
                      f'{DEFAULT_CONFIG}')
  s = config.coord_check
  if s.data not in DATA:
    raise ConfigError('coord_check.data', s.data, f'choose one of {list(DATA)}')
  if len(s.widths) < 2 or any(w <= 0 for w in s.widths):
    raise ConfigError('coord_check.widths', s.widths, 'give two or more positive widths')
  return s


def width_config(config, parameterization: str, width: int) -> ml_collections.ConfigDict:
  """`config` at d_model `width` under `parameterization`: widths derived from d_model, an
  unrolled stack without remat and whole logits, so every layer's output is one array."""
  from research import config_lib  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(config)
  del c['coord_check']
  c.model.d_model = width
  c.model.parameterization = parameterization
  c.model.base_width = config.coord_check.base_width
  c.model.head_dim = 0
  c.model.d_ff = 0
  c.model.scan_layers = False
  c.model.remat = 'none'
  c.model.loss_chunk_size = 0
  c.model.dropout = 0.0
  return config_lib.finalize(c)


def _layer_key(context, vocab_size: int, out) -> str | None:
  """The record's name for an intercepted call, or None: module path for the recorded
  classes, 'logits' for the model's own vocabulary-sized output."""
  module = context.module
  if not isinstance(out, jax.Array) or out.ndim != 3:
    return None
  if not module.path and context.method_name in _LOGIT_METHODS:
    return 'logits' if out.shape[-1] == vocab_size else None
  if context.method_name == '__call__' and type(module).__name__ in _RECORDED:
    return '/'.join(module.path)
  return None


def activation_fn(run) -> Callable:
  """jit(params, batch) -> {layer: mean |x|}: one forward pass of the run's objective, each
  recorded module's output caught on its way out (flax method interception)."""
  vocab = run.eval_model.cfg.vocab_size

  def stats(params, batch):
    out = {}

    def record(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      key = _layer_key(context, vocab, y)
      if key is not None:
        out[key] = jnp.mean(jnp.abs(y.astype(jnp.float32)))
      return y

    with nn.intercept_methods(record):
      run.objective.loss_fn(run.eval_model, params, batch)
    return out

  with run.context():
    return jax.jit(stats)


def synthetic_tokens(vocab_size: int, first_id: int, eos_id: int, num_tokens: int,
                     seed: int) -> np.ndarray:
  """A learnable stream: one of 16 random n-grams (3 to 8 ids) repeated 5 to 30 times, then
  EOS, over and over."""
  rng = np.random.default_rng(seed)
  patterns = [rng.integers(first_id, vocab_size, rng.integers(3, 9)) for _ in range(16)]
  pieces, total = [], 0
  while total < num_tokens:
    piece = np.concatenate([np.tile(patterns[rng.integers(16)], rng.integers(5, 30)), [eos_id]])
    pieces.append(piece)
    total += len(piece)
  return np.concatenate(pieces)[:num_tokens].astype(np.int32)


class SyntheticBatches:
  """Host batches of the run's objective from `synthetic_tokens`: a function of (seed, step)."""

  def __init__(self, config):
    from research import objectives  # pylint: disable=g-import-not-at-top
    self.config = config
    self.objective = objectives.get_objective(config.objective.name)
    self.tokenizer = objectives.StandInTokenizer(config.data.vocab_size)
    first = self.tokenizer.first_free_id
    if config.data.vocab_size < first + 64:
      raise ConfigError('data.vocab_size', config.data.vocab_size,
                        f'synthetic coord-check data needs >= {first + 64} (ids below {first} '
                        'are special)')
    self.window = self.objective.window_len(config)
    self.tokens = synthetic_tokens(config.data.vocab_size, first, self.tokenizer.eos_id,
                                   200 * self.window, config.seed)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    b = self.config.train.batch_size
    rng = np.random.default_rng((self.config.seed, step))
    starts = rng.integers(0, len(self.tokens) - self.window, b)
    windows = np.stack([self.tokens[s:s + self.window] for s in starts])
    rngs = [np.random.default_rng((self.config.seed, step, i)) for i in range(b)]
    return self.objective.make_batch(windows, tokenizer=self.tokenizer, config=self.config,
                                     rngs=rngs)


def measure(config, parameterization: str, width: int, batches: Callable,
            devices=None) -> list[dict]:
  """Rows (parameterization, width, step, layer, mean_abs) of one width: activations on the
  batch of step t before update t, for t = 0..steps (the last after the last update)."""
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  run = trainer.build_run(config, devices=devices)
  state = trainer.init_state(run, config.seed)
  train_step = trainer.make_train_step(run)
  stats = activation_fn(run)
  rows = []
  steps = config.train.steps
  for t in range(steps + 1):
    batch = trainer.device_batch(run, batches(t))
    for layer, value in jax.device_get(stats(state.params, batch)).items():
      rows.append(dict(parameterization=parameterization, width=width, step=t, layer=layer,
                       mean_abs=float(value)))
    if t < steps:
      state, _ = train_step(state, batch)
  return rows


def slopes(rows: list[dict]) -> dict:
  """Per parameterization and step: each layer's least-squares slope of log2 mean |x| against
  log2 width, and their median and largest absolute value (0: flat; 1: doubles with width)."""
  out = {}
  keys = sorted({(r['parameterization'], r['step']) for r in rows})
  for name, step in keys:
    layers = {}
    for r in rows:
      if r['parameterization'] == name and r['step'] == step:
        layers.setdefault(r['layer'], []).append((r['width'], r['mean_abs']))
    per_layer = {}
    for layer, points in layers.items():
      x = np.log2([w for w, _ in points])
      y = np.log2([max(v, 1e-30) for _, v in points])
      per_layer[layer] = float(np.polyfit(x, y, 1)[0]) if len(set(x)) > 1 else 0.0
    values = list(per_layer.values())
    out.setdefault(name, {})[str(step)] = dict(
        layers=per_layer, median=float(np.median(values)),
        max_abs=float(max(abs(v) for v in values)))
  return out


def write_results(rows: list[dict], workdir: str) -> dict[str, str]:
  """results.csv and results.json (rows and slopes) in `workdir`; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = {'csv': os.path.join(workdir, 'results.csv'),
           'json': os.path.join(workdir, 'results.json')}
  with open(paths['csv'], 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  with open(paths['json'], 'w') as f:
    json.dump({'rows': rows, 'slopes': slopes(rows)}, f, indent=1)
  return paths


def batch_source(config, workdir: str | None) -> Callable[[int], dict]:
  """step -> host batch: synthetic, or the config's data through the trainer's loader."""
  if config.coord_check.data == 'synthetic':
    return SyntheticBatches(config)
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  run = trainer.build_run(width_config(config, 'sp', config.coord_check.widths[0]))
  dataset = trainer.load_dataset(run, workdir or os.path.join('runs', 'coord_check'))
  return lambda step: trainer.host_train_batch(run, dataset, step)


def coord_check(config, workdir: str | None = None, *, plot: bool = True, devices=None,
                log: Callable[[str], None] = print) -> dict:
  """The whole check: rows for every (parameterization, width), their slopes, and (with a
  workdir) the table and one PNG per parameterization. Returns {'rows', 'slopes', 'files'}.
  `devices`: the mesh's (default all), as research.training.trainer.build_run takes them."""
  s = check_section(config)
  batches = batch_source(config, workdir)
  rows = []
  for name in s.parameterizations:
    for width in s.widths:
      new = measure(width_config(config, name, width), name, width, batches, devices)
      rows += new
      last = {r['layer']: r['mean_abs'] for r in new if r['step'] == config.train.steps}
      log(f'{name} d_model={width}: mean |x| at step {config.train.steps}: logits '
          f'{last.get("logits", math.nan):.3g}, median over layers '
          f'{np.median(list(last.values())):.3g}')
  result = {'rows': rows, 'slopes': slopes(rows), 'files': {}}
  if workdir:
    result['files'] = write_results(rows, workdir)
    if plot:
      for name in s.parameterizations:
        result['files'][name] = plot_lib.coord_check_png(
            [r for r in rows if r['parameterization'] == name], name, s.base_width,
            os.path.join(workdir, f'coord_check_{name}.png'))
  return result


def main(config, argv):
  del argv
  if config is None:
    from research import config_lib  # pylint: disable=g-import-not-at-top
    config = config_lib.load_config(DEFAULT_CONFIG)
  result = coord_check(config, FLAGS.workdir)
  for name, by_step in result['slopes'].items():
    last = by_step[max(by_step, key=int)]
    print(f'{name}: slope of log2 mean |x| vs log2 width at step {max(by_step, key=int)}: '
          f'median {last["median"]:.2f}, largest {last["max_abs"]:.2f}')
  print(f"wrote {', '.join(result['files'].values())}")


if __name__ == '__main__':
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run_with_config(main, config_required=False)
