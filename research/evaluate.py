"""Evaluate a trained run: python -m research.evaluate --workdir=runs/shk [--split=validation].

Prints one JSON line: loss (nats/token), perplexity, next-token accuracy and the number of target
tokens, over the whole split (or --batches batches) of the run's own data source.
"""

from __future__ import annotations

import json
import os

import jax
from absl import flags

from research import cli, config_lib
from research.errors import UserError
from research.training import checkpointing, trainer

_WORKDIR = flags.DEFINE_string('workdir', None, 'a directory written by research.train')
_BATCHES = flags.DEFINE_integer('batches', 0, 'evaluation batches; 0: the whole split')
_STEP = flags.DEFINE_integer('step', None, 'checkpoint step; default the latest')


def load_state(workdir: str, config, *, step: int | None = None, run=None):
  """(run, TrainState) of a run's checkpoint, sharded for `run` (default: a mesh from its
  config). The state's `model_state` holds the non-gradient collections the model reads (the
  aux-free MoE selection bias): apply with {'params': state.params, **state.model_state}."""
  run = run or trainer.build_run(config)
  manager = checkpointing.make_manager(workdir, keep=config.train.keep_checkpoints)
  state = checkpointing.restore(manager, trainer.abstract_state(run), step)
  manager.close()
  if state is None:
    raise UserError(f'{workdir}/checkpoints has no checkpoint: run research.train first')
  return run, state


def load_params(workdir: str, config, *, step: int | None = None, run=None):
  """The parameters of a run's checkpoint, sharded for `run` (default: a mesh from its config).
  Models with non-gradient state (aux-free MoE) also need `load_state(...)[1].model_state`."""
  run, state = load_state(workdir, config, step=step, run=run)
  return run, state.params, int(state.step)


def evaluate_workdir(workdir: str, *, batches: int = 0, step: int | None = None) -> dict:
  """Validation metrics of the latest (or `step`) checkpoint in `workdir`."""
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config_lib.load_saved_config(os.path.join(workdir, 'config.json'))
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor, config.mesh.expert = -1, 1, 1, 1
  config = config_lib.finalize(config)
  run, state = load_state(workdir, config, step=step)
  dataset = pipeline.load_dataset(config.data, workdir=workdir)
  # model_state: the trained aux-free selection bias (an MoE model routes with 0 without it).
  metrics = trainer.evaluate(run, state.params, dataset, num_batches=batches,
                             model_state=state.model_state)
  return {'step': int(state.step), **{k.split('/', 1)[1]: v for k, v in metrics.items()}}


def main(config, argv):
  del config, argv
  if not _WORKDIR.value:
    raise UserError('--workdir is required, e.g. --workdir=runs/shk')
  result = evaluate_workdir(_WORKDIR.value, batches=_BATCHES.value, step=_STEP.value)
  if jax.process_index() == 0:
    print(json.dumps(result))


if __name__ == '__main__':
  cli.run_with_config(main, config_required=False)
