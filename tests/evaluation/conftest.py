"""Tiny trained workdirs shared by the evaluation tests (each trained once per session, on one
device: its programs compile faster than 8-way sharded ones; evaluation restores on all 8).

The corpus is a fixed lookup table, "key -> value" lines over 16 made-up keys and 16 distinct
values, in shuffled order: a model that learnt it completes "key ->" with its value, which
few-shot exact match must see (chance is 1 in 16).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from research import config_lib
from research.data import pipeline
from research.training import checkpointing, trainer

KEYS = ('amber', 'basil', 'cedar', 'dune', 'ember', 'fjord', 'grove', 'heath', 'inlet', 'jade',
        'knoll', 'larch', 'moss', 'nook', 'oasis', 'pine')
VALUES = ('red', 'blue', 'green', 'gold', 'gray', 'pink', 'teal', 'navy', 'lime', 'plum', 'rose',
          'sand', 'snow', 'rust', 'mint', 'jet')
TABLE = dict(zip(KEYS, VALUES))
TEMPLATE = '{input} {target}'


def write_corpus(directory: str, *, table=None, files: int = 20, passes: int = 12) -> str:
  """`files` documents of shuffled `table` (default TABLE) lines; returns the data.source
  'text:GLOB'."""
  table = table or TABLE
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for f in range(files):
    lines = []
    for _ in range(passes):
      lines += [f'{k} {table[k]}' for k in rng.permutation(KEYS)]
    with open(os.path.join(directory, f'doc{f:02d}.txt'), 'w') as out:
      out.write('\n'.join(lines) + '\n')
  return f'text:{directory}/*.txt'


def write_jsonl(path: str, rows: list[dict]) -> str:
  with open(path, 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')
  return path


def _config(family: str, source: str, cache_dir: str):
  path = {'decoder': 'configs/decoder/shakespeare.py',
          'encoder_decoder': 'configs/encoder_decoder/shakespeare.py'}[family]
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  c = config_lib.load_config_file(os.path.join(repo, path) + ':tiny')
  c.data.source = source
  c.data.cache_dir = cache_dir
  # One tokenizer for both runs (same source and settings): trained once, cached.
  c.data.vocab_size = 384
  c.data.num_sentinels = 8
  c.data.seq_len = 64
  c.eval.prompt_template = TEMPLATE
  c.eval.example_separator = '\n'
  c.eval.max_new_tokens = 6
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 1000
  c.train.eval_batches = 1
  c.train.async_checkpoints = False
  c.model.num_layers = 1  # compiles fastest; a lookup table needs no depth
  if family == 'decoder':
    c.train.steps = 80
    c.train.warmup_steps = 5
    c.train.lr = 2e-2
    c.train.schedule = 'constant'
  return config_lib.finalize(c)


@pytest.fixture(scope='session')
def corpus(tmp_path_factory) -> str:
  return write_corpus(str(tmp_path_factory.mktemp('table_corpus')))


@pytest.fixture(scope='session')
def eval_cache(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp('eval_cache'))


class CompileCounter:
  """A trainer hook that records, at each step, how many XLA compiles the process has done."""

  def __init__(self):
    self.total, self.at_step = 0, {}
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, *args, **kwargs):
    del args, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      self.total += 1

  def __call__(self, step, state, metrics):
    del state, metrics
    self.at_step[step] = self.total


COMPILES = CompileCounter()
DURING_TRAINING_EVERY = 40  # the decoder run evaluates its tasks at steps 40 and 80


LM_EVAL_TASK = 'table_choice'  # a local lm-evaluation-harness task over the table


@pytest.fixture(scope='session')
def lm_eval_task_dir(tmp_path_factory) -> str:
  """A directory with one multiple-choice harness task: each key's value among four."""
  root = tmp_path_factory.mktemp('table_tasks')
  docs = [{'key': k, 'choices': [TABLE[k]] + [v for v in VALUES if v != TABLE[k]][i:i + 3],
           'gold': 0} for i, k in enumerate(KEYS[:8])]
  (root / 'table.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs))
  (root / f'{LM_EVAL_TASK}.yaml').write_text(
      f'task: {LM_EVAL_TASK}\ndataset_path: json\n'
      f"dataset_kwargs: {{data_files: {{test: '{root / 'table.jsonl'}'}}, "
      f"cache_dir: '{root / 'cache'}'}}\ntest_split: test\noutput_type: multiple_choice\n"
      'doc_to_text: key\ndoc_to_choice: choices\ndoc_to_target: gold\n'
      'metric_list: [{metric: acc}]\n')
  return str(root)


@pytest.fixture(scope='session')
def decoder_workdir(tmp_path_factory, corpus, eval_cache, table_jsonl, lm_eval_task_dir) -> str:
  """The decoder run; during training it also evaluates perplexity (the whole validation
  split), few-shot accuracy on the table and a local lm-evaluation-harness task
  (tests/evaluation/test_during_training.py)."""
  workdir = str(tmp_path_factory.mktemp('decoder_run'))
  config = _config('decoder', corpus, eval_cache)
  config.train.eval_every = DURING_TRAINING_EVERY
  config.eval.lm_eval.include_path = lm_eval_task_dir
  config.eval.during_training = f'perplexity,few_shot:{table_jsonl},lm_eval:{LM_EVAL_TASK}'
  trainer.train(config, workdir, devices=jax.devices()[:1], hooks=(COMPILES,))
  return workdir


@pytest.fixture(scope='session')
def encoder_decoder_workdir(tmp_path_factory, corpus, eval_cache) -> str:
  """An encoder-decoder workdir holding its initial (step 0) checkpoint, written with the
  trainer's own pieces. Its tests check the seq2seq plumbing, not what a model learnt (the
  decoder run covers that), and compiling an encoder-decoder train step would cost more than
  all the other evaluation tests together."""
  workdir = str(tmp_path_factory.mktemp('t5_run'))
  config = _config('encoder_decoder', corpus, eval_cache)
  pipeline.load_dataset(config.data, workdir=workdir)  # copies the tokenizer into the workdir
  config_lib.save_config(config, os.path.join(workdir, 'config.json'))
  run = trainer.build_run(config, devices=jax.devices()[:1])
  manager = checkpointing.make_manager(workdir, keep=1, async_save=False)
  checkpointing.save(manager, 0, trainer.init_state(run, config.seed))
  manager.close()
  return workdir


@pytest.fixture(scope='session')
def table_jsonl(tmp_path_factory) -> str:
  """The whole table as few-shot examples: {"input": key, "target": value}."""
  path = str(tmp_path_factory.mktemp('jsonl') / 'table.jsonl')
  return write_jsonl(path, [{'input': k, 'target': v} for k, v in TABLE.items()])
