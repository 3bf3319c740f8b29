"""Shared fixtures: a tiny sentencepiece tokenizer, source workdirs to fine-tune from, and
synthetic JSONL tasks, each built once per session."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from research import config_lib
from research.data import tokenizer as tokenizer_lib
from research.training import checkpointing, trainer
from tests.helpers import tiny_config

LETTERS = 'abcdefgh'
# Tiny models compile several times faster unpartitioned: these tests are not about sharding.
ONE_DEVICE = lambda: jax.devices()[:1]


def copy_task(n: int, seed: int):
  """'copy abc =' -> ' abc': learnable in a few dozen steps by a tiny model."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    word = ''.join(rng.choice(list(LETTERS), rng.integers(2, 6)))
    rows.append({'prompt': f'copy {word} =', 'response': f' {word}'})
  return rows


def write_jsonl(path, rows, extra_lines=()):
  with open(path, 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')
    for line in extra_lines:
      f.write(line + '\n')
  return str(path)


@pytest.fixture(scope='session')
def tokenizer_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.model')
  docs = [' '.join(r['prompt'] + r['response'] for r in copy_task(50, s)) for s in range(20)]
  docs += ['### User:\nhello\n### Assistant:\nhi there\n'] * 5
  tokenizer_lib.train_tokenizer(docs, 96, path, num_sentinels=0, byte_fallback=False)
  return path


def source_config(family='decoder', **overrides):
  base = {'data.vocab_size': 96, 'data.seq_len': 32, 'model.family': family,
          'model.use_bias': True, 'model.num_layers': 1, 'model.d_model': 32,
          'model.num_heads': 2, 'model.num_kv_heads': 0, 'train.batch_size': 8}
  if family == 'encoder_decoder':
    base.update({'model.position': 'relative', 'model.activation': 'gelu',
                 'model.num_kv_heads': 0})
  base.update(overrides)
  return tiny_config(**base)


def make_source_workdir(path, config, tokenizer_file, seed=0):
  """A workdir as research.train leaves it: config.json, tokenizer.model, a checkpoint."""
  os.makedirs(path, exist_ok=True)
  run = trainer.build_run(config, devices=ONE_DEVICE())
  state = trainer.init_state(run, seed)
  config_lib.save_config(config, os.path.join(path, 'config.json'))
  manager = checkpointing.make_manager(path, keep=1, async_save=False)
  checkpointing.save(manager, 0, state, force=True)
  manager.wait_until_finished()
  manager.close()
  with open(tokenizer_file, 'rb') as src, open(os.path.join(path, 'tokenizer.model'), 'wb') as dst:
    dst.write(src.read())
  return str(path), jax.device_get(state.params)


@pytest.fixture(scope='session')
def decoder_source(tmp_path_factory, tokenizer_path):
  return make_source_workdir(tmp_path_factory.mktemp('src_dec'), source_config(), tokenizer_path)


@pytest.fixture(scope='session')
def copy_data(tmp_path_factory):
  d = tmp_path_factory.mktemp('data')
  train = write_jsonl(d / 'train.jsonl', copy_task(256, 0), extra_lines=['not json', '[1, 2]'])
  valid = write_jsonl(d / 'valid.jsonl', copy_task(32, 1))
  return train, valid


def sft_config(source, train, valid, **overrides):
  base = {'objective.name': 'sft', 'init_from': source, 'finetune.train_data': train,
          'finetune.eval_data': valid, 'train.steps': 30, 'train.lr': 1e-2,
          'train.warmup_steps': 3, 'train.log_every': 5, 'train.eval_every': 30,
          'train.checkpoint_every': 30, 'train.eval_batches': 0}
  base.update(overrides)
  return source_config(**base)
