"""Optimizers, learning-rate schedules and per-class learning rates from config (optax).

Every parameter has a class (`param_class`: embedding, hidden, unembedding, vector), decided
by name; weight decay skips the vector class, and per-class learning rates (μP,
train.lr_exponents, train.lr_multipliers) scale each class's step by a factor after the
optimizer (`scale_by_class`). Adam-atan2 (Everett et al. 2024) sits beside AdamW.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from research.errors import ConfigError
from research.models import transformer

SCHEDULES = ('cosine', 'linear', 'constant')


def make_schedule(train_cfg) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine, linear or no decay to `lr x min_lr_ratio`."""
  t = train_cfg
  if t.schedule not in SCHEDULES:
    raise ConfigError('train.schedule', t.schedule, f'choose one of {list(SCHEDULES)}')
  # A run shorter than its warmup (a quick --config.train.steps=20) still gets one decay step.
  warmup = max(min(t.warmup_steps, t.steps - 1), 0)
  decay_steps = max(t.steps - warmup, 1)
  end = t.lr * t.min_lr_ratio
  if t.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(t.lr, decay_steps, alpha=t.min_lr_ratio)
  elif t.schedule == 'linear':
    decay = optax.linear_schedule(t.lr, end, decay_steps)
  else:
    decay = optax.constant_schedule(t.lr)
  return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup), decay], [warmup])


# Parameter classes of per-class learning rates (train.lr_exponents, μP); see `param_class`.
PARAM_CLASSES = ('embedding', 'hidden', 'unembedding', 'vector')
# μP for Adam in the multiplier form (Tensor Programs V, Table 8): only hidden matrices learn at
# lr / w; the 1/w output multiplier (research/models/transformer.py) stands in for the
# unembedding's, so embeddings, a tied table and an untied output matrix keep lr.
DEFAULT_EXPONENTS = {'sp': {}, 'mup': {'hidden': 1.0}}
OPTIMIZERS = ('adamw', 'adam_atan2', 'adafactor', 'sgd')
ADAM_LIKE = ('adamw', 'adam_atan2')  # whose learning-rate exponents μP's defaults are


def param_class(path, leaf) -> str:
  """'embedding', 'hidden', 'unembedding' or 'vector' (norm scales and biases), by name, as
  rank misleads: a scanned stack adds a layer axis ([L, D] norm scales) and experts an expert
  axis ([E, F] expert biases). Tables named 'embedding' (tokens, positions, token types, the
  relative position bias) and the soft prompt are embeddings; the untied 'unembed' matrix and
  the scalar head (a readout too) are unembeddings; every other matrix is hidden (experts and
  the MoE router included)."""
  names = [str(getattr(k, 'key', k)) for k in path]
  name = names[-1] if names else ''
  if name == 'scale' or name.endswith('bias') or name.startswith('b_') or len(leaf.shape) < 2:
    return 'vector'
  if name in ('embedding', 'soft_prompt'):
    return 'embedding'
  if 'unembed' in names or 'scalar_head' in names:
    return 'unembedding'
  return 'hidden'


def param_classes(params):
  """`param_class` of every leaf of `params`: a tree of strings."""
  return jax.tree_util.tree_map_with_path(param_class, params)


def _is_decayed(path, leaf) -> bool:
  """Weight matrices and embeddings decay; norm scales and biases do not."""
  return param_class(path, leaf) != 'vector'


def decay_mask(params):
  """Weight decay on weight matrices and embeddings only (see `param_class`)."""
  return jax.tree_util.tree_map_with_path(_is_decayed, params)


def _per_class(text: str, field: str) -> dict[str, float]:
  """'hidden=1,unembedding=0.5' -> {'hidden': 1.0, 'unembedding': 0.5}."""
  out = {}
  for item in filter(None, (part.strip() for part in str(text).split(','))):
    name, eq, value = item.partition('=')
    name = name.strip()
    try:
      number = float(value)
    except ValueError:
      number = None
    if not eq or name not in PARAM_CLASSES or number is None:
      raise ConfigError(field, text, f"'{item}': write CLASS=NUMBER,... with classes from "
                        f'{list(PARAM_CLASSES)}')
    out[name] = number
  return out


def lr_exponents(train_cfg, model_cfg) -> dict[str, float]:
  """Each class's exponent e in lr x w^-e: the parameterization's, then train.lr_exponents."""
  name = model_cfg.get('parameterization', 'sp')
  given = _per_class(train_cfg.get('lr_exponents', ''), 'train.lr_exponents')
  return {k: given.get(k, DEFAULT_EXPONENTS.get(name, {}).get(k, 0.0)) for k in PARAM_CLASSES}


