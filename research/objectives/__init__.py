"""Objectives by name (`objective.name`): batch transforms and losses."""

from __future__ import annotations

import dataclasses
from typing import Callable

from research.errors import ConfigError
from research.objectives import causal_lm


@dataclasses.dataclass(frozen=True)
class Objective:
  """`make_batch(window_BT1, eos_id=...)` builds model inputs on the host; `loss_fn` runs in jit."""
  make_batch: Callable
  loss_fn: Callable


OBJECTIVES = {'causal_lm': Objective(causal_lm.make_batch, causal_lm.loss_fn)}


def get_objective(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise ConfigError('objective.name', name, f'choose one of {sorted(OBJECTIVES)}')
  return OBJECTIVES[name]
