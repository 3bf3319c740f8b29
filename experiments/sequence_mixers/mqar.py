"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): a dataset and its objective.

A sequence first lists n key-value pairs (k_1 v_1 k_2 v_2 ... k_n v_n; the keys distinct, the
values drawn with replacement), then queries every key once, in a random order, at random
places of the rest of the sequence: a query is the key again, and its target (the next token)
is the key's value, which is also the next input, as in Zoology. Everything else is one filler
token. Only the query positions are scored (objective 'sequence_mixers_mqar': causal LM batches
whose weights are 1 where the input is a query), so the validation accuracy of
research.training.trainer is the recall accuracy over queries; chance is 1 / num_values.

To answer, a model must store n associations while reading the pairs and look one up per query:
attention keeps every pair in its cache; a recurrent mixer must fit them in its fixed state,
which is the limit Zoology measures against the number of pairs and the model's width.

Training draws each sequence's n uniformly from `kv_pairs` (Zoology trains on a mixture too);
`eval_sets()` gives one held-out set per n, so the trainer reports eval/kvN/accuracy for each.
"""

from __future__ import annotations

import numpy as np

from research import objectives
from research.errors import ConfigError
from research.objectives import causal_lm

OBJECTIVE = 'sequence_mixers_mqar'


def register() -> str:
  """Makes `objective.name='sequence_mixers_mqar'` resolve to this module."""
  objectives.OBJECTIVES.setdefault(OBJECTIVE, __name__)
  return OBJECTIVE


class MQARTokenizer:
  """Ids: the usual specials, the filler, the keys, then the values."""
  pad_id, eos_id, unk_id, bos_id = 0, 1, 2, 3
  filler_id = 4
  first_key = 5

  def __init__(self, num_keys: int, num_values: int):
    self.num_keys, self.num_values = num_keys, num_values
    self.first_value = self.first_key + num_keys
    self.vocab_size = self.first_value + num_values

  def is_key(self, ids):
    return (ids >= self.first_key) & (ids < self.first_value)


def max_pairs(seq_len: int) -> int:
  """The most pairs a window of seq_len + 1 tokens holds: 2n for the pairs, 2n for the queries
  and their values."""
  return (seq_len + 1) // 4


class MQARDataset:
  """The dataset interface research.training.trainer reads (train_batch / eval_batch are pure
  functions of their arguments). Windows have seq_len + 1 tokens: inputs [:-1], targets [1:]."""

  def __init__(self, *, kv_pairs=(4, 8, 16, 32), num_keys: int = 64, num_values: int = 64,
               eval_examples: int = 256, seed: int = 0):
    kv_pairs = tuple(int(n) for n in kv_pairs)
    if not kv_pairs or min(kv_pairs) < 1 or max(kv_pairs) > num_keys:
      raise ConfigError('sequence_mixers.recall.kv_pairs', kv_pairs,
                        f'give pair counts from 1 to num_keys={num_keys} (keys are distinct)')
    self.tokenizer = MQARTokenizer(num_keys, num_values)
    self.kv_pairs, self.eval_examples, self.seed = kv_pairs, eval_examples, seed

  def windows(self, rng: np.random.Generator, n_rows: int, seq_len: int) -> np.ndarray:
    if max(self.kv_pairs) > max_pairs(seq_len):
      raise ConfigError('sequence_mixers.recall.kv_pairs', self.kv_pairs,
                        f'{max(self.kv_pairs)} pairs and their queries need '
                        f'{4 * max(self.kv_pairs)} tokens: at most {max_pairs(seq_len)} at '
                        f'seq_len={seq_len}')
    tok = self.tokenizer
    out = np.full((n_rows, seq_len + 1), tok.filler_id, np.int32)
    for row in range(n_rows):
      n = self.kv_pairs[rng.integers(len(self.kv_pairs))]
      keys = tok.first_key + rng.permutation(tok.num_keys)[:n]
      values = tok.first_value + rng.integers(0, tok.num_values, n)
      out[row, 0:2 * n:2], out[row, 1:2 * n:2] = keys, values
      # Queries take 2-token slots (key, value) of the rest, at random, each key once.
      slots = (seq_len + 1 - 2 * n) // 2
      starts = 2 * n + 2 * np.sort(rng.choice(slots, n, replace=False))
      order = rng.permutation(n)
      out[row, starts], out[row, starts + 1] = keys[order], values[order]
    return out

  def _slice(self, windows, process_index, process_count):
    per = len(windows) // process_count
    return windows[process_index * per:(process_index + 1) * per]

  def train_batch(self, seed, step, global_batch, seq_len, process_index=0, process_count=1):
    rng = np.random.default_rng([self.seed, seed, step])
    return self._slice(self.windows(rng, global_batch, seq_len), process_index, process_count)

  def eval_batch(self, batch_index, global_batch, seq_len, process_index=0, process_count=1):
    rng = np.random.default_rng([self.seed, 10**6, *self.kv_pairs, batch_index])
    return self._slice(self.windows(rng, global_batch, seq_len), process_index, process_count)

  def num_eval_batches(self, global_batch, seq_len):
    del seq_len
    return max(1, self.eval_examples // global_batch)

  def eval_sets(self) -> dict[str, 'MQARDataset']:
    """One held-out set per number of pairs: the trainer reports eval/kvN/... for each."""
    return {f'kv{n}': MQARDataset(kv_pairs=(n,), num_keys=self.tokenizer.num_keys,
                                  num_values=self.tokenizer.num_values,
                                  eval_examples=self.eval_examples, seed=self.seed)
            for n in self.kv_pairs}


# The objective: causal LM batches, scored at the queries only.
window_len = causal_lm.window_len
init_args = causal_lm.init_args
loss_fn = causal_lm.loss_fn


def query_weights(inputs_BT: np.ndarray, tokenizer: MQARTokenizer) -> np.ndarray:
  """1.0 where the input is a key that appeared before in its row (a query), else 0."""
  is_key = tokenizer.is_key(inputs_BT)
  seen = np.zeros_like(is_key)
  for row in range(inputs_BT.shape[0]):
    _, first = np.unique(inputs_BT[row], return_index=True)
    first_mask = np.zeros(inputs_BT.shape[1], bool)
    first_mask[first] = True
    seen[row] = is_key[row] & ~first_mask
  return seen.astype(np.float32)


def make_batch(window_BT1: np.ndarray, *, tokenizer, config=None, rngs=None
               ) -> dict[str, np.ndarray]:
  batch = causal_lm.make_batch(window_BT1, tokenizer=tokenizer, config=config, rngs=rngs)
  batch['weights'] = query_weights(batch['inputs'], tokenizer)
  return batch