def lr_factors(train_cfg, model_cfg) -> dict[str, float]:
  """Each class's learning-rate factor, multiplier x w^-exponent (w = d_model / base_width):
  1.0 for every class under SP, and at the base width without multipliers."""
  w = transformer.width_multiplier(model_cfg)
  exponents = lr_exponents(train_cfg, model_cfg)
  multipliers = _per_class(train_cfg.get('lr_multipliers', ''), 'train.lr_multipliers')
  for name, value in multipliers.items():
    if value <= 0:
      raise ConfigError('train.lr_multipliers', train_cfg.lr_multipliers,
                        f'{name}={value:g}: multipliers must be > 0 (freeze parameters with '
                        'peft.method instead)')
  return {k: multipliers.get(k, 1.0) * w ** -exponents[k] for k in PARAM_CLASSES}


def check_parameterization(config) -> None:
  """Learning-rate settings that cannot do what they say are errors (ConfigError)."""
  t, m = config.train, config.model
  if (m.get('parameterization', 'sp') == 'mup' and t.optimizer not in ADAM_LIKE
      and not t.get('lr_exponents', '')):
    raise ConfigError('model.parameterization', 'mup',
                      f"its learning-rate exponents are Adam's (Tensor Programs V, Table 8): use "
                      f"train.optimizer in {list(ADAM_LIKE)}, or give train.lr_exponents for "
                      f'{t.optimizer!r}')
  if t.get('lr_exponents', '') and not m.get('base_width', 0):
    raise ConfigError('train.lr_exponents', t.lr_exponents,
                      'needs model.base_width, the width whose classes learn at train.lr (with '
                      'base_width 0, w = 1 and the exponents change nothing)')
  if t.optimizer == 'adam_atan2':
    for field in ('atan2_a', 'atan2_b'):
      if t[field] <= 0:
        raise ConfigError(f'train.{field}', t[field], 'must be > 0 (defaults: a=1.27, b=1)')


def fill_effective_lr(config) -> None:
  """Validates the learning-rate settings and writes each class's peak learning rate into
  `train.effective_lr` (what config.json records and research.plan prints)."""
  check_parameterization(config)
  factors = lr_factors(config.train, config.model)
  if 'effective_lr' not in config.train:
    config.train.effective_lr = ml_collections.ConfigDict()
  for name, factor in factors.items():
    config.train.effective_lr[name] = float(config.train.lr * factor)


def scale_by_class(factors: dict[str, float]) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its class's factor (`param_class`); no state. After
  the optimizer, so the factor scales the whole step, decoupled weight decay included (as a
  per-group learning rate does in PyTorch's AdamW and the `mup` package's MuAdamW)."""

  def update_fn(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u * factors[param_class(path, u)], updates)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def scale_by_adam_atan2(b1: float = 0.9, b2: float = 0.95, a: float = 1.27,
                        b: float = 1.0) -> optax.GradientTransformation:
  """Adam-atan2 (Everett et al. 2024): a x atan2(m_hat, b x sqrt(v_hat)) instead of
  m_hat / (sqrt(v_hat) + eps). Bounded by a x pi / 2, invariant to the gradient's scale, and
  without eps, which Adam would otherwise need to shrink with width; where |m_hat| is well
  below b x sqrt(v_hat) it is Adam's step times a / b. a = 1.27, b = 1 are the defaults of the
  public implementations. optax 0.2.8 has no such transform. The state is Adam's (count, mu,
  nu), so planners size it as AdamW's."""

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
    nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
    count = optax.safe_int32_increment(state.count)
    t = count.astype(jnp.float32)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    out = jax.tree.map(lambda m, v: a * jnp.arctan2(m / c1, b * jnp.sqrt(v / c2)), mu, nu)
    return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(train_cfg, model_cfg=None) -> optax.GradientTransformation:
  """The optimizer of `config.train`; with `config.model`, per-class learning rates
  (`lr_factors`: μP, train.lr_exponents, train.lr_multipliers) on top. Without any factor
  other than 1 the optimizer (and its state) is exactly the plain one."""
  t = train_cfg
  quantization = model_cfg.get('quantization', None) if model_cfg is not None else None
  if quantization is not None and quantization.mode == 'ptq':
    # Post-training quantized weights (research/layers/quantization.py) are for inference: an
    # optimizer with no state, so a quantized checkpoint holds no float copies.
    return optax.set_to_zero()
  schedule = make_schedule(t)
  if t.optimizer == 'adamw':
    opt = optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                      mask=decay_mask)
  elif t.optimizer == 'adam_atan2':
    opt = optax.chain(scale_by_adam_atan2(t.b1, t.b2, a=t.atan2_a, b=t.atan2_b),
                      optax.add_decayed_weights(t.weight_decay, mask=decay_mask),
                      optax.scale_by_learning_rate(schedule))
  elif t.optimizer == 'adafactor':
    opt = optax.adafactor(schedule, weight_decay_rate=t.weight_decay or None)
  elif t.optimizer == 'sgd':
    opt = optax.sgd(schedule, momentum=t.b1)
  else:
    raise ConfigError('train.optimizer', t.optimizer, f'choose one of {list(OPTIMIZERS)}')
  factors = lr_factors(t, model_cfg) if model_cfg is not None else {}
  if any(f != 1.0 for f in factors.values()):
    opt = optax.chain(opt, scale_by_class(factors))
  if t.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), opt)
  return opt
