"""Evaluation tasks of a trained run, by name (`python -m research.evaluate --task=NAME`).

  validation  loss, perplexity and accuracy on the run's own validation split (the default)
  perplexity  the same on any source and split, tokenized with the run's tokenizer
  generation  BLEU, chrF and ROUGE of generations against references (a JSONL file)
  few_shot    exact-match accuracy with eval.k solved examples in each prompt (a JSONL file)
  lm_eval     lm-evaluation-harness tasks (eval.lm_eval.tasks, e.g. hellaswag,arc_easy)

Each task is a function of the workdir and keyword options that returns a dict of numbers; a
notebook calls it directly:

  from research.evaluation import few_shot
  few_shot.few_shot('runs/shakespeare', data='qa.jsonl', overrides=[('eval.k', '5')])

`TASKS` maps a name to its function and the command-line flags it reads.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from research.errors import UserError


@dataclasses.dataclass(frozen=True)
class Task:
  fn: Callable[..., dict]
  flags: tuple[str, ...]  # research.evaluate flags passed on as keyword arguments


def _validation(workdir, *, batches=0, step=None, overrides=()):
  from research import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.evaluate_workdir(workdir, batches=batches, step=step, overrides=overrides)


def _perplexity(workdir, **kwargs):
  from research.evaluation import perplexity  # pylint: disable=g-import-not-at-top
  return perplexity.perplexity(workdir, **kwargs)


def _generation(workdir, **kwargs):
  from research.evaluation import generation  # pylint: disable=g-import-not-at-top
  return generation.generation(workdir, **kwargs)


def _few_shot(workdir, **kwargs):
  from research.evaluation import few_shot  # pylint: disable=g-import-not-at-top
  return few_shot.few_shot(workdir, **kwargs)


def _lm_eval(workdir, **kwargs):
  from research.evaluation import harness  # pylint: disable=g-import-not-at-top
  return harness.lm_eval_task(workdir, **kwargs)


TASKS = {
    'validation': Task(_validation, ('batches', 'step')),
    'perplexity': Task(_perplexity, ('source', 'split', 'batches', 'step')),
    'generation': Task(_generation, ('data', 'out', 'step')),
    'few_shot': Task(_few_shot, ('data', 'out', 'step')),
    'lm_eval': Task(_lm_eval, ('out', 'step')),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise UserError(f'--task={name}: unknown task; use one of {sorted(TASKS)}')
  return TASKS[name]
