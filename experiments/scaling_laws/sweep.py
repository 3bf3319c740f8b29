"""Scaling-law sweeps as data: the grid of (model size, budget) runs and each run's recipe.

A sweep config is an ordinary training config (`research.config_lib.base_config()`, e.g. a
Shakespeare decoder) plus a `sweep` section, `default_sweep()` with its documented fields:

* **Model sizes**: an explicit `sizes` list of (d_model, num_layers, num_heads), or the
  width/depth rule `widths` with `depths` (one per width) or `aspect_ratio` (num_layers =
  round(d_model / aspect_ratio)), and num_heads = d_model // head_dim. `ffn_ratio` (d_ff =
  ffn_ratio x d_model, rounded up to `ffn_multiple`; 0: the model's own rule) and `kv_group_size`
  (query heads per key/value head) apply to every size.
* **Budgets**, exactly one of:
  `budgets`: IsoFLOP compute budgets C in training FLOP. Every size trains for
    steps = round(C / F) where F is the FLOPs of one step: by default (`flops_rule='exact'`) the
    trainer's own per-architecture count (`research.training.flops.flops_per_step`: 6 x matmul
    parameters, unembedding included, plus causal attention), so the FLOPs actually spent,
    steps x F, match C to within one step and the runs of one budget form an IsoFLOP group for
    the fit. With `flops_rule='6nd'`, F = 6 N x tokens per step (N: all parameters), Kaplan's
    and Chinchilla's C = 6 N D.
  `tokens`: token budgets D; every size trains on each (a Kaplan-style N x D grid).
  `tokens_per_param`: D = r x N for each ratio r (e.g. Chinchilla's 20).
* **Recipe per size**: learning rate `train.lr x (lr_ref_width / d_model)^lr_width_power`, or
  the explicit per-size list `lrs`; or, with a `parameterization` ('sp' | 'mup',
  experiments/parameterization), no per-size rule: every size gets model.parameterization,
  model.base_width = `base_width` and train.lr = `base_lr`, the rate tuned at the base width
  that the parameterization transfers across widths. `lr_grid` adds a learning-rate axis:
  every (size, budget) trains at each of its rates (the learning-rate transfer study). Then
  linear warmup over `warmup_steps` (if > 0) or `warmup_fraction` of the run, and a `schedule`
  (cosine) decay to `min_lr_ratio` (0.1: a 10x decay) ending exactly at the run's last step
  (train.steps = D / tokens per step).
* Runs with fewer than `min_steps` (or, if set, more than `max_steps`) steps, or outside
  [`min_tokens_per_param`, `max_tokens_per_param`] (0: no bound; IsoFLOP profiles need sizes
  around each budget's optimum, not far from it), are skipped, each with a printed reason.
* **Evaluation**: the final validation loss over `eval_batches` batches (0: the whole
  validation split), identical batches for every run; `eval_every=0` evaluates only at the end.

Every run is the base config plus a list of `--config.KEY=VALUE` overrides (`SweepRun.overrides`),
so an in-process run and a cluster command (`python -m research.train ...`) train the same thing.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from typing import Any, Callable, Sequence

import jax
import ml_collections

from research import config_lib, models, objectives
from research.errors import ConfigError
from research.models import transformer
from research.training import flops as flops_lib

# Top-level modules of the model whose parameters are embeddings (Kaplan's N excludes them):
# token embedding, learned positions, BERT's token types and an untied unembedding.
EMBEDDING_MODULES = ('embed', 'positions', 'token_types', 'unembed')
FLOPS_RULES = ('exact', '6nd')


def default_sweep() -> ml_collections.ConfigDict:
  """The `sweep` section with every field the sweep reads, at its default."""
  s = ml_collections.ConfigDict()
  # Model sizes: an explicit list, or the width/depth rule below when the list is empty.
  s.sizes = ()  # ((d_model, num_layers, num_heads), ...)
  s.widths = ()  # d_model per size
  s.depths = ()  # num_layers per width; empty: round(d_model / aspect_ratio)
  s.aspect_ratio = 64.0
  s.head_dim = 64  # num_heads = d_model // head_dim (at least 1)
  s.ffn_ratio = 0.0  # d_ff = ffn_ratio x d_model rounded up to ffn_multiple; 0: the model's rule
  s.ffn_multiple = 8
  s.kv_group_size = 1  # query heads per key/value head (1: multi-head attention)
  # Budgets: exactly one of these is non-empty.
  s.budgets = ()  # IsoFLOP budgets, training FLOP
  s.flops_rule = 'exact'  # 'exact': the trainer's FLOPs per step | '6nd': 6 x params x tokens
  s.tokens = ()  # token budgets, each trained by every size
  s.tokens_per_param = ()  # D = ratio x params
  s.min_steps = 50
  s.max_steps = 0  # 0: no upper limit
  s.min_tokens_per_param = 0.0  # skip runs with fewer training tokens per parameter; 0: none
  s.max_tokens_per_param = 0.0  # skip runs with more; 0: no upper limit
  # Recipe per size.
  s.lrs = ()  # explicit learning rate per size (same order as the sizes); empty: the rule
  s.lr_ref_width = 256  # lr = train.lr x (lr_ref_width / d_model) ^ lr_width_power
  s.lr_width_power = 0.0
  # Or one learning rate for every size, transferred by a parameterization (then lrs and
  # lr_width_power stay unset): '' (the rules above) | 'sp' | 'mup'.
  s.parameterization = ''
  s.base_width = 0  # model.base_width of every size: the width base_lr was tuned at
  s.base_lr = 0.0  # train.lr of every size
  s.lr_grid = ()  # learning rates each (size, budget) trains at, replacing the per-size rate
  s.warmup_steps = 0  # > 0: fixed warmup; 0: warmup_fraction of each run
  s.warmup_fraction = 0.05
  s.schedule = 'cosine'
  s.min_lr_ratio = 0.1  # decay to lr / 10
  # Evaluation of the final model: the same batches for every run.
  s.eval_batches = 0  # 0: the whole validation split
  s.eval_every = 0  # 0: only at the end of each run
  # Metrics of each run's final evaluation kept as extra results.csv columns, e.g.
  # ('eval/bpb', 'eval/few_shot/accuracy'): the trainer's eval/* and the eval.during_training
  # tasks' eval/<task>/* (research/evaluation/during_training.py), so a law can be fitted to a
  # downstream metric (fit.py --target, or fit_target below).
  s.columns = ()
  # The fit run.py does after the grid.
  s.fit_bootstrap = 200
  s.fit_approaches = '1,2,3,kaplan'
  s.fit_target = 'loss'  # the column fitted as L; '1-COLUMN' for an accuracy's error rate
  return s


def with_sweep(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Adds the `sweep` section (defaults updated with `fields`) to a training config."""
  return config_lib.add_section(config, 'sweep', default_sweep(), fields)


