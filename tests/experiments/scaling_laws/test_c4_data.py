"""A C4-shaped JSON-lines corpus goes through the C4 IsoFLOP config's data section end to end:
Beam preparation, then training a tiny model on the prepared shards with its settings."""

from __future__ import annotations

import math

import pytest

from benchmarks import make_corpus
from research import config_lib
from research.data import prepare
from research.training import trainer
from tests.experiments.scaling_laws import conftest


@pytest.mark.slow
def test_c4_shaped_jsonl_trains_through_the_c4_data_section(tmp_path):
  c = config_lib.load_config_file(
      str(conftest.REPO / 'configs/experiments/scaling_laws/c4_isoflop.py'))
  make_corpus.make_corpus(str(tmp_path / 'c4'), 0.002, seed=1)  # {"text", "url", "timestamp"}
  # The data section as configured, but for two sizes a test cannot afford: a 32,768-piece
  # vocabulary needs far more text than 2 MB, and 2,048-token windows far more compute.
  vocab_size, seq_len = 1024, 128
  prepare.prepare(prepare.Settings(
      source=f'jsonl:{tmp_path}/c4/*.jsonl.gz', text_key=c.data.text_key, out=str(tmp_path / 'p'),
      vocab_size=vocab_size, num_sentinels=c.data.num_sentinels,
      tokenizer_type=c.data.tokenizer_type,
      validation_fraction=0.05))
  c.data.source = f'prepared:{tmp_path}/p'
  c.data.vocab_size, c.data.seq_len = vocab_size, seq_len
  c.data.workers = 0  # the config's Grain workers are for pod hosts; tests/data covers them
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = 64, 2, 4, 128
  c.model.dtype = 'float32'
  c.train.steps, c.train.batch_size, c.train.warmup_steps = 12, 8, 2
  c.train.log_every, c.train.eval_every, c.train.eval_batches = 4, 12, 2
  c.train.checkpoint_every = 12
  final = trainer.train(config_lib.finalize(c), str(tmp_path / 'run'))
  assert final['step'] == 12
  assert final['eval/loss'] < math.log(vocab_size)  # learnt something in 12 steps
  assert 0 < final['eval/bpb'] < final['eval/loss'] / math.log(2)  # more than a byte per token
