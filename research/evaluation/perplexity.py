"""Loss and perplexity of a trained run on any source: its own, another corpus, another split.

The text is tokenized with the run's own tokenizer (research.data.pipeline.load_split: prepared
into the cache like the training data) and scored exactly as the run's validation is: the run's
objective on consecutive windows of data.seq_len (+1) tokens, whole batches of
train.batch_size windows only (research.training.trainer.evaluate). With the run's own source
and split='validation' the numbers are `--task=validation`'s.

For decoders `loss` is next-token cross-entropy (nats/token) and `perplexity` exp(loss); for
encoders and encoder-decoders they are those of the masked-LM or span-corruption targets.
Decoders also get `bpb`, bits per UTF-8 byte of the scored text (trainer.scored_bytes), which
compares across tokenizers.
"""

from __future__ import annotations

from typing import Sequence

from research.errors import UserError
from research.evaluation import common


def perplexity(model, *, source: str = '', split: str = 'validation', batches: int = 0,
               step: int | None = None, overrides: Sequence[tuple[str, str]] = ()) -> dict:
  """{step, source, split, loss, perplexity, accuracy, tokens, bpb} of `model` (a
  research.LanguageModel or a workdir, see common.as_model) on `split` of `source` ('': the
  run's data.source; any data.source form but a mixture).

  `batches` caps the batches scored (0: every whole batch of the split).
  """
  from research import loading, objectives  # pylint: disable=g-import-not-at-top
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  if isinstance(model, loading.LanguageModel):
    config, tokenizer = model.config, model.require_tokenizer()
  else:
    config = loading.load_config(model, overrides)
    tokenizer = pipeline.load_tokenizer_from_workdir(model)
  source = source or config.data.source
  store = pipeline.load_split(config.data, tokenizer.name, source=source, split=split)
  window = objectives.get_objective(config.objective.name).window_len(config)
  needed = window * config.train.batch_size
  if store.num_tokens < needed:  # before the slow restore
    raise UserError(f'--source={source} --split={split} has {store.num_tokens} tokens with the '
                    f"run's tokenizer, fewer than one batch of train.batch_size="
                    f'{config.train.batch_size} windows of {window} tokens ({needed}): use more '
                    'text')
  lm = common.as_model(model, step=step, overrides=overrides)
  dataset = pipeline.Dataset(tokenizer=tokenizer, train=store, validation=store)
  metrics = trainer.evaluate(lm.run, lm.params, dataset, num_batches=batches,
                             model_state=lm.model_state)
  return {'step': lm.step, 'source': source, 'split': split,
          **{k.split('/', 1)[1]: v for k, v in metrics.items()}}
