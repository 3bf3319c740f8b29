"""Evaluation tasks during training: `eval.during_training`, run every train.eval_every steps
(and at the last step) on the parameters being trained, logged as eval/<task>/<metric>
(lm-evaluation-harness tasks as eval/lm_eval/<harness task>/<metric>).

  --config.eval.during_training='lm_eval:lambada_openai,perplexity:text:notes/*.txt'

An entry is NAME or NAME:ARG, with NAME a task of research.evaluation.TASKS and ARG the option
that task reads (Task.arg): perplexity:SOURCE (its validation split; no ARG: the run's own
source), few_shot:FILE.jsonl, generation:FILE.jsonl, lm_eval:TASK[,TASK...]. Entries are
separated by commas; a comma followed by something that is not a task name continues the
previous ARG (so lm_eval's task list needs no quoting of its own). A task named twice logs as
eval/NAME, eval/NAME_2, ...

The tasks score an in-memory research.LanguageModel of the trainer's own run (its mesh, its
compiled programs), so each task compiles once for the whole run, and its inputs are checked
(files read, sources prepared) before the first step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from research import evaluation
from research.errors import ConfigError, UserError

_FIELD = 'eval.during_training'


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str  # the task (research.evaluation.TASKS)
  label: str  # metrics are eval/<label>/<metric>
  options: dict  # keyword options of the task function


def _example() -> str:
  return "e.g. 'perplexity:text:notes/*.txt,few_shot:qa.jsonl,lm_eval:hellaswag,arc_easy'"


def parse(text: str) -> list[Entry]:
  """The entries of an eval.during_training string.

  Raises:
    ConfigError: an unknown task, a task without the ARG it needs, or an ARG for a task that
      takes none.
  """
  pieces = [p.strip() for p in str(text).split(',')] if str(text).strip() else []
  raw: list[list[str]] = []  # [name, arg]
  for piece in pieces:
    name, _, arg = piece.partition(':')
    if name in evaluation.TASKS:
      raw.append([name, arg])
    elif raw and raw[-1][1]:
      raw[-1][1] += ',' + piece  # the previous ARG continues (a list of lm_eval tasks)
    else:
      raise ConfigError(_FIELD, text, f'{piece!r} is not an evaluation task: each entry is NAME '
                        f'or NAME:ARG with NAME one of {sorted(evaluation.TASKS)}, {_example()}')
  entries, seen = [], {}
  for name, arg in raw:
    task = evaluation.TASKS[name]
    if arg and not task.arg:
      raise ConfigError(_FIELD, text, f'{name} takes no argument: write {name!r} alone')
    if task.arg_required and not arg:
      raise ConfigError(_FIELD, text, f'{name} needs its {task.arg}: write {name}:'
                        f'{task.arg.upper()}, {_example()}')
    seen[name] = seen.get(name, 0) + 1
    label = name if seen[name] == 1 else f'{name}_{seen[name]}'
    entries.append(Entry(name, label, {task.arg: arg} if arg else {}))
  return entries


def check(config) -> None:
  """Raises ConfigError for an eval.during_training the run cannot do (before anything runs)."""
  entries = parse(config.eval.during_training)
  generating = [e.name for e in entries if evaluation.TASKS[e.name].generates]
  if generating and config.model.get('family', 'decoder') == 'encoder':
    raise ConfigError(_FIELD, config.eval.during_training,
                      f'{generating[0]} generates text; an encoder run does not: use '
                      'validation or perplexity')


def _numbers(result: dict, prefix: str) -> dict[str, float]:
  """The numeric results of a task as eval/<label>/<name> (its step and text fields dropped)."""
  return {f'{prefix}/{k}': float(v) for k, v in result.items()
          if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Evaluator:
  """Runs a run's eval.during_training entries on its current parameters.

  `run` is the trainer's research.training.trainer.Run, `dataset` its loaded data (its tokenizer
  is the run's), `workdir` its directory.
  """

  def __init__(self, run, workdir: str, dataset, entries: list[Entry]):
    self.run, self.workdir, self.dataset, self.entries = run, workdir, dataset, entries
    if any(evaluation.TASKS[e.name].generates for e in entries) and jax.process_count() > 1:
      raise ConfigError(_FIELD, run.config.eval.during_training,
                        'generation and few_shot run in one process; drop them for a '
                        'multi-process run (evaluate its checkpoints with research.evaluate)')
    for entry in entries:
      self._prepare(entry)

  @classmethod
  def create(cls, run, workdir: str, dataset) -> 'Evaluator | None':
    check(run.config)
    entries = parse(run.config.eval.during_training)
    return cls(run, workdir, dataset, entries) if entries else None

  def _prepare(self, entry: Entry) -> None:
    """Reads the entry's inputs once before training, so that bad input stops the run now."""
    from research.evaluation import few_shot, generation  # pylint: disable=g-import-not-at-top
    options = entry.options
    if entry.name == 'perplexity':
      from research.data import pipeline  # pylint: disable=g-import-not-at-top
      data = self.run.config.data
      pipeline.load_split(data, self.dataset.tokenizer.name,
                          source=options.get('source') or data.source, split='validation')
    elif entry.name == 'few_shot':
      few_shot.read_examples(options['data'])
    elif entry.name == 'generation':
      generation.read_examples(options['data'])
    elif entry.name == 'lm_eval':
      from research.evaluation import harness  # pylint: disable=g-import-not-at-top
      settings = self.run.config.eval.lm_eval
      harness.check_settings(num_fewshot=settings.num_fewshot, limit=settings.limit,
                             include_path=settings.include_path)
      names = harness.task_names(options['tasks'])
      harness.check_task_names(names, harness.task_manager(settings.include_path, names),
                               settings.include_path)

  def model(self, step: int, state):
    """The trained state as a research.LanguageModel (no copy: the same device arrays)."""
    from research import loading  # pylint: disable=g-import-not-at-top
    return loading.LanguageModel(config=self.run.config, run=self.run, params=state.params,
                                 model_state=state.model_state, step=step,
                                 tokenizer=self.dataset.tokenizer, workdir=self.workdir)

  def __call__(self, step: int, state) -> dict[str, float]:
    lm = self.model(step, state)
    metrics: dict[str, Any] = {}
    for entry in self.entries:
      options = dict(entry.options)
      if entry.name == 'validation':
        options['dataset'] = self.dataset
      try:
        result = evaluation.TASKS[entry.name].fn(lm, **options)
      except UserError as e:
        raise UserError(f'{_FIELD} entry {entry.label} at step {step}: {e}') from None
      metrics.update(_numbers(result, f'eval/{entry.label}'))
    return metrics


def describe(metrics: dict[str, float], entries: list[Entry]) -> str:
  """One short line per evaluation: each entry's first few numbers."""
  parts = []
  for entry in entries:
    prefix = f'eval/{entry.label}/'
    mine = [(k[len(prefix):], v) for k, v in metrics.items() if k.startswith(prefix)]
    parts.append(f'{entry.label} ' + ', '.join(f'{k} {v:.4g}' for k, v in mine[:4]))
  return '; '.join(parts)
