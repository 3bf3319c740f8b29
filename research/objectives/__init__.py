"""Objectives by name (`objective.name`): batch transforms and losses.

Each objective is a module in this package with four functions:
  window_len(config) -> raw tokens one example takes from the token stream;
  make_batch(windows_BW, *, tokenizer, config, rngs) -> dict of fixed-shape [B, ...] arrays,
      built on the host, any noise drawn from the per-row generators `rngs` so that batches are
      a pure function of (seed, step) whatever the number of processes;
  init_args(batch_size, config) -> positional model arguments for initialisation;
  loss_fn(model, params, batch, *, rngs=None) -> (loss_sum, aux), aux holding the summed
      `loss_sum`, `weight_sum` and `correct`, so micro-batches and hosts add up before dividing.
Optional: load_dataset(config, workdir) when the objective reads its own data (sft, dpo,
reward); init_model_state(params) for non-gradient state it needs (DPO's frozen reference);
loss_kwargs(config) for config values its loss takes (DPO's beta, the reward margin, distill's
teacher module); eval_metrics(totals, prefix) for its own evaluation summary (dpo, reward:
per pair, no perplexity);
aux['metrics'] for extra sums the trainer logs per unit of weight; init_frozen_state(config,
init_args) and load_frozen_state(run, state) for a frozen model of another workdir held in the
model state (distill's teacher: placeholders traced with the state, filled at a fresh start).
"""

from __future__ import annotations

import importlib
import types

from research.errors import ConfigError

OBJECTIVES = {
    'causal_lm': 'research.objectives.causal_lm',
    'prefix_lm': 'research.objectives.prefix_lm',
    'mlm': 'research.objectives.mlm',
    'span_corruption': 'research.objectives.span_corruption',
    'sft': 'research.objectives.sft',
    'dpo': 'research.objectives.dpo',
    'reward': 'research.objectives.reward',
    'distill': 'research.objectives.distill',
    'grpo': 'research.objectives.grpo',
    'ppo': 'research.objectives.ppo',
}

Objective = types.ModuleType  # an objective is its module


def get_objective(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise ConfigError('objective.name', name, f'choose one of {sorted(OBJECTIVES)}')
  return importlib.import_module(OBJECTIVES[name])


class StandInTokenizer:
  """The special ids objectives use (research.data.tokenizer's layout) and no text: enough to
  build batches of the right shapes for benchmarks and ahead-of-time compiles."""
  pad_id, eos_id, unk_id, bos_id, mask_id = 0, 1, 2, 3, 4
  num_sentinels = 100
  first_free_id = 256  # ids from here on are ordinary tokens

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def sentinel_id(self, i: int) -> int:
    return 5 + i
