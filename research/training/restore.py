"""Start a run from another run's parameters (`config.init_from`), by rules in the config.

The source is any workdir with config.json and Orbax checkpoints: a pre-training run, an import
by research.convert, or an earlier fine-tune. Its latest checkpoint is restored by research.load
(on its training mesh when that fits the devices here, else on one device), then each parameter
of this run is decided by `finetune.restore`, (regex, 'load' | 'init') pairs where the first
regex that matches the whole path wins: 'load' copies the source's array, which must exist with
the same shape; 'init' keeps this run's fresh initialisation. Parameters that a PEFT method adds
are always 'init'. The optimizer state is always fresh (built from the restored parameters), and
the step is 0. A pruned source's sparsity masks come with its parameters when this run prunes
(train.pruning, which a fine-tune inherits from a pruned source: config_lib._inherit_model).
"""

from __future__ import annotations

import logging
import os
import re

import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.training import peft, pruning

ACTIONS = ('load', 'init')


def check_rules(rules) -> None:
  for i, rule in enumerate(rules):
    if len(rule) != 2 or rule[1] not in ACTIONS:
      raise ConfigError(f'finetune.restore[{i}]', rule,
                        "each rule is a (regex, 'load' | 'init') pair")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ConfigError(f'finetune.restore[{i}]', rule[0], f'is not a regex ({e})') from None


def action_of(path: str, rules) -> str:
  if peft.is_peft_param(path):
    return 'init'
  for pattern, action in rules:
    if re.fullmatch(pattern, path):
      return action
  raise ConfigError('finetune.restore', rules,
                    f"no rule matches parameter {path!r}: end the rules with ('.*', 'load') or "
                    "('.*', 'init')")


def select(target_params, source_params, rules):
  """This run's parameters with the 'load' ones taken from `source_params`; (params, report)."""
  source = {peft.path_of(kp): x for kp, x in jax.tree_util.tree_leaves_with_path(source_params)}
  used, loaded, fresh = set(), 0, 0

  def choose(kp, target):
    nonlocal loaded, fresh
    path = peft.path_of(kp)
    if action_of(path, rules) == 'init':
      fresh += 1
      return target
    if path not in source:
      raise ConfigError('finetune.restore', rules,
                        f"parameter {path!r} is to be loaded but the source has no such "
                        f"parameter: add ({re.escape(path)!r}, 'init') before the rule that "
                        'loads it')
    if tuple(source[path].shape) != tuple(target.shape):
      raise ConfigError('finetune.restore', rules,
                        f'parameter {path!r} has shape {tuple(source[path].shape)} in the '
                        f'source but {tuple(target.shape)} in this model: add '
                        f"({re.escape(path)!r}, 'init') to initialise it afresh, or match the "
                        'model config to the source')
    used.add(path)
    loaded += 1
    value = source[path]
    sharding = getattr(target, 'sharding', None)
    value = value.astype(target.dtype)
    return jax.device_put(value, sharding) if sharding is not None else value

  params = jax.tree_util.tree_map_with_path(choose, target_params)
  report = {'loaded': loaded, 'initialised': fresh, 'unused_source': sorted(set(source) - used)}
  return params, report


def init_from(run, state, workdir: str):
  """`state` (freshly initialised for `run`) with parameters from `workdir` by the rules, a
  fresh optimizer state, and the objective's model state (a DPO reference) rebuilt."""
  rules = run.config.finetune.restore
  check_rules(rules)
  from research import loading  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(workdir):
    raise ConfigError('init_from', workdir, 'is not a directory: give a workdir that '
                      'research.train or research.convert wrote')
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  # Selected on the device, where the optimizer and the reference read them.
  source = loading.load(workdir)
  params, report = select(trainer.device_params(run, state.params), source.params, rules)
  if report['unused_source']:
    logging.warning('init_from %s: %d source parameters are not used (first: %s)', workdir,
                    len(report['unused_source']), report['unused_source'][0])
  logging.info('init_from %s: %d parameters loaded, %d initialised', workdir, report['loaded'],
               report['initialised'])
  with run.context():
    opt_state = jax.jit(run.tx.init, out_shardings=run.stored_shardings.opt_state)(params)
  model_state = dict(state.model_state)
  make_model_state = getattr(run.objective, 'init_model_state', None)
  if make_model_state is not None:
    model_state.update(jax.tree.map(jnp.copy, make_model_state(params)))
  if pruning.MASKS in model_state and pruning.MASKS in source.model_state:
    model_state[pruning.MASKS] = jax.device_put(source.model_state[pruning.MASKS],
                                                run.stored_shardings.model_state[pruning.MASKS])
  params = trainer.move(params, run.stored_shardings.params)  # where train.offload keeps them
  return state.replace(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                       model_state=model_state), report