@dataclasses.dataclass(frozen=True)
class Size:
  d_model: int
  num_layers: int
  num_heads: int


@dataclasses.dataclass(frozen=True)
class SizeInfo:
  """A model size resolved against the base config: parameter counts and FLOPs per step."""
  size: Size
  d_ff: int
  num_kv_heads: int
  params: int
  non_embedding_params: int
  flops_per_step: float
  lr: float


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One run of the grid."""
  index: int
  name: str
  size: Size
  d_ff: int
  num_kv_heads: int
  params: int
  non_embedding_params: int
  budget: float  # the IsoFLOP budget C, the token budget D, or the tokens-per-param ratio
  budget_kind: str  # 'flops' | 'tokens' | 'tokens_per_param'
  steps: int
  tokens_per_step: int
  flops_per_step: float
  lr: float
  warmup_steps: int
  overrides: tuple[tuple[str, Any], ...]

  @property
  def tokens(self) -> int:
    return self.steps * self.tokens_per_step

  @property
  def flops(self) -> float:
    """Training FLOPs actually spent: the trainer's per-step count x steps."""
    return self.flops_per_step * self.steps

  @property
  def flops_6nd(self) -> float:
    return flops_lib.flops_6nd(self.params, self.tokens)


@dataclasses.dataclass(frozen=True)
class Grid:
  runs: list[SweepRun]
  skipped: list[tuple[str, str]]  # (name, reason)


