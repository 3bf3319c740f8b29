"""Reward models on a tiny synthetic preference task: the Bradley-Terry loss against a hand
computation, held-out preference accuracy after a short run from a decoder (and an encoder),
research.load(...).rewards scoring as the loss does, and bad input named by field."""

import json
import os
import shutil
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

import research
from research import config_lib, models
from research.data import sft
from research.data import tokenizer as tokenizer_lib
from research.errors import ConfigError, UserError
from research.evaluation import validation
from research.objectives import reward
from research.training import optimizers, peft, restore, trainer
from research import loading
from tests.finetune.conftest import (ONE_DEVICE, make_source_workdir, source_config,
                                     write_jsonl)
from tests.helpers import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GROUPS = ('abcd', 'efgh')
RESTORE = (('scalar_head/.*', 'init'), ('.*', 'load'))


def _pairs(n, seed):
  """The prompt names a letter group; the response made of that group's letters is preferred
  to one made of the other group's. The preference depends on prompt and response together (a
  score of either alone is at chance), so it tests that the score at the eos reads both."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    want, other = GROUPS if rng.random() < 0.5 else GROUPS[::-1]
    word = lambda letters: ''.join(rng.choice(list(letters), rng.integers(2, 5)))
    rows.append({'prompt': f'copy {want} =', 'chosen': f' {word(want)}',
                 'rejected': f' {word(other)}'})
  return rows


def _files(directory):
  train = write_jsonl(os.path.join(directory, 'train.jsonl'), _pairs(256, 0))
  valid = write_jsonl(os.path.join(directory, 'valid.jsonl'), _pairs(64, 1))
  return train, valid


def _config(source, train, valid, **overrides):
  base = {'objective.name': 'reward', 'init_from': source, 'reward.train_data': train,
          'reward.eval_data': valid, 'finetune.restore': RESTORE, 'train.lr': 5e-3,
          'train.steps': 30, 'train.warmup_steps': 5, 'train.batch_size': 16,
          'train.weight_decay': 0.0}
  base.update(overrides)
  return source_config(**base)


def _train(config, source, workdir):
  """(run, state, data, per-step metrics) of config.train.steps steps on one device."""
  run = trainer.build_run(config, devices=ONE_DEVICE())
  state, report = restore.init_from(run, trainer.init_state(run, 0), source)
  assert report['initialised'] == 2  # the head's kernel and bias; the rest is the source's
  data = reward.load_dataset(config, workdir)
  step = trainer.make_train_step(run)
  history = []
  for s in range(config.train.steps):
    state, metrics = step(state, trainer.device_batch(run, data.train_batch(0, s, 16)))
    history.append(jax.device_get(metrics))
  return run, state, data, history


@pytest.fixture(scope='module')
def trained(tmp_path_factory, decoder_source):
  directory = str(tmp_path_factory.mktemp('reward'))
  train, valid = _files(directory)
  config = _config(decoder_source[0], train, valid)
  workdir = os.path.join(directory, 'run')
  run, state, data, history = _train(config, decoder_source[0], workdir)
  return dict(config=config, run=run, state=state, data=data, history=history, valid=valid,
              directory=directory, workdir=workdir)


def test_the_head_adds_two_parameters_and_changes_nothing_else():
  for family in ('decoder', 'encoder'):
    trees = {}
    for head in (False, True):
      config = source_config(family, **{'model.scalar_head': head})
      model = models.build_model(config)
      shapes = jax.eval_shape(lambda m=model, c=config: m.init(
          jax.random.key(0), *reward.init_args(1, c)))['params']
      trees[head] = {k: (v.value.shape, tuple(v.names))
                     for k, v in flax.traverse_util.flatten_dict(shapes, sep='/').items()}
    added = {k: v for k, v in trees[True].items() if k not in trees[False]}
    assert added == {'scalar_head/kernel': ((32, 1), ('embed', None)),
                     'scalar_head/bias': ((1,), (None,))}, family
    assert all(trees[True][k] == v for k, v in trees[False].items())
  # A readout, like the unembedding: its learning-rate class, never pruned, trained under PEFT.
  leaf = np.zeros((32, 1))
  path = (jax.tree_util.DictKey('scalar_head'), jax.tree_util.DictKey('kernel'))
  assert optimizers.param_class(path, leaf) == 'unembedding'
  lora = source_config(**{'peft.method': 'lora'}).peft
  assert peft.is_trainable('scalar_head/kernel', lora)
  assert not peft.is_trainable('stack/layer_0/attn/query', lora)


def test_bradley_terry_loss_equals_a_hand_computation(trained):
  run, params, data = trained['run'], trained['state'].params, trained['data']
  tokenizer = data.tokenizer
  batch = {k: v[:8] for k, v in data.eval_rows.items()}
  assert (batch['margin'] == 0).all()  # the rows carry reward.margin (0) as no row has its own
  scores = {}
  for side in reward.SIDES:
    values_BT = np.asarray(run.eval_model.apply(
        {'params': params}, batch[f'{side}_inputs'], batch[f'{side}_positions'],
        batch[f'{side}_segment_ids'], method='scalars'))
    assert values_BT.dtype == np.float32
    # The score is read at the eos: each row holds exactly one, its last real token.
    eos_B = [int(np.flatnonzero(row == tokenizer.eos_id)[0]) for row in batch[f'{side}_inputs']]
    assert all((row == tokenizer.eos_id).sum() == 1 for row in batch[f'{side}_inputs'])
    np.testing.assert_array_equal(eos_B, batch[f'{side}_segment_ids'].sum(-1) - 1)
    scores[side] = values_BT[np.arange(8), eos_B]
  gap = scores['chosen'] - scores['rejected']
  assert np.ptp(gap) > 0.1  # trained: the pairs' gaps differ

  def hand(margin_B):  # -log sigmoid(x) = log(1 + exp(-x))
    return float(np.sum(np.logaddexp(0.0, -(gap - margin_B))))

  loss = jax.jit(lambda b, m: reward.loss_fn(run.eval_model, params, b, margin=m))
  no_column = {k: v for k, v in batch.items() if k != 'margin'}
  for margin in (0.0, 0.5):
    value, aux = loss(no_column, margin)
    assert float(value) == pytest.approx(hand(margin), rel=1e-5)
    assert float(aux['weight_sum']) == 8 and float(aux['correct']) == float(np.sum(gap > 0))
    assert float(aux['metrics']['reward/margin']) == pytest.approx(float(gap.sum()), rel=1e-4)
    assert float(aux['metrics']['reward/chosen']) == pytest.approx(
        float(scores['chosen'].sum()), rel=1e-4, abs=1e-4)
  # Each row's own margin (the batch's column) wins over the keyword.
  per_row = np.linspace(0.0, 2.0, 8).astype(np.float32)
  value, _ = loss(dict(batch, margin=per_row[:, None]), 5.0)
  assert float(value) == pytest.approx(hand(per_row), rel=1e-5)
  # pair_scores (one forward pass of both sides) gives the same scores.
  chosen, rejected, _ = jax.jit(lambda b: reward.pair_scores(run.eval_model, params, b))(batch)
  np.testing.assert_allclose(chosen, scores['chosen'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rejected, scores['rejected'], rtol=1e-5, atol=1e-5)


def test_training_from_a_decoder_reaches_held_out_accuracy(trained):
  history = trained['history']
  assert history[0]['loss'] == pytest.approx(np.log(2), abs=0.02)  # a fresh head: r(c) ~ r(r)
  assert np.mean([h['loss'] for h in history[-3:]]) < 0.5 * history[0]['loss']
  assert {'reward/accuracy', 'reward/chosen', 'reward/rejected', 'reward/margin'} <= set(
      history[-1])
  ev = trainer.evaluate(trained['run'], trained['state'].params, trained['data'])
  assert ev['eval/accuracy'] > 0.8, ev
  assert ev['eval/accuracy'] == ev['eval/reward/accuracy'] and ev['eval/reward/margin'] > 0
  assert ev['eval/pairs'] == 64 and 'eval/perplexity' not in ev and 'eval/tokens' not in ev
  line = trainer.describe_eval(ev)
  assert 'perplexity' not in line and 'margin' in line and '64 pairs' in line, line


def test_load_rewards_score_as_the_loss_does(trained):
  run, state, config = trained['run'], trained['state'], trained['config']
  workdir = os.path.join(trained['directory'], 'saved')
  loading.save_workdir(workdir, config, run, state.params)
  shutil.copy(os.path.join(trained['workdir'], 'tokenizer.model'), workdir)
  lm = research.load(workdir)
  with open(trained['valid']) as f:
    rows = [json.loads(line) for line in f]
  prompts = [r['prompt'] for r in rows]
  chosen = lm.rewards(prompts, [r['chosen'] for r in rows])
  rejected = lm.rewards(prompts, [r['rejected'] for r in rows], batch_size=24)  # 3 batches
  assert chosen.shape == (64,) and chosen.dtype == np.float32
  inside = jax.jit(lambda p, b: reward.pair_scores(run.eval_model, p, b))(
      state.params, trained['data'].eval_rows)
  np.testing.assert_allclose(chosen, inside[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rejected, inside[1], rtol=1e-5, atol=1e-5)
  assert np.mean(chosen > rejected) > 0.8
  # One prompt for several responses (best-of-n).
  both = lm.rewards(prompts[0], [rows[0]['chosen'], rows[0]['rejected']])
  np.testing.assert_allclose(both, [chosen[0], rejected[0]], rtol=1e-5, atol=1e-5)
  # research.evaluate's default task: the held-out pairs, as the trainer's evaluation.
  out = validation.validation(lm)
  assert out['pairs'] == 64 and 'perplexity' not in out
  assert out['accuracy'] == pytest.approx(float(np.mean(inside[0] > inside[1])))


def test_encoder_source(tmp_path, tokenizer_path):
  source, _ = make_source_workdir(tmp_path / 'src', source_config('encoder'), tokenizer_path)
  train, valid = _files(str(tmp_path))
  config = _config(source, train, valid, **{'train.steps': 12})
  assert config.model.family == 'encoder' and config.model.scalar_head
  run, state, data, history = _train(config, source, str(tmp_path / 'run'))
  assert history[-1]['loss'] < history[0]['loss']
  ev = trainer.evaluate(run, state.params, data)
  assert ev['eval/pairs'] == 64 and 0 <= ev['eval/accuracy'] <= 1


def test_margins_and_lengths_from_the_rows(tmp_path, tokenizer_path):
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)
  rows = [{'prompt': 'copy abcd =', 'chosen': ' ab', 'rejected': ' ef', 'margin': 2},
          {'prompt': 'copy abcd =', 'chosen': ' ab', 'rejected': ' ef'},
          {'prompt': 'copy abcd =', 'chosen': ' ab', 'rejected': ' ef', 'margin': 'x'},
          {'prompt': 'copy abcd =', 'chosen': ' ab', 'rejected': ' ef', 'margin': True}]
  path = write_jsonl(tmp_path / 'p.jsonl', rows)
  config = source_config(**{'objective.name': 'reward', 'reward.train_data': path,
                            'reward.eval_data': path, 'reward.margin': 0.25})
  data = sft.load_preferences(config, tokenizer, 'reward', max_tokens=config.data.seq_len,
                              margin=config.reward.margin)
  assert data.stats['train'].bad_lines == 2 and '"margin"' in data.stats['train'].first_problem
  np.testing.assert_array_equal(data.train_rows['margin'], [[2.0], [0.25]])
  # The eos must be an input: a reward pair takes at most seq_len tokens, DPO's seq_len + 1.
  length = len(sft.encode_pieces(sft.preference_pieces('copy abcd =', ' ab'), tokenizer)[0])
  short = source_config(**{'objective.name': 'reward', 'reward.train_data': path,
                           'data.seq_len': length - 1})
  with pytest.raises(UserError, match='no usable example'):
    sft.load_preferences(short, tokenizer, 'reward', max_tokens=short.data.seq_len, margin=0.0)
  short.dpo.train_data = short.dpo.eval_data = path
  assert sft.load_preferences(short, tokenizer).stats['train'].examples == 4  # DPO ignores margin


def test_bad_input_names_the_field(tmp_path, decoder_source):
  def config_error(**overrides):
    with pytest.raises(ConfigError) as e:
      source_config('encoder_decoder', **overrides)
    return e.value

  e = config_error(**{'objective.name': 'reward'})
  assert e.field == 'model.family' and "'encoder_decoder'" in str(e)
  assert config_error(**{'model.scalar_head': True}).field == 'model.scalar_head'

  config = source_config(**{'objective.name': 'reward', 'init_from': decoder_source[0],
                            'finetune.restore': RESTORE})
  with pytest.raises(ConfigError) as e:
    reward.load_dataset(config, str(tmp_path / 'w'))
  assert e.value.field == 'reward.train_data' and len(str(e.value).splitlines()) == 1

  plain = source_config()
  model = models.build_model(plain)
  variables = model.init(jax.random.key(0), *reward.init_args(1, plain))
  with pytest.raises(ConfigError, match='model.scalar_head'):
    model.apply(variables, *reward.init_args(1, plain), method='scalars')
  lm = research.load(decoder_source[0])
  with pytest.raises(UserError, match='model.scalar_head') as e:
    lm.rewards('copy ab =', ' ab')
  assert len(str(e.value).splitlines()) == 1 and 'configs/finetune/reward.py' in str(e.value)


def test_command_line(tmp_path, decoder_source):
  train, valid = _files(str(tmp_path))
  workdir = str(tmp_path / 'run')
  result = subprocess.run(
      [sys.executable, '-m', 'research.train', '--config=configs/finetune/reward.py:tiny',
       f'--config.init_from={decoder_source[0]}', f'--config.reward.train_data={train}',
       f'--config.reward.eval_data={valid}', '--config.train.steps=4',
       '--config.train.log_every=2', '--config.train.eval_every=4',
       '--config.train.checkpoint_every=4', f'--workdir={workdir}'],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows if 'train/loss' in r] == [2, 4]
  assert all('train/reward/margin' in r for r in rows if 'train/loss' in r)
  final = [r for r in rows if 'eval/accuracy' in r][-1]
  assert final['step'] == 4 and final['eval/pairs'] == 64 and 'eval/perplexity' not in final
  saved = config_lib.load_saved_config(os.path.join(workdir, 'config.json'))
  assert saved.model.scalar_head and saved.objective.name == 'reward'
