"""A synthetic long-range retrieval probe: a dataset and the objective that scores it.

Every sequence is a counting filler (token i + offset mod F) that starts with a key marker and
`value_repeats` copies of a value token and ends, as its last input, with a query marker whose
target is the value, at least seq_len - 1 - value_repeats positions later. Only that answer is
scored (objective 'sparse_attention_retrieval': causal LM batches whose weights are 1 at the
query position alone), so the validation loss and accuracy of research.training.trainer are the
retrieval's.

Information moves at most window - 1 positions per causal sliding-window layer, so L local
layers cannot bring the value farther than L x (window - 1): when that receptive field is
shorter than the distance, a local-only model stays at chance (1 / num_values), while one full
layer in the cycle can fetch the value directly. The value is the only token of its kind in
the sequence, so one full layer needs only content-based attention to find it; its copies give
that attention a stronger start (a single copy among 256 positions learns far more slowly).

This module is also the objective (research.objectives' interface: window_len, make_batch,
init_args, loss_fn); `register()` adds it to the objectives registry by name.
"""

from __future__ import annotations

import numpy as np

from research import objectives
from research.objectives import causal_lm

OBJECTIVE = 'sparse_attention_retrieval'


def register() -> str:
  """Makes `objective.name='sparse_attention_retrieval'` resolve to this module."""
  objectives.OBJECTIVES.setdefault(OBJECTIVE, __name__)
  return OBJECTIVE


class RetrievalTokenizer:
  """Ids of the probe: the usual specials, two markers, the values, then the filler."""
  pad_id, eos_id, unk_id, bos_id = 0, 1, 2, 3
  key_id, query_id = 4, 5
  first_value = 6

  def __init__(self, num_values: int, num_filler: int):
    self.num_values, self.num_filler = num_values, num_filler
    self.first_filler = self.first_value + num_values
    self.vocab_size = self.first_filler + num_filler


class RetrievalDataset:
  """The dataset interface research.training.trainer reads (train_batch / eval_batch are pure
  functions of their arguments). Windows have seq_len + 1 tokens: inputs [:-1], targets [1:]."""

  def __init__(self, *, num_values: int = 16, num_filler: int = 32, value_repeats: int = 8,
               eval_examples: int = 256, seed: int = 0):
    self.tokenizer = RetrievalTokenizer(num_values, num_filler)
    self.value_repeats, self.eval_examples, self.seed = value_repeats, eval_examples, seed

  def distance(self, seq_len: int) -> int:
    """How far back from the query the nearest copy of the value is."""
    return seq_len - 1 - self.value_repeats

  def windows(self, rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
    tok = self.tokenizer
    offsets = rng.integers(0, tok.num_filler, (n, 1))
    windows = tok.first_filler + (offsets + np.arange(seq_len + 1)[None, :]) % tok.num_filler
    values = tok.first_value + rng.integers(0, tok.num_values, n)
    windows[:, 0] = tok.key_id
    windows[:, 1:1 + self.value_repeats] = values[:, None]
    windows[:, seq_len - 1] = tok.query_id
    windows[:, seq_len] = values
    return windows.astype(np.int32)

  def _slice(self, windows, process_index, process_count):
    per = len(windows) // process_count
    return windows[process_index * per:(process_index + 1) * per]

  def train_batch(self, seed, step, global_batch, seq_len, process_index=0, process_count=1):
    rng = np.random.default_rng([self.seed, seed, step])
    return self._slice(self.windows(rng, global_batch, seq_len), process_index, process_count)

  def eval_batch(self, batch_index, global_batch, seq_len, process_index=0, process_count=1):
    rng = np.random.default_rng([self.seed, 10**6, batch_index])
    return self._slice(self.windows(rng, global_batch, seq_len), process_index, process_count)

  def num_eval_batches(self, global_batch, seq_len):
    del seq_len
    return max(1, self.eval_examples // global_batch)


# The objective: causal LM batches, scored at the query position only.
window_len = causal_lm.window_len
init_args = causal_lm.init_args
loss_fn = causal_lm.loss_fn


def make_batch(window_BT1: np.ndarray, *, tokenizer, config=None, rngs=None
               ) -> dict[str, np.ndarray]:
  batch = causal_lm.make_batch(window_BT1, tokenizer=tokenizer, config=config, rngs=rngs)
  batch['weights'] = (batch['inputs'] == tokenizer.query_id).astype(np.float32)
  return batch
