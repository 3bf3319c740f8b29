"""What every evaluation task shares: the model it scores (a research.LanguageModel, or a workdir
opened with research.load and the command's --config.eval.* overrides), the checks of the `eval`
config section, JSONL input files with line-numbered errors, and the text normalisation of
predictions."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

from research.errors import UserError

# Text fields whose command-line overrides read \n, \t and \\ as a line break, a tab and a
# backslash: prompt formats are mostly line breaks, which a shell makes awkward to type.
ESCAPED_FIELDS = ('eval.prompt_template', 'eval.example_separator')


def as_model(model, *, step: int | None = None, overrides: Sequence[tuple[str, Any]] = ()):
  """`model` itself when it is a research.LanguageModel (a loaded run, or the one the trainer
  evaluates during training), else the run in the workdir `model` at `step` (default the latest)
  with `overrides` (research.load)."""
  from research import loading  # pylint: disable=g-import-not-at-top
  if isinstance(model, loading.LanguageModel):
    if step is not None or overrides:
      raise UserError('step and overrides choose what to load from a workdir: pass them to '
                      'research.load, not with a loaded model')
    return model
  return loading.load(model, step=step, overrides=overrides)


def eval_config(model, overrides: Sequence[tuple[str, Any]] = ()):
  """The `eval` section a task reads: the model's, or the workdir's config.json with
  `overrides` (read before the slow restore, so bad input fails first)."""
  from research import loading  # pylint: disable=g-import-not-at-top
  if isinstance(model, loading.LanguageModel):
    return model.config.eval
  return loading.load_config(model, overrides).eval


def unescape(text: str) -> str:
  return re.sub(r'\\([nt\\])', lambda m: {'n': '\n', 't': '\t', '\\': '\\'}[m.group(1)], text)


def check_eval_config(e) -> None:
  """Raises ConfigError for an `eval` section that cannot work."""
  from research.errors import ConfigError  # pylint: disable=g-import-not-at-top
  for field in ('max_new_tokens', 'batch_size', 'beam_size'):
    if not isinstance(e[field], int) or e[field] < 1:
      raise ConfigError(f'eval.{field}', e[field], 'must be a positive integer')
  if not isinstance(e.k, int) or e.k < 0:
    raise ConfigError('eval.k', e.k, 'must be an integer >= 0 (0: zero-shot)')
  if not isinstance(e.stop, tuple) or not all(isinstance(s, str) and s for s in e.stop):
    raise ConfigError('eval.stop', e.stop, "must be a tuple of non-empty strings, e.g. ('\\n',)"
                      ' or () for none')
  template = e.prompt_template
  if '{input}' not in template or '{target}' not in template or (
      template.index('{input}') > template.index('{target}')):
    raise ConfigError('eval.prompt_template', template,
                      "must hold '{input}' and, after it, '{target}', e.g. "
                      "'Input: {input}\\nOutput: {target}'")


@dataclasses.dataclass(frozen=True)
class Record:
  """One line of an input JSONL file: its 1-based line number and its fields."""
  line: int
  fields: dict


def read_jsonl(path: str, *, what: str, example: str) -> list[Record]:
  """The JSON objects of `path`, one per non-blank line.

  Raises:
    UserError: a missing or empty file, or a line that is not UTF-8 or not a JSON object; the
      message names the file and line and shows `example`, a valid line.
  """
  if not path:
    raise UserError(f'--data is required: a JSONL file of {what}, one per line, e.g. {example}')
  if not os.path.isfile(path):
    raise UserError(f'--data={path}: no such file (a JSONL file of {what}, e.g. {example})')
  records = []
  with open(path, 'rb') as f:
    for number, data in enumerate(f, start=1):
      try:
        text = data.decode('utf-8')
      except UnicodeDecodeError as e:
        raise UserError(f'{path}:{number}: not UTF-8 (byte {e.start + 1} of the line): save the '
                        'file as UTF-8') from None
      if not text.strip():
        continue
      try:
        fields = json.loads(text)
      except json.JSONDecodeError as e:
        raise UserError(f'{path}:{number}: not valid JSON ({e.msg}): write one object per line, '
                        f'e.g. {example}') from None
      if not isinstance(fields, dict):
        raise UserError(f'{path}:{number}: a JSON {type(fields).__name__}, not an object: write '
                        f'one object per line, e.g. {example}')
      records.append(Record(number, fields))
  if not records:
    raise UserError(f'{path} is empty: write {what}, one JSON object per line, e.g. {example}')
  return records


def string_field(path: str, record: Record, name: str, example: str) -> str:
  """`record.fields[name]`, which must be a string (it may be empty only for targets)."""
  value = record.fields.get(name)
  if not isinstance(value, str):
    problem = 'has no' if name not in record.fields else f'has a {type(value).__name__} as its'
    raise UserError(f'{path}:{record.line}: the object {problem} "{name}" string; fields '
                    f'found: {sorted(record.fields)}. Expected e.g. {example}')
  return value


def normalise(text: str, stop: Sequence[str]) -> str:
  """What a prediction is compared as: leading whitespace dropped (the model's continuation
  usually starts with the space or line break after the prompt), the text cut at the first stop
  string, then stripped."""
  text = text.lstrip()
  cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
  return text[:cut].strip()


def write_outputs(out_dir: str, task: str, metrics: dict, rows: list[dict]) -> None:
  """`out_dir/{task}.json` (the metrics) and `out_dir/{task}_predictions.jsonl` (one row per
  input, in input order)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f'{task}.json'), 'w') as f:
    f.write(json.dumps(metrics, indent=2, sort_keys=True) + '\n')
  with open(os.path.join(out_dir, f'{task}_predictions.jsonl'), 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + '\n')
