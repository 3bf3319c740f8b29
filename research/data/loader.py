"""Host batches with Grain: a dataset of steps, mapped to this process's rows of each batch.

The batch of step s is a pure function of (seed, s): `BatchBuilder.train(s)` reads this
process's windows (`Dataset.train_batch`) and applies the objective's transform (causal LM
segments, MLM masking, span corruption, ...) with per-row generators. Grain turns that into an
iterator over steps `first..stop-1`:

  data.workers = 0   the batches are built in the trainer's thread, one step at a time, just
                     before the device transfer that `trainer.prefetched_train_batches` issues
                     `train.prefetch` steps ahead (what a CPU host with 2 cores wants);
  data.workers = N   N Grain worker processes build them (`mp_prefetch`), so the objective's
                     CPU work scales with the host's cores; Grain hands them back in step order.

Either way the iterator restarts at any step (resume needs only the step, on any number of
processes), and each process reads only its own rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from research.data import sampler

EVAL_SEED = 2**31 - 1  # evaluation noise is fixed, not the run's seed: runs compare on one set


def row_rngs(*key: int, global_batch: int, process_index: int,
             process_count: int) -> list[np.random.Generator]:
  """One generator per global row, this process's rows only: objectives that draw noise
  (masking, span corruption) then give the same batch whatever the number of processes."""
  rows = range(global_batch)[sampler.process_slice(global_batch, process_index, process_count)]
  return [np.random.default_rng([*key, row]) for row in rows]


@dataclasses.dataclass
class BatchBuilder:
  """Builds this process's host batches; picklable, so Grain workers can run it."""

  dataset: Any  # research.data.pipeline.Dataset or MixtureDataset, or any with train_batch
  config: Any
  process_index: int = 0
  process_count: int = 1

  def _objective(self):
    from research import objectives  # pylint: disable=g-import-not-at-top

    return objectives.get_objective(self.config.objective.name)

  def train(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the training batch of `step`."""
    c, objective = self.config, self._objective()
    windows = self.dataset.train_batch(c.seed, step, c.train.batch_size,
                                       objective.window_len(c) - 1, self.process_index,
                                       self.process_count)
    return objective.make_batch(windows, tokenizer=self.dataset.tokenizer, config=c,
                                rngs=self._rngs(c.seed, step))

  def eval(self, index: int, dataset: Any = None) -> dict[str, np.ndarray]:
    """This process's rows of validation batch `index` of `dataset` (default: the run's)."""
    c, objective = self.config, self._objective()
    dataset = dataset if dataset is not None else self.dataset
    windows = dataset.eval_batch(index, c.train.batch_size, objective.window_len(c) - 1,
                                 self.process_index, self.process_count)
    return objective.make_batch(windows, tokenizer=dataset.tokenizer, config=c,
                                rngs=self._rngs(EVAL_SEED, index))

  def _rngs(self, *key: int) -> list[np.random.Generator]:
    return row_rngs(*key, global_batch=self.config.train.batch_size,
                    process_index=self.process_index, process_count=self.process_count)


def train_batches(builder: BatchBuilder, first: int, stop: int, *, workers: int = 0,
                  buffer: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Host batches of steps first..stop-1 in order; `workers` Grain processes build them."""
  import grain  # pylint: disable=g-import-not-at-top

  steps = grain.MapDataset.range(first, stop).map(builder.train)
  if workers <= 0:  # indexing, not iter(): that would start Grain's prefetch threads
    return (steps[i] for i in range(len(steps)))
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; a notebook or a test has none
    flags.FLAGS.mark_as_parsed()
  return iter(steps.to_iter_dataset().mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(buffer, 1))))
