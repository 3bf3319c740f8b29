"""Evaluate a trained run: python -m research.evaluate --workdir=runs/shakespeare [--task=NAME].

Prints one JSON line of metrics. Tasks (research/evaluation/, each an importable function):

  python -m research.evaluate --workdir=runs/shakespeare         # --task=validation
      loss (nats/token), perplexity, next-token accuracy and target tokens over the whole
      validation split (or --batches batches) of the run's own data source; "covers" says
      which. This is the validation loss to quote: the trainer's eval/loss covers only
      train.eval_batches batches. SFT/DPO/reward runs are scored on their held-out examples
      (DPO, reward models: preference accuracy and reward margin over pairs, no perplexity).
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
  python -m research.evaluate --workdir=runs/shakespeare --task=lm_eval \
      --config.eval.lm_eval.tasks=hellaswag,arc_easy --config.eval.lm_eval.num_fewshot=0
      lm-evaluation-harness tasks (research/evaluation/harness.py; needs the `eval` extra and
      the tasks' data); --out writes the harness's results JSON.

The prompt format and generation settings are the run's `eval` config section
(research/config_lib.py: prompt_template, example_separator, k, seed, max_new_tokens, stop,
batch_size, beam_size, length_penalty), overridden with --config.eval.FIELD=VALUE (no --config
file: the run's saved config.json is the base). --step picks a checkpoint (default the latest).
"""

from __future__ import annotations

import json

import jax
from absl import flags

from research import cli, evaluation
from research.errors import UserError

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
  flags.DEFINE_string('out', '', 'generation/few_shot/lm_eval: a directory for the metrics and '
                      'predictions')


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
