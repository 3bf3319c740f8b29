"""Config checks that run before anything in a workdir is written.

A resume continues the run that the workdir's config.json describes. Only the fields below may
differ on the command line; any other difference (model, objective, tokenizer, data, batch,
seed, optimizer) would restore a checkpoint into the wrong program, or silently train a
different one, so it stops the run before config.json or anything else is touched.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from research.errors import UserError

# Fields (or whole sections, ending in '.') that may change when a run resumes.
RESUMABLE = (
    'name',
    'train.steps',
    'train.lr', 'train.schedule', 'train.warmup_steps', 'train.min_lr_ratio',  # the schedule
    'train.effective_lr.',  # derived from train.lr
    'train.log_every', 'train.eval_every', 'train.eval_batches',  # cadence of logs and evals
    'train.checkpoint_every', 'train.keep_checkpoints', 'train.keep_every',
    'train.async_checkpoints',
    'train.on_nonfinite', 'train.max_nonfinite_skips', 'train.preemption_exit_code',
    'train.prefetch',
    'train.offload',  # where the state lives between steps: checkpoints do not record it
    'mesh.',  # any layout: checkpoints restore onto any mesh
    'data.cache_dir', 'data.data_dir',  # where caches live, not what they hold
    'data.workers',  # how batches are built (they stay a function of (seed, step)), not which
    'sample.', 'eval.',  # read by research.sample / research.evaluate, not by training
    # RL (research/rl/loop.py): how long it runs (rl.iterations derives train.steps) and how it
    # is evaluated; nothing that changes a rollout or an update.
    'rl.iterations', 'rl.eval_every', 'rl.eval_temperature', 'rl.success_threshold',
)

# What fixes the shapes of a checkpoint: research.sample / research.evaluate compare these
# between a workdir's config.json and the config its checkpoint was written with.
ARCHITECTURE = ('model.', 'data.vocab_size', 'data.num_sentinels')


class ConfigMismatch(UserError):
  """A config does not match the one a workdir (or a checkpoint) was written with."""


def flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _matches(field: str, patterns: Iterable[str]) -> bool:
  return any(field == p or (p.endswith('.') and field.startswith(p)) for p in patterns)


def as_json(config) -> dict:
  """The config as config.json stores it (tuples become lists), for like-for-like compares."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def differences(saved: dict, given: dict, *, only=None, ignore=()) -> list[tuple[str, object,
                                                                                  object]]:
  """(field, saved value, given value) for fields present in both that differ.

  Fields only one side has are skipped: they were added or removed by a newer lmforge, and the
  defaults keep old runs' meaning.
  """
  a, b = flatten(saved), flatten(given)
  out = []
  for field in sorted(a.keys() & b.keys()):
    if only is not None and not _matches(field, only):
      continue
    if _matches(field, ignore):
      continue
    if a[field] != b[field] and not _both_numbers_equal(a[field], b[field]):
      out.append((field, a[field], b[field]))
  return out


def _both_numbers_equal(x, y) -> bool:
  numbers = (int, float)
  return (isinstance(x, numbers) and isinstance(y, numbers) and not isinstance(x, bool)
          and not isinstance(y, bool) and float(x) == float(y))


def _show(value) -> str:
  return json.dumps(value) if isinstance(value, str) else str(value)


def read_saved(workdir: str) -> dict | None:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def has_checkpoint(workdir: str) -> bool:
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def check_resume(config, workdir: str) -> None:
  """Stops a resume whose config differs from the workdir's in a field that may not change.

  Reads only. A workdir without a checkpoint is a fresh start: its config.json is rewritten.

  Raises:
    ConfigMismatch: one line per changed field, `model.d_model: saved 64, given 128`.
  """
  saved = read_saved(workdir)
  if saved is None or not has_checkpoint(workdir):
    return
  changed = differences(saved, as_json(config), ignore=RESUMABLE)
  if changed:
    lines = '\n'.join(f'  {field}: saved {_show(a)}, given {_show(b)}' for field, a, b in changed)
    raise ConfigMismatch(
        f'{workdir} holds a run with a different config; nothing was changed. These fields '
        f'cannot change on resume (those that can are listed in '
        f'research/training/resume_check.py):\n{lines}\nuse the saved values, or a new '
        '--workdir for a new run')


def check_checkpoint_config(workdir: str, step: int, checkpoint_config: dict | None) -> None:
  """Stops research.sample / research.evaluate when config.json no longer describes `step`.

  Raises:
    ConfigMismatch: one line naming config.json, the step and each differing field.
  """
  saved = read_saved(workdir)
  if saved is None or checkpoint_config is None:
    return
  changed = differences(checkpoint_config, saved, only=ARCHITECTURE)
  if changed:
    shown = '; '.join(f'{field}: checkpoint {_show(a)}, config.json {_show(b)}'
                      for field, a, b in changed)
    raise ConfigMismatch(
        f'{os.path.join(workdir, "config.json")} does not match checkpoint step {step} '
        f'({shown}): put back the values the checkpoint was trained with')
