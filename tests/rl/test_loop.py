"""The RL loop on a tiny decoder: GRPO and PPO solve a one-token bandit with the reference
frozen, a run stopped by SIGTERM resumes to the uninterrupted run's numbers, and the command
line runs configs/finetune/grpo.py:tiny and refuses bad inputs in one line."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from research import config_lib, models
from research.errors import ConfigError
from research.objectives import rl_policy
from research.rl import loop, rewards as rewards_lib
from research.training import metrics as metrics_lib
from tests.helpers import subprocess_env
from tests.finetune.conftest import make_source_workdir
from tests.rl.conftest import BANDIT_PROMPT, ONE_DEVICE, rl_config, source_config, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_VALUE_HEAD = 'scalar_head' in config_lib.base_config().model
TIMINGS = ('rl/rollout_time_s', 'rl/update_time_s')


def _bandit_target(tokenizer):
  """(a token id, its text): the one token whose text is 'hb', of 96, about 1 % likely at
  first."""
  ids = [i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]).strip() == 'hb']
  assert len(ids) == 1, ids
  return ids[0], 'hb'


def _bandit(tmp_path, objective, source, tokenizer, *, hooks=(), workdir='run'):
  """One fixed prompt, one new token, reward 1 for the target token else 0; two epochs of two
  minibatches per rollout of 4 x 8 samples; the prompt's greedy reward evaluated every 10
  iterations. Returns (final metrics, the target's probability after each iteration, the
  final train state on the host, the workdir)."""
  target, text = _bandit_target(tokenizer)
  prompts = write_jsonl(tmp_path / 'bandit.jsonl', [{'prompt': BANDIT_PROMPT, 'answer': text}])
  config = rl_config(source, prompts, objective, **{
      'rl.eval_prompts': prompts, 'rl.num_eval_prompts': 1, 'rl.eval_every': 10,
      'rl.max_new_tokens': 1, 'rl.samples_per_prompt': 8, 'rl.prompts_per_iteration': 4,
      'rl.epochs': 2, 'rl.minibatches': 2, 'rl.iterations': 20, 'train.lr': 2e-2,
      'train.checkpoint_every': 7})
  model = models.build_model(config)
  prompt = np.asarray([tokenizer.encode(BANDIT_PROMPT)], np.int32)
  probability = jax.jit(lambda p: jax.nn.softmax(model.apply({'params': p}, prompt)[0, -1])[target])
  probs, last = [], {}

  def observe(iteration, state, metrics):
    del metrics
    probs.append(float(probability(state.params)))
    if iteration == config.rl.iterations:
      last['state'] = jax.device_get(state)

  workdir = str(tmp_path / workdir)
  final = loop.train(config, workdir, hooks=[observe, *hooks], devices=ONE_DEVICE())
  return final, probs, last.get('state'), workdir


@pytest.fixture(scope='module')
def grpo_bandit(tmp_path_factory, decoder_source, tokenizer):
  tmp_path = tmp_path_factory.mktemp('grpo_bandit')
  return tmp_path, _bandit(tmp_path, 'grpo', decoder_source[0], tokenizer)


@pytest.mark.parametrize('objective', ['grpo', 'ppo'])
def test_bandit_reaches_the_rewarded_arm(request, tmp_path, objective, decoder_source,
                                         tokenizer):
  """GRPO and PPO put more than 0.9 of the policy's probability on the rewarded token of 96
  (about 0.01 at first), while the reference stays the source model to the bit."""
  if objective == 'ppo' and not HAS_VALUE_HEAD:
    pytest.skip('model.scalar_head (the value head) is not in this lmforge yet')
  if objective == 'grpo':
    _, (final, probs, state, workdir) = request.getfixturevalue('grpo_bandit')
  else:
    final, probs, state, workdir = _bandit(tmp_path, objective, decoder_source[0], tokenizer)
  assert probs[0] < 0.05 and probs[-1] > 0.9, probs
  assert final['rl/reward_mean'] > 0.7 and final['iteration'] == 20
  assert final['eval/accuracy'] == 1.0  # the held-out (here: the same) prompt, greedily
  # The reference is the source model, bit for bit; the policy moved away from it.
  reference = state.model_state[rl_policy.REFERENCE]
  source = decoder_source[1]
  jax.tree.map(np.testing.assert_array_equal, {k: reference[k] for k in source}, source)
  assert not np.array_equal(state.params['embed']['embedding'], source['embed']['embedding'])
  rows = [r for r in metrics_lib.read_metrics(workdir) if 'rl/iteration' in r]
  assert [r['step'] for r in rows] == list(range(4, 84, 4))  # 2 epochs x 2 minibatches each
  wanted = {'rl/reward_mean', 'rl/reward_std', 'rl/kl', 'rl/clip_fraction', 'rl/entropy',
            'rl/response_length', 'train/loss', 'train/grad_norm'}
  if objective == 'ppo':
    wanted |= {'rl/value_loss', 'rl/explained_variance'}
  assert wanted <= set(rows[-1]), sorted(rows[-1])
  assert rows[0]['rl/kl'] == 0.0 and rows[-1]['rl/kl'] > 0  # policy = reference at first
  assert rows[-1]['rl/entropy'] < rows[0]['rl/entropy']
  assert max(r['rl/clip_fraction'] for r in rows) > 0  # later minibatches are off-policy


def test_resume_after_sigterm_repeats_the_uninterrupted_run(grpo_bandit, decoder_source,
                                                            tokenizer):
  """The GRPO bandit stopped by SIGTERM after iteration 8 (a checkpoint written then), and
  rerun to 20: the uninterrupted run's metrics and parameters, bit for bit (the prompts,
  rollout keys, minibatch orders and evaluation keys are functions of seed and iteration)."""
  tmp_path, (straight, _, straight_state, straight_dir) = grpo_bandit

  def sigterm_at_8(iteration, state, metrics):
    del state, metrics
    if iteration == 8:
      os.kill(os.getpid(), signal.SIGTERM)

  stopped, _, state, workdir = _bandit(tmp_path, 'grpo', decoder_source[0], tokenizer,
                                       hooks=[sigterm_at_8], workdir='resumed')
  assert stopped['preempted_by'] == 'SIGTERM' and stopped['preempted_at'] == 32  # 8 x 2 x 2
  assert state is None and sorted(os.listdir(os.path.join(workdir, 'checkpoints')))[-1] == '32'
  resumed, _, state, _ = _bandit(tmp_path, 'grpo', decoder_source[0], tokenizer,
                                 workdir='resumed')
  assert resumed['iteration'] == 20 and resumed['step'] == straight['step'] == 80
  jax.tree.map(np.testing.assert_array_equal, state.params, straight_state.params)
  jax.tree.map(np.testing.assert_array_equal, state.opt_state, straight_state.opt_state)
  strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]
  rows = strip(metrics_lib.read_metrics(straight_dir))
  assert strip(metrics_lib.read_metrics(workdir)) == rows
  assert [r['step'] for r in rows if 'eval/accuracy' in r] == [0, 40, 80]


def test_reward_model_scores_the_rollouts(tmp_path, copy_prompts, decoder_source,
                                          tokenizer_path):
  """rl.reward_model: a reward-model workdir (here an untrained decoder with a scalar head)
  scores each completion through research.load(...).rewards; its scores vary, so no group is
  without signal; a workdir without a scalar head is refused naming rl.reward_model."""
  reward_model, _ = make_source_workdir(
      tmp_path / 'rm', source_config(**{'objective.name': 'reward'}), tokenizer_path, seed=1)
  config = rl_config(decoder_source[0], copy_prompts, **{
      'rl.reward': '', 'rl.reward_model': reward_model, 'rl.iterations': 2})
  final = loop.train(config, str(tmp_path / 'run'), devices=ONE_DEVICE())
  assert final['rl/reward_std'] > 0 and final['rl/zero_std_groups'] == 0.0
  assert np.isfinite(final['rl/reward_mean']) and final['train/grad_norm'] > 0
  with pytest.raises(ConfigError) as e:
    rewards_lib.make_reward(rl_config(decoder_source[0], copy_prompts, **{
        'rl.reward': '', 'rl.reward_model': decoder_source[0]}))
  assert e.value.field == 'rl.reward_model'


def test_config_errors_name_the_field(tmp_path, copy_prompts, decoder_source):
  def error(**overrides):
    with pytest.raises(ConfigError) as e:
      rl_config(decoder_source[0], copy_prompts, **overrides)
    return e.value.field

  assert error(**{'rl.prompts': ''}) == 'rl.prompts'
  assert error(**{'rl.reward': ''}) == 'rl.reward'  # neither reward nor reward_model
  assert error(**{'rl.reward': 'no colon'}) == 'rl.reward'
  assert error(**{'rl.minibatches': 3}) == 'rl.minibatches'  # 8 rows
  assert error(**{'rl.temperature': 0.0}) == 'rl.temperature'
  with pytest.raises(ConfigError) as e:  # not a decoder
    source_config('encoder', **{'objective.name': 'grpo', 'rl.prompts': copy_prompts,
                                'rl.reward': 'research.rl.rewards:exact_match'})
  assert e.value.field == 'model.family'
  # Derived: one optimizer step per minibatch, the rows a minibatch holds, the sequence.
  config = rl_config(decoder_source[0], copy_prompts, **{'rl.epochs': 3, 'rl.minibatches': 2})
  assert config.train.steps == 3 * 3 * 2 and config.train.batch_size == 4
  assert config.data.seq_len == config.rl.max_prompt_len + config.rl.max_new_tokens - 1
  # Fields research.rl.losses / advantages validate fail before anything runs or is written.
  for field, value in (('rl.loss_aggregation', 'mean'), ('rl.kl_estimator', 'k4'),
                       ('rl.clip_low', 1.5)):
    with pytest.raises(ConfigError) as e:
      loop.train(rl_config(decoder_source[0], copy_prompts, **{field: value}),
                 str(tmp_path / 'bad'), devices=ONE_DEVICE())
    assert e.value.field == field
  with pytest.raises(ConfigError) as e:
    loop.train(rl_config(decoder_source[0], copy_prompts, **{'rl.reward': 'no_such.mod:f'}),
               str(tmp_path / 'bad'), devices=ONE_DEVICE())
  assert e.value.field == 'rl.reward' and 'no_such' in str(e.value)
  assert not os.path.exists(tmp_path / 'bad' / 'config.json')


def test_command_line(tmp_path, copy_prompts, decoder_source):
  """research.train runs configs/finetune/grpo.py:tiny (exit 0, rl/ metrics in metrics.jsonl);
  a reward that cannot be imported exits 2 with one line naming rl.reward."""
  run = lambda *args: subprocess.run(
      [sys.executable, '-m', 'research.train', f'--config={REPO}/configs/finetune/grpo.py:tiny',
       f'--config.init_from={decoder_source[0]}', f'--config.rl.prompts={copy_prompts}', *args],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  workdir = str(tmp_path / 'grpo')
  result = run('--config.rl.reward=research.rl.rewards:starts_with_answer',
               f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads(result.stdout.strip().splitlines()[-1])
  assert final['iteration'] == 4 and final['step'] == 4
  rows = metrics_lib.read_metrics(workdir)
  for name in ('rl/reward_mean', 'rl/kl', 'rl/clip_fraction', 'rl/entropy',
               'rl/response_length', 'train/loss', 'train/grad_norm'):
    assert name in rows[-1] or name in rows[-2], (name, rows[-2:])
  assert {'eval/reward_mean', 'eval/accuracy'} <= set(rows[0]) and rows[0]['step'] == 0
  assert os.path.isdir(os.path.join(workdir, 'tensorboard'))

  bad = run('--config.rl.reward=no_such_module:reward', f'--workdir={tmp_path / "bad"}')
  assert bad.returncode == 2, bad.stderr[-3000:]
  lines = bad.stderr.strip().splitlines()
  assert lines[-1].startswith('error: rl.reward=') and 'no_such_module' in lines[-1], lines
