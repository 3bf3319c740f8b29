"""Evaluate a trained run: python -m research.evaluate --workdir=runs/shakespeare [--task=NAME].

Prints one JSON line of metrics. Tasks (research/evaluation/, each an importable function):

  python -m research.evaluate --workdir=runs/shakespeare         # --task=validation
      loss (nats/token), perplexity, next-token accuracy and target tokens over the whole
      validation split (or --batches batches) of the run's own data source; "covers" says
      which. This is the validation loss to quote: the trainer's eval/loss covers only
      train.eval_batches batches. SFT/DPO runs are scored on their held-out examples (DPO:
      preference accuracy and reward margin over pairs, no perplexity).
  python -m research.evaluate --workdir=runs/shakespeare --task=perplexity \
      --source=text:'notes/*.txt' --split=validation
      the same on any source ('shakespeare' | 'tfds:NAME' | 'text:GLOB'; default the run's),
      tokenized with the run's tokenizer.
  python -m research.evaluate --workdir=runs/shakespeare --task=generation --data=pairs.jsonl \
      --out=ev
      BLEU, chrF (sacrebleu) and ROUGE-1/2/L F (rouge-score), 0-100, of greedy generations for
      {"input", "reference" | "references"} lines; --out writes the predictions beside the
      metrics.
  python -m research.evaluate --workdir=runs/shakespeare --task=few_shot --data=qa.jsonl \
      --config.eval.k=3
      exact-match accuracy with k examples of {"input", "target"} lines in each prompt.

The prompt format and generation settings are the run's `eval` config section
(research/config_lib.py: prompt_template, example_separator, k, seed, max_new_tokens, stop,
batch_size, beam_size, length_penalty), overridden with --config.eval.FIELD=VALUE (no --config
file: the run's saved config.json is the base). --step picks a checkpoint (default the latest).
"""

from __future__ import annotations

import json
import os

import jax
from absl import flags

from research import cli, config_lib, evaluation
from research.errors import UserError
from research.training import checkpointing, trainer

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags. Defined only when run as a command, so that importing this module next
  to another entry point (research.train also has --workdir) never defines a flag twice."""
  flags.DEFINE_string('workdir', None, 'a directory written by research.train')
  flags.DEFINE_string('task', 'validation', f'one of {sorted(evaluation.TASKS)}')
  flags.DEFINE_integer('batches', 0, 'validation/perplexity batches; 0: the whole split')
  flags.DEFINE_integer('step', None, 'checkpoint step; default the latest')
  flags.DEFINE_string('source', '', "perplexity: 'shakespeare' | 'tfds:NAME' | 'text:GLOB'; "
                      "'': the run's own")
  flags.DEFINE_string('split', 'validation', "perplexity: 'train' | 'validation'")
  flags.DEFINE_string('data', '', 'generation/few_shot: the JSONL file of examples')
  flags.DEFINE_string('out', '', 'generation/few_shot: a directory for the metrics and '
                      'predictions')


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


def evaluate_workdir(workdir: str, *, batches: int = 0, step: int | None = None,
                     overrides=()) -> dict:
  """Validation metrics of the latest (or `step`) checkpoint in `workdir`; `overrides` as in
  research.evaluation.common.load_run_config (data locations)."""
  if overrides:
    from research.evaluation import common  # pylint: disable=g-import-not-at-top
    config = common.load_run_config(workdir, overrides)
  else:
    config = config_lib.load_saved_config(os.path.join(workdir, 'config.json'))
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor, config.mesh.expert = -1, 1, 1, 1
    config = config_lib.finalize(config)
  run, state = load_state(workdir, config, step=step)
  dataset = trainer.load_dataset(run, workdir)  # an SFT/DPO run: its own held-out examples
  # model_state: the trained aux-free selection bias (an MoE model routes with 0 without it).
  metrics = trainer.evaluate(run, state.params, dataset, num_batches=batches,
                             model_state=state.model_state)
  out = {'step': int(state.step), **{k.split('/', 1)[1]: v for k, v in metrics.items()}}
  out['batches'], out['split_batches'] = int(out['batches']), int(out['split_batches'])
  # Which loss is this? The trainer's eval/loss covers train.eval_batches batches only.
  out['covers'] = ('the whole validation split' if out['batches'] >= out['split_batches'] else
                   f"{out['batches']} of {out['split_batches']} validation batches (--batches)")
  return out


def main(config, argv, overrides):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {argv[1:]}: flags are written --name=value')
  if config is not None:
    raise UserError("--config: evaluation reads the run's saved config.json; change its eval "
                    'section with --config.eval.FIELD=VALUE alone')
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/shakespeare')
  task = evaluation.get_task(FLAGS.task)
  unread = [name for name in ('batches', 'source', 'split', 'data', 'out')
            if FLAGS[name].present and name not in task.flags]
  if unread:
    raise UserError(f'--task={FLAGS.task} does not read --{", --".join(unread)}: it reads '
                    f'--{", --".join(task.flags)}')
  result = task.fn(FLAGS.workdir, overrides=overrides,
                   **{name: FLAGS[name].value for name in task.flags})
  if jax.process_index() == 0:
    print(json.dumps({'task': FLAGS.task, **result}))


if __name__ == '__main__':
  define_flags()
  cli.run_with_config(main, config_required=False, pass_overrides=True)
