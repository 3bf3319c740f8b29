"""Optimizers and learning-rate schedules from config (optax)."""

from __future__ import annotations

import jax
import optax

from research.errors import ConfigError

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


def _is_decayed(path, leaf) -> bool:
  """Weight matrices and embeddings decay; norm scales and biases do not. Decided by name, as
  rank misleads: a scanned stack adds a layer axis ([L, D] norm scales) and experts an expert
  axis ([E, F] expert biases)."""
  name = str(getattr(path[-1], 'key', path[-1])) if path else ''
  if name == 'scale' or name.endswith('bias') or name.startswith('b_'):
    return False
  return leaf.ndim >= 2


def decay_mask(params):
  """Weight decay on weight matrices and embeddings only (see `_is_decayed`)."""
  return jax.tree_util.tree_map_with_path(_is_decayed, params)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  t = train_cfg
  schedule = make_schedule(t)
  if t.optimizer == 'adamw':
    opt = optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                      mask=decay_mask)
  elif t.optimizer == 'adafactor':
    opt = optax.adafactor(schedule, weight_decay_rate=t.weight_decay or None)
  elif t.optimizer == 'sgd':
    opt = optax.sgd(schedule, momentum=t.b1)
  else:
    raise ConfigError('train.optimizer', t.optimizer, "choose 'adamw', 'adafactor' or 'sgd'")
  if t.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), opt)
  return opt
