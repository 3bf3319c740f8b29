"""The fine-tuning worked example, end to end: python -m experiments.finetune.run --workdir=DIR.

1. builds the instruction set from the corpus (build_data.py) into DIR/data;
2. pre-trains the Shakespeare decoder (configs/decoder/shakespeare.py) into DIR/pretrain, or
   reuses the checkpoint there (or --pretrained=WORKDIR);
3. fine-tunes it twice from that checkpoint (configs/experiments/finetune/shakespeare.py): full
   SFT (DIR/sft_full) and LoRA (DIR/sft_lora);
4. scores the held-out questions with each model, base model included, as multiple choice: the
   candidate with the highest log-likelihood per token given the prompt is the answer (the eight
   titles for "which play"; the true next line against three others of the same play for
   "continue"), and writes DIR/results.csv and DIR/results.md with the parameter counts.
"""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
from absl import app, flags

import research
from research import cli, config_lib
from research.data import sft
from research.errors import exit_on_user_error
from research.training import peft, trainer
from experiments.finetune import build_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN_CONFIG = os.path.join(REPO, 'configs/decoder/shakespeare.py')
FINETUNE_CONFIG = os.path.join(REPO, 'configs/experiments/finetune/shakespeare.py')

_WORKDIR = flags.DEFINE_string('workdir', None, 'where everything goes')
_PRETRAINED = flags.DEFINE_string('pretrained', '', 'a pre-trained workdir to reuse')
_TINY = flags.DEFINE_bool('tiny', False, 'a few steps of everything (smoke test)')


def score_questions(lm, questions, *, batch_size: int = 64):
  """Per question, the index of the candidate with the highest log-likelihood per token, under
  `lm` (a research.LanguageModel).

  Per token (the mean over the candidate's tokens and its eos), not summed: a sum favours short
  candidates ("Tempest" over "Much Ado About Nothing"), which is a length prior, not knowledge.
  """
  tokenizer = lm.require_tokenizer()
  examples, owners = [], []
  for q, question in enumerate(questions):
    for candidate in question['candidates']:
      examples.append(sft.encode_pieces([(question['prompt'], False), (candidate, True)],
                                        tokenizer))
      owners.append(q)
  longest = max(len(ids) for ids, _ in examples)
  rows = sft.decoder_rows(examples, longest, pack=False, pad_id=tokenizer.pad_id)
  # Whole right-padded examples; weights_BT marks the candidate's tokens among the targets.
  tokens_BT = np.concatenate([rows['inputs'][:, :1], rows['targets']], axis=1)
  weights_BT = rows['weights']
  scores = []
  n = len(examples)
  for start in range(0, n, batch_size):
    index = np.minimum(np.arange(start, start + batch_size), n - 1)  # fixed shapes
    logp_BT = np.asarray(lm.score(tokens_BT[index]))[:, 1:]  # each target given its past
    mean_B = (logp_BT * weights_BT[index]).sum(-1) / weights_BT[index].sum(-1)
    scores.append(mean_B[:min(batch_size, n - start)])
  scores = np.concatenate(scores)
  owners = np.asarray(owners)
  return [int(np.argmax(scores[owners == q])) for q in range(len(questions))]


def accuracies(questions, predictions) -> dict[str, float]:
  out = {}
  for task in ('which_play', 'continue'):
    for subset, keep in (('all', lambda q: True), ('unseen', lambda q: q['unseen'])):
      hits = [p == q['answer'] for q, p in zip(questions, predictions)
              if q['task'] == task and keep(q)]
      out[f'{task}/{subset}'] = float(np.mean(hits))
  return out


def chance(questions) -> dict[str, float]:
  return {task: float(np.mean([1 / len(q['candidates']) for q in questions if q['task'] == task]))
          for task in ('which_play', 'continue')}


def pretrain(workdir: str, tiny: bool) -> str:
  path = os.path.join(workdir, 'pretrain')
  config = config_lib.load_config(PRETRAIN_CONFIG + (':tiny' if tiny else ''))
  trainer.train(config, path)  # resumes, or returns at once when already done
  return path


