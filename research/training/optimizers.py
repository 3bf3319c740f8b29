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


def decay_mask(params):
  """Weight decay on matrices only: no decay for norms' scales and biases (ndim < 2)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


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
