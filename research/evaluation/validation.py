"""The run's own validation metrics over its whole validation split (research.evaluate's default
task): the loss to quote, since the trainer's eval/loss covers only train.eval_batches batches.

SFT, DPO and reward runs are scored on their own held-out examples (trainer.load_dataset: DPO
and reward models report preference accuracy and reward margin over pairs, no perplexity).
"""

from __future__ import annotations

from typing import Sequence

from research.evaluation import common


def validation(model, *, batches: int = 0, step: int | None = None,
               overrides: Sequence[tuple[str, str]] = (), dataset=None) -> dict:
  """{step, loss, perplexity, accuracy, tokens, bpb, batches, split_batches, covers} of `model`
  (a research.LanguageModel or a workdir, see common.as_model).

  `batches` caps the batches scored (0: the whole split); `dataset` is the run's data when the
  caller has it loaded (the trainer), else it is loaded from the run's workdir.
  """
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  lm = common.as_model(model, step=step, overrides=overrides)
  if dataset is None:
    dataset = trainer.load_dataset(lm.run, lm.workdir)  # an SFT/DPO run: its held-out examples
  # model_state: the trained aux-free selection bias (an MoE model routes with 0 without it),
  # a DPO run's reference.
  metrics = trainer.evaluate(lm.run, lm.params, dataset, num_batches=batches,
                             model_state=lm.model_state)
  out = {'step': lm.step, **{k.split('/', 1)[1]: v for k, v in metrics.items()}}
  out['batches'], out['split_batches'] = int(out['batches']), int(out['split_batches'])
  out['covers'] = ('the whole validation split' if out['batches'] >= out['split_batches'] else
                   f"{out['batches']} of {out['split_batches']} validation batches (--batches)")
  return out