def finetune(variant: str, source: str, data_dir: str, workdir: str, tiny: bool):
  spec = f'{FINETUNE_CONFIG}:{variant}' + (',tiny' if tiny else '')
  overrides = [('init_from', source),
               ('finetune.train_data', os.path.join(data_dir, 'train.jsonl')),
               ('finetune.eval_data', os.path.join(data_dir, 'eval.jsonl'))]
  config = config_lib.load_config(spec, overrides)
  path = os.path.join(workdir, f'sft_{variant}')
  summary = os.path.join(path, 'summary.json')
  if os.path.isfile(summary):  # finished earlier: reuse its numbers and checkpoint
    with open(summary) as f:
      final, seconds = json.load(f)
  else:
    start = time.perf_counter()
    final = trainer.train(config, path)
    seconds = time.perf_counter() - start
    with open(summary, 'w') as f:
      json.dump([final, seconds], f)
  return research.load(path), final, seconds


def run(workdir: str, *, pretrained: str = '', tiny: bool = False) -> list[dict]:
  data_dir = os.path.join(workdir, 'data')
  counts = build_data.build(data_dir, **({'which_train': 10, 'continue_train': 5,
                                           'which_eval': 2, 'continue_eval': 1} if tiny else {}))
  print(f'data: {json.dumps(counts)}', flush=True)
  with open(os.path.join(data_dir, 'questions.json')) as f:
    questions = json.load(f)
  start = time.perf_counter()
  source = pretrained or pretrain(workdir, tiny)
  pretrain_seconds = time.perf_counter() - start
  base = research.load(source)

  results = []
  base_counts = peft.count_params(base.params, base.config.peft)
  rows = [('pre-trained (no fine-tuning)', base, {}, pretrain_seconds,
           {'trainable_params': 0, 'total_params': base_counts['total_params']})]
  for variant, label in (('full', 'full SFT'), ('lora', 'LoRA r=8 (SFT)')):
    lm, final, seconds = finetune(variant, source, data_dir, workdir, tiny)
    rows.append((label, lm, final, seconds, peft.count_params(lm.params, lm.config.peft)))
  for label, lm, final, seconds, count in rows:
    acc = accuracies(questions, score_questions(lm, questions))
    results.append({'model': label, **count, **acc,
                    'eval_loss': final.get('eval/loss', float('nan')),
                    'seconds': round(seconds, 1)})
    print(json.dumps(results[-1]), flush=True)
  write_results(workdir, results, chance(questions), len(questions))
  return results


def write_results(workdir: str, results: list[dict], chance_rates: dict, num_questions: int):
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(results[0]))
    writer.writeheader()
    writer.writerows(results)
  lines = [
      f'Held-out multiple-choice accuracy ({num_questions} questions; "unseen": the three plays '
      'pre-training never read). Chance: which play '
      f"{chance_rates['which_play']:.3f}, continue {chance_rates['continue']:.3f}.",
      '',
      '| model | trainable params | total params | which play (all) | which play (unseen) | '
      'continue (all) | continue (unseen) | eval loss (responses) | seconds |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in results:
    lines.append(f"| {r['model']} | {r['trainable_params']:,} | {r['total_params']:,} | "
                 f"{r['which_play/all']:.3f} | {r['which_play/unseen']:.3f} | "
                 f"{r['continue/all']:.3f} | {r['continue/unseen']:.3f} | "
                 f"{r['eval_loss']:.3f} | {r['seconds']:.0f} |")
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


@exit_on_user_error
def main(argv):
  del argv
  cli.quiet_logs()
  if not _WORKDIR.value:
    from research.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError('--workdir is required, e.g. --workdir=runs/finetune')
  run(_WORKDIR.value, pretrained=_PRETRAINED.value, tiny=_TINY.value)


if __name__ == '__main__':
  app.run(main)
