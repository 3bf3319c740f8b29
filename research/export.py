"""Export a fine-tuned run as a plain workdir: python -m research.export --workdir=DIR --out=DIR.

LoRA deltas are folded into the base weights (research.training.peft.merge_lora) and the
config's `peft.method` becomes 'none', so the result is an ordinary model of the base
architecture that research.sample, research.evaluate and research.train (init_from) read like
any other workdir. Other PEFT methods (prompt, adapter, bitfit) are exported as they are: their
parameters are part of the model. The optimizer state is fresh, the step 0, and the DPO reference
(model_state) is dropped.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
from absl import flags

from research import cli, config_lib
from research.errors import UserError
from research.layers import moe as moe_lib
from research.training import checkpointing, peft, restore, trainer

_WORKDIR = flags.DEFINE_string('workdir', None, 'a fine-tuning workdir written by research.train')
_OUT = flags.DEFINE_string('out', None, 'the plain workdir to write')


def export(workdir: str, out: str) -> dict:
  """Writes `out` from the latest checkpoint of `workdir`; returns a summary."""
  if os.path.abspath(workdir) == os.path.abspath(out):
    raise UserError('--out must differ from --workdir')
  config, source = restore.load_source_state(workdir)
  params = source.params
  method = config.peft.method
  if method == 'lora':
    params = peft.merge_lora(params, float(config.peft.alpha))
    config.peft.method = 'none'
  config.init_from = ''
  if config.objective.name == 'dpo':
    config.objective.name = 'sft'  # the exported model is a plain policy, with no reference
  config = config_lib.finalize(config)
  run = trainer.build_run(config)
  params = jax.device_put(params, run.state_shardings.params)
  with run.context():
    opt_state = jax.jit(run.tx.init, out_shardings=run.state_shardings.opt_state)(params)
  # Aux-free MoE selection biases stay; the DPO reference goes.
  model_state = {k: v for k, v in source.model_state.items() if k == moe_lib.STATE_COLLECTION}
  state = trainer.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                             opt_state=opt_state, model_state=model_state)
  os.makedirs(out, exist_ok=True)
  config_lib.save_config(config, os.path.join(out, 'config.json'))
  manager = checkpointing.make_manager(out, keep=1, async_save=False)
  checkpointing.save(manager, 0, state, force=True)
  manager.wait_until_finished()
  manager.close()
  for name in ('tokenizer.model',):
    if os.path.isfile(os.path.join(workdir, name)):
      shutil.copy(os.path.join(workdir, name), os.path.join(out, name))
  counts = peft.count_params(params, config.peft)
  return {'out': out, 'merged': method == 'lora', 'method': method,
          'params': counts['total_params']}


def main(config, argv):
  del config, argv
  if not _WORKDIR.value or not _OUT.value:
    raise UserError('--workdir and --out are required, e.g. --workdir=runs/lora '
                    '--out=runs/lora_merged')
  print(json.dumps(export(_WORKDIR.value, _OUT.value)))


if __name__ == '__main__':
  cli.run_with_config(main, config_required=False)
