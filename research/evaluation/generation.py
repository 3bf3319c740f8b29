"""Generation metrics: BLEU and chrF (sacrebleu corpus scores) and ROUGE-1/2/L F (rouge-score).

Input: a JSONL file, one {"input": ..., "reference": ...} or {"input": ..., "references": [...]}
object per line. The run generates for every input (research.evaluation.generate: a decoder
continues the input, an encoder-decoder reads it as its encoder input), greedily unless
eval.beam_size > 1 (encoder-decoders), eval.max_new_tokens at most, in batches of
eval.batch_size. Each prediction is normalised (common.normalise: leading whitespace dropped,
cut at the first of eval.stop, stripped) before scoring.

Scores are on sacrebleu's 0-100 scale: BLEU (13a tokenization) and chrF over the corpus; ROUGE
is the mean over examples of the F-measure against the best-matching reference (rouge-score's
default tokenizer: lower-cased ASCII letters and digits), times 100.
"""

from __future__ import annotations

from typing import Sequence

from research.errors import UserError
from research.evaluation import common, generate

EXAMPLE = '{"input": "ROMEO: But soft,", "reference": "what light through yonder window breaks?"}'
ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')


def corpus_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
  """{'bleu', 'chrf', 'rouge1', 'rouge2', 'rougeL'} (0-100) of predictions against their
  references (one or more per prediction)."""
  import sacrebleu  # pylint: disable=g-import-not-at-top
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f'{len(predictions)} predictions for {len(references)} reference lists')
  # sacrebleu wants reference streams (the i-th reference of every example); examples with
  # fewer references fill their streams with None, which it skips.
  width = max(len(r) for r in references)
  streams = [[r[j] if j < len(r) else None for r in references] for j in range(width)]
  scores = {'bleu': sacrebleu.corpus_bleu(list(predictions), streams).score,
            'chrf': sacrebleu.corpus_chrf(list(predictions), streams).score}
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
  totals = dict.fromkeys(ROUGE_TYPES, 0.0)
  for prediction, refs in zip(predictions, references):
    best = scorer.score_multi(list(refs), prediction)
    for name in ROUGE_TYPES:
      totals[name] += best[name].fmeasure
  scores.update({name: 100.0 * total / len(predictions) for name, total in totals.items()})
  return scores


def read_examples(path: str) -> tuple[list[int], list[str], list[list[str]]]:
  """(line numbers, inputs, reference lists) of a generation JSONL file."""
  lines, inputs, references = [], [], []
  for record in common.read_jsonl(path, what='inputs with references', example=EXAMPLE):
    text = common.string_field(path, record, 'input', EXAMPLE)
    if 'references' in record.fields:
      refs = record.fields['references']
      if (not isinstance(refs, list) or not refs or
          not all(isinstance(r, str) for r in refs)):
        raise UserError(f'{path}:{record.line}: "references" must be a non-empty list of '
                        f'strings, e.g. {{"input": "...", "references": ["...", "..."]}}')
    else:
      refs = [common.string_field(path, record, 'reference', EXAMPLE)]
    lines.append(record.line)
    inputs.append(text)
    references.append(refs)
  return lines, inputs, references


def generation(model, *, data: str, out: str = '', step: int | None = None,
               overrides: Sequence[tuple[str, str]] = ()) -> dict:
  """BLEU, chrF and ROUGE of the generations of `model` (a research.LanguageModel or a workdir,
  see common.as_model) for the inputs of the JSONL file `data`.

  Returns {step, examples, unfinished (predictions that hit eval.max_new_tokens without eos or a
  stop string), bleu, chrf, rouge1, rouge2, rougeL}. With `out`, also writes out/generation.json
  and out/generation_predictions.jsonl ({line, input, prediction, references} per example).
  """
  lines, inputs, references = read_examples(data)  # bad input fails before the slow restore
  lm = common.as_model(model, step=step, overrides=overrides)
  generated = generate.generate(lm, inputs, lines=lines, path=data)
  stop = lm.config.eval.stop
  predictions = [common.normalise(t, stop) for t in generated.texts]
  unfinished = sum(not done and not any(s in t for s in stop)
                   for t, done in zip(generated.texts, generated.finished))
  metrics = {'step': lm.step, 'examples': len(inputs), 'unfinished': unfinished,
             **corpus_scores(predictions, references)}
  if out:
    common.write_outputs(out, 'generation', metrics, [
        {'line': n, 'input': i, 'prediction': p, 'references': r}
        for n, i, p, r in zip(lines, inputs, predictions, references)])
  return metrics
