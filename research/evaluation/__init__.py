"""Evaluation tasks, by name: `python -m research.evaluate --task=NAME`, and during training
(`eval.during_training`, research/evaluation/during_training.py).

  validation  loss, perplexity, accuracy and bits per byte on the run's own validation split
              (the default)
  perplexity  the same on any source and split, tokenized with the run's tokenizer
  generation  BLEU, chrF and ROUGE of generations against references (a JSONL file)
  few_shot    exact-match accuracy with eval.k solved examples in each prompt (a JSONL file)
  lm_eval     lm-evaluation-harness tasks (eval.lm_eval.tasks, e.g. hellaswag,arc_easy)

Each task is a function of a model (a research.LanguageModel, or a workdir that it opens with
research.load) and keyword options that returns a dict of numbers; a notebook calls it directly:

  from research.evaluation import few_shot
  few_shot.few_shot('runs/shakespeare', data='qa.jsonl', overrides=[('eval.k', '5')])
  few_shot.few_shot(research.load('runs/shakespeare'), data='qa.jsonl')

`TASKS` maps a name to its function, the command-line flags it reads, and the option an
`eval.during_training` entry NAME:ARG sets.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from research.errors import UserError


@dataclasses.dataclass(frozen=True)
class Task:
  function: str  # 'MODULE.FUNCTION' in research.evaluation: fn(model, **options) -> metrics
  flags: tuple[str, ...]  # research.evaluate flags passed on as keyword arguments
  arg: str = ''  # the option that ARG of a during-training entry 'NAME:ARG' sets ('': none)
  arg_required: bool = False
  generates: bool = False  # decodes text: decoder or encoder-decoder runs, one process

  @property
  def fn(self) -> Callable[..., dict]:
    """Imported on first use (the harness imports slowly)."""
    module, name = self.function.rsplit('.', 1)
    return getattr(importlib.import_module(f'research.evaluation.{module}'), name)


TASKS = {
    'validation': Task('validation.validation', ('batches', 'step')),
    'perplexity': Task('perplexity.perplexity', ('source', 'split', 'batches', 'step'),
                       arg='source'),
    'generation': Task('generation.generation', ('data', 'out', 'step'), arg='data',
                       arg_required=True, generates=True),
    'few_shot': Task('few_shot.few_shot', ('data', 'out', 'step'), arg='data',
                     arg_required=True, generates=True),
    'lm_eval': Task('harness.lm_eval_task', ('out', 'step'), arg='tasks', arg_required=True),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise UserError(f'--task={name}: unknown task; use one of {sorted(TASKS)}')
  return TASKS[name]
