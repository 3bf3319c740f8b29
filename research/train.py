"""Train a model: python -m research.train --config=configs/decoder/shakespeare.py --workdir=DIR.

Any config field can be overridden (--config.train.steps=200). Rerunning with the same workdir
resumes from its newest intact checkpoint. objective.name 'grpo' and 'ppo' run the RL loop
(research/rl/loop.py; configs/finetune/grpo.py, configs/finetune/ppo.py) instead of the
trainer's.

Exit status: 0 when the run reached train.steps; train.preemption_exit_code (143) after SIGTERM
and 130 after SIGINT, each once a checkpoint is saved; 2 with one line on stderr when the run
cannot continue (see research.errors), e.g. a non-finite step, a lost save, a workdir in use.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from research import cli, xla_flags
from research.training import trainer

_WORKDIR = flags.DEFINE_string('workdir', None, 'where checkpoints, logs and the tokenizer go')


def main(config, argv):
  del argv
  if not _WORKDIR.value:
    from research.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError('--workdir is required, e.g. --workdir=runs/shakespeare')
  if config.model.quantization.mode == 'ptq':
    from research.errors import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError('model.quantization.mode', 'ptq', "post-training quantized weights are "
                      "for inference: train with 'qat' (or 'none'), then quantize")
  if config.objective.name in ('grpo', 'ppo'):  # RL from feedback: rollouts, then updates
    from research.rl import loop  # pylint: disable=g-import-not-at-top
    final = loop.train(config, _WORKDIR.value)
  else:
    final = trainer.train(config, _WORKDIR.value)
  print(json.dumps(final, sort_keys=True), flush=True)
  if 'preempted_at' in final:  # saved, but not finished: a scheduler must not count it done
    from research.training import guards  # pylint: disable=g-import-not-at-top
    sys.exit(config.train.preemption_exit_code if final['preempted_by'] == 'SIGTERM'
             else guards.SIGINT_EXIT_CODE)


if __name__ == '__main__':
  xla_flags.configure_for_gpu()  # before JAX starts a backend; a no-op without a GPU
  cli.run_with_config(main)