def sweep_section(config) -> ml_collections.ConfigDict:
  if 'sweep' not in config:
    raise ConfigError('sweep', None, 'the config has no `sweep` section: build it with '
                      'experiments.scaling_laws.sweep.with_sweep(config, ...)')
  s = config.sweep
  unknown = sorted(set(s.keys()) - set(default_sweep().keys()))
  if unknown:
    raise ConfigError(f'sweep.{unknown[0]}', s[unknown[0]],
                      f'unknown field: valid are {sorted(default_sweep().keys())}')
  return s


def model_sizes(s) -> list[Size]:
  """The sweep's sizes: the explicit list, else the width/depth rule."""
  if s.sizes:
    sizes = []
    for entry in s.sizes:
      if len(entry) != 3:
        raise ConfigError('sweep.sizes', entry, 'each size is (d_model, num_layers, num_heads)')
      sizes.append(Size(*(int(v) for v in entry)))
  elif s.widths:
    if s.depths and len(s.depths) != len(s.widths):
      raise ConfigError('sweep.depths', s.depths, f'give one depth per width ({len(s.widths)})')
    sizes = []
    for i, d in enumerate(s.widths):
      layers = int(s.depths[i]) if s.depths else max(1, round(d / s.aspect_ratio))
      sizes.append(Size(int(d), layers, max(1, int(d) // int(s.head_dim))))
  else:
    raise ConfigError('sweep.sizes', s.sizes, 'give model sizes: sweep.sizes = ((d_model, '
                      'num_layers, num_heads), ...) or sweep.widths with depths or aspect_ratio')
  if len(set(sizes)) != len(sizes):
    raise ConfigError('sweep.sizes', s.sizes, 'lists a size twice')
  if s.lrs and len(s.lrs) != len(sizes):
    raise ConfigError('sweep.lrs', s.lrs, f'give one learning rate per size ({len(sizes)})')
  return sizes


def budgets_of(s) -> tuple[str, list[float]]:
  given = [(kind, list(s[key])) for kind, key in (('flops', 'budgets'), ('tokens', 'tokens'),
                                                   ('tokens_per_param', 'tokens_per_param'))
           if s[key]]
  if len(given) != 1:
    raise ConfigError('sweep.budgets', s.budgets, 'set exactly one of sweep.budgets (IsoFLOP), '
                      f'sweep.tokens or sweep.tokens_per_param; got {len(given)}')
  kind, values = given[0]
  if any(not v > 0 for v in values):
    field = 'budgets' if kind == 'flops' else kind
    raise ConfigError(f'sweep.{field}', tuple(values), 'budgets must be positive')
  if s.flops_rule not in FLOPS_RULES:
    raise ConfigError('sweep.flops_rule', s.flops_rule, f'choose one of {list(FLOPS_RULES)}')
  return kind, sorted(float(v) for v in values)


def _d_ff(s, d_model: int) -> int:
  if not s.ffn_ratio:
    return 0
  m = max(1, int(s.ffn_multiple))
  return m * math.ceil(s.ffn_ratio * d_model / m)


def _kv_heads(s, size: Size) -> int:
  g = int(s.kv_group_size)
  if g <= 0 or size.num_heads % g:
    raise ConfigError('sweep.kv_group_size', s.kv_group_size,
                      f'must divide num_heads={size.num_heads} of size {size}')
  return size.num_heads // g


def check_recipe(s) -> None:
  """The learning-rate recipe: a parameterization replaces the per-size rules (both at once
  would be ambiguous); an lr_grid's rates are positive and distinct in run names."""
  grid = [float(lr) for lr in s.lr_grid]
  if any(not lr > 0 for lr in grid) or len({_short(lr) for lr in grid}) < len(grid):
    raise ConfigError('sweep.lr_grid', s.lr_grid, 'give distinct positive learning rates '
                      '(3 significant digits apart)')
  if not s.parameterization:
    return
  if s.parameterization not in transformer.PARAMETERIZATIONS:
    raise ConfigError('sweep.parameterization', s.parameterization,
                      f"choose '' (per-size rules) or one of {list(transformer.PARAMETERIZATIONS)}")
  if s.base_width <= 0:
    raise ConfigError('sweep.base_width', s.base_width, 'give the width base_lr was tuned at '
                      f'(sweep.parameterization={s.parameterization!r})')
  if s.base_lr <= 0 and not s.lr_grid:
    raise ConfigError('sweep.base_lr', s.base_lr, 'give the learning rate tuned at '
                      f'sweep.base_width={s.base_width} (or an lr_grid)')
  if s.lrs or s.lr_width_power:
    field = 'lrs' if s.lrs else 'lr_width_power'
    raise ConfigError(f'sweep.{field}', s[field], 'per-size learning-rate rules do not combine '
                      f'with sweep.parameterization={s.parameterization!r}: unset them')


def _lr(config, s, i: int, size: Size) -> float:
  if s.parameterization:
    return float(s.base_lr)
  if s.lrs:
    return float(s.lrs[i])
  return float(config.train.lr * (s.lr_ref_width / size.d_model) ** s.lr_width_power)


def size_overrides(s, size: Size) -> list[tuple[str, Any]]:
  return [('model.d_model', size.d_model), ('model.num_layers', size.num_layers),
          ('model.num_heads', size.num_heads), ('model.num_kv_heads', _kv_heads(s, size)),
          ('model.head_dim', 0), ('model.d_ff', _d_ff(s, size.d_model))]


def parameterization_overrides(s) -> list[tuple[str, Any]]:
  if not s.parameterization:
    return []
  return [('model.parameterization', s.parameterization), ('model.base_width', int(s.base_width))]


def apply_overrides(config, overrides: Sequence[tuple[str, Any]]) -> ml_collections.ConfigDict:
  """A finalized copy of `config` with the overrides applied as the command line would."""
  c = copy.deepcopy(config)
  for key, value in overrides:
    config_lib.apply_override(c, key, format_value(value))
  return config_lib.finalize(c)


def format_value(value) -> str:
  """A value as `--config.KEY=` text that `config_lib` parses back to the same value."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, float):
    return repr(value)
  return str(value)


def count_params(config) -> tuple[int, int]:
  """(all parameters, non-embedding parameters) of `config`'s model, from its abstract init."""
  model = models.build_model(config)
  args = objectives.get_objective(config.objective.name).init_args(1, config)
  shapes = jax.eval_shape(lambda rng: model.init({'params': rng}, *args), jax.random.key(0))
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes['params'])[0]:
    n = math.prod(leaf.shape)
    total += n
    if getattr(path[0], 'key', None) in EMBEDDING_MODULES:
      embedding += n
  return total, total - embedding


def resolve_size(config, s, i: int, size: Size) -> SizeInfo:
  c = apply_overrides(config, size_overrides(s, size) + parameterization_overrides(s))
  cfg = models.transformer_config(c.model, seq_len=c.data.seq_len)
  params, non_embedding = count_params(c)
  return SizeInfo(size=size, d_ff=cfg.d_ff, num_kv_heads=cfg.num_kv_heads, params=params,
                  non_embedding_params=non_embedding,
                  flops_per_step=float(flops_lib.flops_per_step(cfg, c)),
                  lr=_lr(config, s, i, size))


def _short(x: float) -> str:
  """3e13, 1.5e13, 20: compact and filename-safe."""
  text = f'{x:.3g}'.replace('e+', 'e').replace('e0', 'e')
  return text.replace('e-', 'em')


def run_name(size: Size, kind: str, budget: float, with_heads: bool = False,
             lr: float | None = None) -> str:
  """d64_l2_C2e11; with an lr_grid, d64_l2_D1e6_lr3em3."""
  prefix = {'flops': 'C', 'tokens': 'D', 'tokens_per_param': 'r'}[kind]
  heads = f'_h{size.num_heads}' if with_heads else ''
  rate = '' if lr is None else f'_lr{_short(lr)}'
  return f'd{size.d_model}_l{size.num_layers}{heads}_{prefix}{_short(budget)}{rate}'


def warmup_of(s, steps: int) -> int:
  if s.warmup_steps > 0:
    return min(int(s.warmup_steps), max(steps - 1, 0))
  return max(1, round(s.warmup_fraction * steps))


def build_grid(config, *, size_info: Callable | None = None) -> Grid:
  """Every (size, budget[, learning rate]) run in order (budget, size, then lr_grid's rates),
  and the skipped ones with reasons."""
  s = sweep_section(config)
  check_recipe(s)
  sizes = model_sizes(s)
  kind, budgets = budgets_of(s)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  with_heads = len({(z.d_model, z.num_layers) for z in sizes}) < len(sizes)
  infos = [(size_info or resolve_size)(config, s, i, z) for i, z in enumerate(sizes)]
  runs, skipped = [], []
  for budget in budgets:
    for info, grid_lr in itertools.product(infos, s.lr_grid or (None,)):
      name = run_name(info.size, kind, budget, with_heads, grid_lr)
      lr = info.lr if grid_lr is None else float(grid_lr)
      if kind == 'flops':
        per_step = (info.flops_per_step if s.flops_rule == 'exact' else
                    flops_lib.flops_6nd(info.params, tokens_per_step))
        steps = round(budget / per_step)
      elif kind == 'tokens':
        steps = round(budget / tokens_per_step)
      else:
        steps = round(budget * info.params / tokens_per_step)
      if steps < s.min_steps:
        skipped.append((name, f'{steps} steps < sweep.min_steps={s.min_steps}'))
        continue
      if s.max_steps and steps > s.max_steps:
        skipped.append((name, f'{steps} steps > sweep.max_steps={s.max_steps}'))
        continue
      ratio = steps * tokens_per_step / info.params
      if ratio < s.min_tokens_per_param:
        skipped.append((name, f'{ratio:.3g} tokens per parameter < sweep.min_tokens_per_param='
                              f'{s.min_tokens_per_param:g}'))
        continue
      if s.max_tokens_per_param and ratio > s.max_tokens_per_param:
        skipped.append((name, f'{ratio:.3g} tokens per parameter > sweep.max_tokens_per_param='
                              f'{s.max_tokens_per_param:g}'))
        continue
      warmup = warmup_of(s, steps)
      overrides = [('name', f'{config.name}/{name}'), *size_overrides(s, info.size),
                   *parameterization_overrides(s), ('train.steps', steps), ('train.lr', lr),
                   ('train.warmup_steps', warmup), ('train.schedule', s.schedule),
                   ('train.min_lr_ratio', float(s.min_lr_ratio)),
                   ('train.eval_every', int(s.eval_every) or steps),
                   ('train.eval_batches', int(s.eval_batches))]
      runs.append(SweepRun(index=len(runs), name=name, size=info.size, d_ff=info.d_ff,
                           num_kv_heads=info.num_kv_heads, params=info.params,
                           non_embedding_params=info.non_embedding_params, budget=budget,
                           budget_kind=kind, steps=steps, tokens_per_step=tokens_per_step,
                           flops_per_step=info.flops_per_step, lr=lr, warmup_steps=warmup,
                           overrides=tuple(overrides)))
  if not runs:
    raise ConfigError('sweep', f'{len(skipped)} runs', 'every run of the grid was skipped: '
                      + '; '.join(f'{n}: {r}' for n, r in skipped[:3]))
  return Grid(runs=runs, skipped=skipped)


def run_config(config, run: SweepRun) -> ml_collections.ConfigDict:
  """The training config of one run: the base config with the run's overrides."""
  return apply_overrides(config, run.overrides)


def describe(run: SweepRun) -> str:
  return (f'N={run.params / 1e6:.3g}M (non-embedding {run.non_embedding_params / 1e6:.3g}M), '
          f'D={run.tokens / 1e6:.3g}M tokens, {run.steps} steps, C={run.flops:.3g} FLOP, '
          f'lr {run.lr:.3g}, warmup {run.warmup_steps}')
