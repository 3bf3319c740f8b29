"""Few-shot prompting: k solved examples in the prompt, then the query; exact-match accuracy.

Input: a JSONL file, one {"input": ..., "target": ...} object per line. For the query on line i,
eval.k other examples of the same file are drawn without replacement by a generator seeded with
(eval.seed, i): never the query itself, and the same prompts on every run with the same seed.
Each example is eval.prompt_template with '{input}' and '{target}' filled in; the query is the
template cut just before '{target}' (trailing spaces dropped too: sentencepiece attaches a
word's leading space to the word, so the model writes " red" as one piece after "Output:").
The prompt is the examples and the query joined by eval.example_separator.

The model continues the prompt greedily for at most eval.max_new_tokens tokens. Normalisation
(common.normalise): leading whitespace dropped, the text cut at the first stop string of
eval.stop (default: a line break) and stripped. A prediction is correct when that equals the
stripped target exactly (case and punctuation count).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from research.errors import UserError
from research.evaluation import common, generate

EXAMPLE = '{"input": "What is 2 + 2?", "target": "4"}'


def format_example(template: str, input_text: str, target: str) -> str:
  # str.replace rather than str.format: inputs and targets may hold braces.
  return template.replace('{input}', input_text).replace('{target}', target)


def format_query(template: str, input_text: str) -> str:
  head = template[:template.index('{target}')].rstrip(' ')
  return head.replace('{input}', input_text)


def choose_shots(num_examples: int, index: int, *, k: int, seed: int) -> list[int]:
  """The k example indices shown with query `index`: distinct, never `index`, a pure function
  of (num_examples, index, k, seed)."""
  pool = np.array([j for j in range(num_examples) if j != index], np.int64)
  if k > len(pool):
    raise UserError(f'eval.k={k}: the file has only {num_examples} examples, so a query can show '
                    f'at most {len(pool)} others: lower --config.eval.k or add examples')
  rng = np.random.default_rng([seed, index])
  return rng.choice(pool, size=k, replace=False).tolist()


def build_prompts(inputs: Sequence[str], targets: Sequence[str], eval_config) -> list[str]:
  """The prompt of every query (see the module docstring)."""
  e = eval_config
  prompts = []
  for i, text in enumerate(inputs):
    shots = [format_example(e.prompt_template, inputs[j], targets[j])
             for j in choose_shots(len(inputs), i, k=e.k, seed=e.seed)]
    prompts.append(e.example_separator.join(shots + [format_query(e.prompt_template, text)]))
  return prompts


def read_examples(path: str) -> tuple[list[int], list[str], list[str]]:
  """(line numbers, inputs, targets) of a few-shot JSONL file."""
  lines, inputs, targets = [], [], []
  for record in common.read_jsonl(path, what='examples with targets', example=EXAMPLE):
    inputs.append(common.string_field(path, record, 'input', EXAMPLE))
    targets.append(common.string_field(path, record, 'target', EXAMPLE))
    lines.append(record.line)
  return lines, inputs, targets


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> list[bool]:
  """Normalised predictions (common.normalise) against stripped targets."""
  return [p == t.strip() for p, t in zip(predictions, targets)]


def few_shot(model, *, data: str, out: str = '', step: int | None = None,
             overrides: Sequence[tuple[str, str]] = ()) -> dict:
  """Exact-match accuracy of the few-shot answers of `model` (a research.LanguageModel or a
  workdir, see common.as_model) to the examples of the JSONL `data`.

  Returns {step, examples, k, correct, accuracy, unfinished (answers that hit
  eval.max_new_tokens without eos or a stop string)}. With `out`, also writes out/few_shot.json
  and out/few_shot_predictions.jsonl ({line, prompt, prediction, target, correct}).
  """
  lines, inputs, targets = read_examples(data)  # bad input fails before the slow restore
  e = common.eval_config(model, overrides)
  prompts = build_prompts(inputs, targets, e)
  lm = common.as_model(model, step=step, overrides=overrides)
  generated = generate.generate(lm, prompts, lines=lines, path=data)
  predictions = [common.normalise(t, e.stop) for t in generated.texts]
  correct = exact_match(predictions, targets)
  unfinished = sum(not done and not any(s in t for s in e.stop)
                   for t, done in zip(generated.texts, generated.finished))
  metrics = {'step': lm.step, 'examples': len(inputs), 'k': e.k, 'correct': sum(correct),
             'accuracy': sum(correct) / len(correct), 'unfinished': unfinished}
  if out:
    common.write_outputs(out, 'few_shot', metrics, [
        {'line': n, 'prompt': p, 'prediction': q, 'target': t, 'correct': c}
        for n, p, q, t, c in zip(lines, prompts, predictions, targets, correct)])
  return metrics
