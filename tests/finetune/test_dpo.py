"""DPO on a tiny synthetic preference task: the policy's preference accuracy on held-out pairs
rises above the frozen reference's, and the reference stays bit-identical."""

import jax
import numpy as np

from research.data import sft
from research.data import tokenizer as tokenizer_lib
from research.objectives import dpo
from research.training import restore, trainer
from tests.finetune.conftest import LETTERS, ONE_DEVICE, source_config, write_jsonl


def _pairs(n, seed):
  """Prefer the copy of the prompt's word over its reversal."""
  rng = np.random.default_rng(seed)
  rows = []
  while len(rows) < n:
    word = ''.join(rng.choice(list(LETTERS), rng.integers(3, 6)))
    if word != word[::-1]:
      rows.append({'prompt': f'copy {word} =', 'chosen': f' {word}', 'rejected': f' {word[::-1]}'})
  return rows


def test_dpo_policy_beats_reference(tmp_path, decoder_source, tokenizer_path):
  train = write_jsonl(tmp_path / 'train.jsonl', _pairs(256, 0))
  valid = write_jsonl(tmp_path / 'valid.jsonl', _pairs(64, 1))
  config = source_config(**{'objective.name': 'dpo', 'init_from': decoder_source[0],
                            'dpo.train_data': train, 'dpo.eval_data': valid, 'dpo.beta': 0.5,
                            'train.lr': 1e-2, 'train.steps': 30, 'train.warmup_steps': 3,
                            'train.batch_size': 16})
  run = trainer.build_run(config, devices=ONE_DEVICE())
  state, _ = restore.init_from(run, trainer.init_state(run, 0), decoder_source[0])
  reference = jax.device_get(state.model_state[dpo.REFERENCE])
  data = sft.load_preferences(config, tokenizer_lib.load_tokenizer(tokenizer_path))
  step = trainer.make_train_step(run)
  history = []
  for s in range(config.train.steps):
    state, metrics = step(state, trainer.device_batch(run, data.train_batch(0, s, 16)))
    history.append(jax.device_get(metrics))
  assert abs(history[0]['dpo/reward_margin']) < 1e-5  # policy == reference at the start
  assert history[-1]['dpo/reward_margin'] > 0.5
  assert history[-1]['loss'] < history[0]['loss']

  # Held-out pairs: each model's own preference accuracy.
  batch = {k: np.asarray(v) for k, v in data.eval_rows.items()}
  logprobs = jax.jit(lambda p: {s: dpo.sequence_logprobs(run.eval_model, p, batch, s)
                                 for s in ('chosen', 'rejected')})
  policy, ref = logprobs(state.params), logprobs(reference)
  policy_acc = float(np.mean(policy['chosen'] > policy['rejected']))
  reference_acc = float(np.mean(ref['chosen'] > ref['rejected']))
  assert policy_acc > reference_acc + 0.3, (policy_acc, reference_acc)
  assert policy_acc > 0.7
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(state.model_state[dpo.REFERENCE]), reference)

  # The trainer's (and research.evaluate's) summary: preference metrics over pairs, and no
  # perplexity (exp of a per-pair DPO loss means nothing).
  ev = trainer.evaluate(run, state.params, data, model_state=state.model_state)
  assert 'eval/perplexity' not in ev and 'eval/tokens' not in ev
  assert ev['eval/pairs'] == 64 and ev['eval/batches'] == ev['eval/split_batches']
  assert ev['eval/accuracy'] == ev['eval/dpo/accuracy'] and ev['eval/dpo/reward_margin'] > 0
  line = trainer.describe_eval(ev)
  assert 'perplexity' not in line and 'reward margin' in line and '64 pairs' in line, line
