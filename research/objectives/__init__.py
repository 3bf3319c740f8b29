"""Objectives by name (`objective.name`): batch transforms and losses.

An objective says how many raw tokens one example takes (`window_len`), turns this process's
windows into model inputs on the host (`make_batch`, fixed shapes, any noise drawn from the
per-row generators it is given so batches are a pure function of (seed, step)), gives dummy
model arguments for initialisation (`init_args`), and computes the summed loss in jit
(`loss_fn`, returning (loss_sum, aux) with aux's `loss_sum`, `weight_sum` and `correct`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from research.errors import ConfigError
from research.objectives import causal_lm


@dataclasses.dataclass(frozen=True)
class Objective:
  window_len: Callable  # (config) -> raw tokens per example
  make_batch: Callable  # (windows_BW, *, tokenizer, config, rngs) -> dict of [B, ...] arrays
  init_args: Callable  # (batch_size, config) -> positional model arguments for init
  loss_fn: Callable  # (model, params, batch, *, rngs=None) -> (loss_sum, aux)


OBJECTIVES = {
    'causal_lm': Objective(causal_lm.window_len, causal_lm.make_batch, causal_lm.init_args,
                           causal_lm.loss_fn),
}


def get_objective(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise ConfigError('objective.name', name, f'choose one of {sorted(OBJECTIVES)}')
  return OBJECTIVES[name]
