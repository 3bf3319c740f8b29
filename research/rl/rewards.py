"""Rewards for RL from feedback: a Python function of (prompt, completion, row), or a reward
model's score.

rl.reward = 'module:function' (an importable module) or 'path/to/file.py:function' (a file,
imported by path) names a function called once per completion:

  def reward(prompt: str, completion: str, row: dict) -> float

with the prompt's text, the completion's text (decoded, cut before eos) and the prompt's whole
JSONL row, so a task module can keep its answers there ({"prompt": "2+3=", "answer": "5"}) and
score against them. A bool counts as 0/1. The function runs on the host, on every process, and
must be deterministic for a resumed run to repeat the one it continues.

rl.eval_reward = 'module:function' scores the held-out evaluation instead (a policy trained on
a reward model's scores is then judged by the rule the model learned; default: the training
reward).

rl.reward_model = a workdir of a reward model (configs/finetune/reward.py: a decoder with
model.scalar_head), scored through research.load(workdir).rewards(prompts, completions).

Ready-made functions for {"prompt", "answer"} rows: exact_match and starts_with_answer
(rl.reward='research.rl.rewards:exact_match'). A task module plugs in the same way with its
own function, e.g. rl.reward='experiments.rl.arithmetic:reward'.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from typing import Callable, Sequence

import numpy as np

from research.errors import ConfigError, UserError


def load_function(spec: str, field: str = 'rl.reward') -> Callable:
  """The function that `field` names; a one-line ConfigError when it cannot be imported."""
  target, _, name = spec.rpartition(':')
  fix = ("give 'module:function' with the module on PYTHONPATH, or 'path/to/file.py:function'")
  if not target or not name:
    raise ConfigError(field, spec, fix)
  try:
    if target.endswith('.py'):
      if not os.path.isfile(target):
        raise ConfigError(field, spec, f'{target}: no such file; {fix}')
      module_name = f'lmforge_reward_{abs(hash(os.path.abspath(target)))}'
      module_spec = importlib.util.spec_from_file_location(module_name, target)
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
      module_spec.loader.exec_module(module)
    else:
      module = importlib.import_module(target)
  except ImportError as e:
    raise ConfigError(field, spec, f'cannot import {target!r} ({e}); {fix}') from None
  fn = getattr(module, name, None)
  if not callable(fn):
    raise ConfigError(field, spec, f'{target} has no function {name!r}; {fix}')
  return fn


class FunctionReward:
  """rl.reward: the function called on each (prompt, completion, row)."""

  def __init__(self, spec: str, field: str = 'rl.reward'):
    self.spec, self.field = spec, field
    self.fn = load_function(spec, field)

  def __call__(self, prompts: Sequence[str], completions: Sequence[str],
               rows: Sequence[dict]) -> np.ndarray:
    out = np.empty(len(prompts), np.float64)
    for i, (prompt, completion, row) in enumerate(zip(prompts, completions, rows)):
      value = self.fn(prompt, completion, row)
      try:
        out[i] = float(value)
      except (TypeError, ValueError):
        raise UserError(f'{self.field}={self.spec!r} returned {value!r} for prompt {prompt!r}: '
                        'return a number (or a bool)') from None
      if not math.isfinite(out[i]):
        raise UserError(f'{self.field}={self.spec!r} returned {value!r} for prompt {prompt!r}: '
                        'return a finite number')
    return out


class ModelReward:
  """rl.reward_model: a reward model's scalar score of prompt + completion."""

  def __init__(self, workdir: str):
    import research  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(os.path.join(workdir, 'config.json')):
      raise ConfigError('rl.reward_model', workdir, 'is not a workdir with a config.json: give '
                        'one that research.train wrote with configs/finetune/reward.py')
    self.workdir = workdir
    self.lm = research.load(workdir)
    if not self.lm.config.model.get('scalar_head', False):
      raise ConfigError('rl.reward_model', workdir, 'has no scalar head (model.scalar_head is '
                        'false): give a reward model, trained with configs/finetune/reward.py')

  def __call__(self, prompts, completions, rows) -> np.ndarray:
    del rows
    return np.asarray(self.lm.rewards(list(prompts), list(completions)), np.float64)


def make_reward(config):
  """The run's reward: FunctionReward or ModelReward (rl.reward / rl.reward_model)."""
  if config.rl.reward:
    return FunctionReward(config.rl.reward)
  return ModelReward(config.rl.reward_model)


def make_eval_reward(config, train_reward=None):
  """The held-out evaluation's reward: rl.eval_reward's function, else the training reward
  (`train_reward` when the caller has built it already)."""
  if config.rl.eval_reward:
    return FunctionReward(config.rl.eval_reward, 'rl.eval_reward')
  return train_reward if train_reward is not None else make_reward(config)


# ----------------------------------------------------------------------------- ready-made rewards


def exact_match(prompt: str, completion: str, row: dict) -> float:
  """1.0 when the completion, stripped, is the row's "answer" (stripped), else 0.0:
  rl.reward='research.rl.rewards:exact_match' for {"prompt", "answer"} rows."""
  del prompt
  return float(completion.strip() == str(row.get('answer', '')).strip())


def starts_with_answer(prompt: str, completion: str, row: dict) -> float:
  """1.0 when the completion, stripped of leading spaces, starts with the row's "answer":
  lenient about what follows (rl.reward='research.rl.rewards:starts_with_answer')."""
  del prompt
  answer = str(row.get('answer', '')).strip()
  return float(bool(answer) and completion.lstrip().startswith(answer))
