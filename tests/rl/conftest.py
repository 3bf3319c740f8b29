"""Fixtures for the RL tests: the fine-tuning tests' tokenizer and decoder source (built once
per session, tests/finetune/conftest.py), a prompt file, and tiny RL configs."""

from __future__ import annotations

import pytest

from research.data import tokenizer as tokenizer_lib
# Re-exported: pytest finds fixtures in a conftest's namespace.
from tests.finetune.conftest import (ONE_DEVICE, decoder_source, source_config,  # noqa: F401
                                     tokenizer_path, write_jsonl)

BANDIT_PROMPT = 'copy ab ='


def rl_config(source: str, prompts: str, objective: str = 'grpo', **overrides):
  """A tiny RL run of the decoder source: fully on-policy GRPO/PPO with a constant lr."""
  base = {'objective.name': objective, 'init_from': source, 'rl.prompts': prompts,
          'rl.reward': 'research.rl.rewards:exact_match', 'rl.max_prompt_len': 8,
          'rl.max_new_tokens': 4, 'rl.samples_per_prompt': 4, 'rl.prompts_per_iteration': 2,
          'rl.iterations': 3, 'rl.eval_every': 100, 'rl.num_eval_prompts': 0,
          'train.lr': 1e-2, 'train.schedule': 'constant', 'train.warmup_steps': 0,
          'train.weight_decay': 0.0, 'train.checkpoint_every': 100,
          'train.async_checkpoints': False}
  if objective == 'ppo':  # as configs/finetune/ppo.py: KL in the reward, a new value head
    base.update({'finetune.restore': ((r'scalar_head/.*', 'init'), ('.*', 'load')),
                 'rl.kl_in_reward': True, 'rl.kl_estimator': 'k1'})
  base.update(overrides)
  return source_config(**base)


def letter_overlap(prompt: str, completion: str, row: dict) -> float:
  """A reward with partial credit (an untrained model's completions differ in it): the
  fraction of the answer's letters that the completion contains."""
  del prompt
  return len(set(completion) & set(row['answer'])) / len(set(row['answer']))


@pytest.fixture(scope='session')
def tokenizer(tokenizer_path):
  return tokenizer_lib.load_tokenizer(tokenizer_path)


@pytest.fixture(scope='session')
def copy_prompts(tmp_path_factory):
  """{"prompt": "copy abc =", "answer": "abc"} rows."""
  from tests.finetune.conftest import copy_task  # pylint: disable=g-import-not-at-top
  rows = [{'prompt': r['prompt'], 'answer': r['response'].strip()} for r in copy_task(40, 3)]
  return write_jsonl(tmp_path_factory.mktemp('rl_prompts') / 'prompts.jsonl', rows)
