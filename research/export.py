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

import jax
from absl import flags

from research import cli, config_lib, loading
from research.data import hf_tokenizer
from research.data import tokenizer as tokenizer_lib
from research.errors import UserError
from research.layers import moe as moe_lib
from research.training import peft, pruning, trainer

_WORKDIR = flags.DEFINE_string('workdir', None, 'a fine-tuning workdir written by research.train')
_OUT = flags.DEFINE_string('out', None, 'the plain workdir to write')


def export(workdir: str, out: str) -> dict:
  """Writes `out` from the latest checkpoint of `workdir`; returns a summary."""
  if os.path.abspath(workdir) == os.path.abspath(out):
    raise UserError('--out must differ from --workdir')
  lm = loading.load(workdir)
  method = lm.config.peft.method
  config, params = peft.merged_model(lm.config, lm.params)
  config.init_from = ''
  if config.objective.name == 'dpo':
    config.objective.name = 'sft'  # the exported model is a plain policy, with no reference
  config = config_lib.finalize(config)
  run = trainer.build_run(config)
  params = jax.device_put(params, run.state_shardings.params)
  # Aux-free MoE selection biases and sparsity masks (train.pruning) stay; the DPO reference
  # goes.
  model_state = {k: v for k, v in lm.model_state.items()
                 if k in (moe_lib.STATE_COLLECTION, pruning.MASKS)}
  loading.save_workdir(out, config, run, params, model_state)
  if tokenizer_lib.find_tokenizer(workdir) is not None:
    hf_tokenizer.copy_tokenizer_files(workdir, out)
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
