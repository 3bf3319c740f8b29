"""Knowledge distillation: the loss against numpy, a frozen teacher (bit-identical, no optimizer
state, sharded by the student's rules), the student moving toward it, the command line end to
end with resume, and one-line errors for bad fields."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config_lib, loading
from research.data import sft, tokenizer as tokenizer_lib
from research.errors import ConfigError
from research.evaluation import validation
from research.objectives import distill
from research.training import trainer
from tests.finetune.conftest import ONE_DEVICE, copy_task, source_config
from tests.helpers import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, 'configs/finetune/distill.py')


# ----------------------------------------------------------------------------- the loss


class FixedLogits(nn.Module):
  """A 'model' whose logits are its one parameter: the loss sees exactly the given logits."""
  shape: tuple

  @nn.compact
  def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None):
    return self.param('logits', nn.initializers.zeros, self.shape)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_loss(student, teacher, targets, weights, alpha, t):
  log_q, log_p = _log_softmax(student / t), _log_softmax(teacher / t)
  kl = np.sum(np.exp(log_p) * (log_p - log_q), -1)
  ce = -np.take_along_axis(_log_softmax(student), targets[..., None], -1)[..., 0]
  kl_sum, ce_sum = np.sum(kl * weights), np.sum(ce * weights)
  return alpha * t * t * kl_sum + (1 - alpha) * ce_sum, kl_sum, ce_sum


@pytest.mark.parametrize('alpha,t', [(0.5, 1.0), (0.9, 2.0), (0.3, 4.0), (1.0, 0.5), (0.0, 3.0)])
def test_loss_equals_numpy_with_masks(alpha, t):
  rng = np.random.default_rng(int(t * 10 + alpha * 100))
  b, n, v = 3, 5, 7
  student = rng.normal(0, 2, (b, n, v)).astype(np.float32)
  teacher = rng.normal(0, 2, (b, n, v)).astype(np.float32)
  targets = rng.integers(0, v, (b, n)).astype(np.int32)
  # Padding (a row's tail) and prompt positions (weight 0) are not targets.
  weights = np.ones((b, n), np.float32)
  weights[0, 3:] = 0
  weights[1, :2] = 0
  weights[2, :] = [0, 1, 0, 1, 1]
  batch = dict(inputs=np.zeros((b, n), np.int32), targets=targets, weights=weights,
               positions=np.zeros((b, n), np.int32), segment_ids=np.ones((b, n), np.int32))
  model = FixedLogits((b, n, v))
  state = {distill.TEACHER: {'params': {'logits': jnp.asarray(teacher)}}}

  def loss(student_params, model_state):
    return distill.loss_fn(model, student_params, batch, model_state=model_state,
                           teacher=model, alpha=alpha, temperature=t)

  (value, aux), (d_student, d_state) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      {'logits': jnp.asarray(student)}, state)
  want, kl_sum, ce_sum = _numpy_loss(student, teacher, targets, weights, alpha, t)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  np.testing.assert_allclose(aux['metrics']['distill/kl'], kl_sum, rtol=1e-5)
  np.testing.assert_allclose(aux['metrics']['distill/ce'], ce_sum, rtol=1e-5)
  np.testing.assert_allclose(aux['loss_sum'], ce_sum, rtol=1e-5)  # train/loss: the student CE
  teacher_ce = _numpy_loss(teacher, teacher, targets, weights, 0.0, 1.0)[2]
  np.testing.assert_allclose(aux['metrics']['distill/teacher_loss'], teacher_ce, rtol=1e-5)
  assert float(aux['weight_sum']) == weights.sum()
  # d/d student logits = w x (alpha T (q_T - p_T) + (1 - alpha)(softmax - one-hot)); nothing
  # reaches the teacher.
  q_t, p_t = np.exp(_log_softmax(student / t)), np.exp(_log_softmax(teacher / t))
  one_hot = np.eye(v)[targets]
  grad = weights[..., None] * (alpha * t * (q_t - p_t)
                               + (1 - alpha) * (np.exp(_log_softmax(student)) - one_hot))
  np.testing.assert_allclose(d_student['logits'], grad, rtol=1e-4, atol=1e-6)
  assert not np.any(d_state[distill.TEACHER]['params']['logits'])


# ----------------------------------------------------------------------------- tiny workdirs


@pytest.fixture(scope='module')
def copy_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('distill_data')
  paths = []
  for name, rows in (('train.jsonl', copy_task(256, 0)), ('valid.jsonl', copy_task(32, 1))):
    with open(d / name, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
    paths.append(str(d / name))
  return paths


def _data_fields(train, valid):
  return {'finetune.train_data': train, 'finetune.eval_data': valid}


@pytest.fixture(scope='module')
def teacher_and_params(tmp_path_factory, tokenizer_path, copy_files):
  """A 2 x 64 decoder trained 40 steps on the copy task, saved as a workdir with its
  tokenizer (research.loading.save_workdir, as research.convert writes one)."""
  config = source_config(**{'objective.name': 'sft', 'data.tokenizer': tokenizer_path,
                            'model.d_model': 64, 'model.num_layers': 2, 'model.num_heads': 4,
                            'train.lr': 1e-2, 'train.warmup_steps': 3, 'train.batch_size': 16,
                            **_data_fields(*copy_files)})
  run = trainer.build_run(config, devices=ONE_DEVICE())
  data = sft.load_sft(config, tokenizer_lib.load_tokenizer(tokenizer_path))
  state, step = trainer.init_state(run, 0), trainer.make_train_step(run)
  for s in range(40):
    state, _ = step(state, trainer.device_batch(run, data.train_batch(0, s, 16)))
  path = str(tmp_path_factory.mktemp('teacher'))
  loading.save_workdir(path, config, run, state.params)
  shutil.copy(tokenizer_path, os.path.join(path, 'tokenizer.model'))
  return path, jax.device_get(state.params)


def _student_config(teacher_dir, copy_files, **overrides):
  base = {'objective.name': 'distill', 'distill.teacher': teacher_dir, 'distill.alpha': 0.9,
          'distill.temperature': 2.0, 'train.lr': 1e-2, 'train.warmup_steps': 2,
          **_data_fields(*copy_files)}
  base.update(overrides)
  return source_config(**base)  # a 1 x 32 student


@pytest.fixture(scope='module')
def teacher(teacher_and_params):
  return teacher_and_params[0]


def test_teacher_frozen_sharded_and_student_moves_toward_it(tmp_path, teacher_and_params,
                                                            copy_files):
  teacher, teacher_params = teacher_and_params
  config = _student_config(teacher, copy_files)
  run = trainer.build_run(config, devices=ONE_DEVICE())
  state = distill.load_frozen_state(run, trainer.init_state(run, 0))
  loaded = jax.device_get(state.model_state[distill.TEACHER])
  jax.tree.map(np.testing.assert_array_equal, loaded['params'], teacher_params)
  data = distill.load_dataset(config, str(tmp_path / 'student'))
  step = trainer.make_train_step(run)
  history = []
  for s in range(25):
    state, metrics = step(state, trainer.device_batch(run, data.train_batch(0, s, 8)))
    history.append(jax.device_get(metrics))
  kl = [h['distill/kl'] for h in history]
  assert np.mean(kl[-5:]) < 0.5 * np.mean(kl[:3]), kl
  # The teacher is bit-identical after 25 updates and has no optimizer state: the optimizer's
  # tree is exactly that of the student's parameters.
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(state.model_state[distill.TEACHER]), loaded)
  assert (jax.tree.structure(state.opt_state)
          == jax.tree.structure(run.tx.init(jax.device_get(state.params))))
  teacher_size = sum(x.size for x in jax.tree.leaves(loaded))
  student_size = sum(x.size for x in jax.tree.leaves(state.params))
  opt_size = sum(x.size for x in jax.tree.leaves(state.opt_state))
  assert opt_size < 2 * student_size + 10 < teacher_size + student_size

  # On an 8-device fsdp x tensor mesh the teacher's variables shard by the student's rules.
  run8 = trainer.build_run(_student_config(teacher, copy_files, **{'mesh.fsdp': 4,
                                                                    'mesh.tensor': 2}))
  specs = run8.state_shardings
  assert (specs.model_state[distill.TEACHER]['params']['embed']['embedding'].spec
          == specs.params['embed']['embedding'].spec == jax.sharding.PartitionSpec('tensor',
                                                                                   'fsdp'))


# ----------------------------------------------------------------------------- the command


def _run(*args):
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=600)


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _flags(teacher_dir, copy_files, steps):
  train, valid = copy_files
  return [f'--config={CONFIG}:tiny', f'--config.distill.teacher={teacher_dir}',
          f'--config.finetune.train_data={train}', f'--config.finetune.eval_data={valid}',
          '--config.data.vocab_size=96', '--config.data.seq_len=32', '--config.train.lr=1e-2',
          f'--config.train.steps={steps}', '--config.train.log_every=1',
          '--config.train.eval_every=4', '--config.train.checkpoint_every=2',
          '--config.train.eval_batches=0']


def test_command_line_end_to_end_then_resume_equals_uninterrupted(tmp_path, teacher,
                                                                  copy_files):
  whole = str(tmp_path / 'whole')
  result = _run('research.train', *_flags(teacher, copy_files, 4), f'--workdir={whole}')
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _rows(whole)
  train = [r for r in rows if 'train/loss' in r]
  assert [r['step'] for r in train] == [1, 2, 3, 4]
  for r in train:
    assert {'train/distill/kl', 'train/distill/ce', 'train/distill/teacher_loss',
            'train/distill/loss'} <= set(r)
    assert r['train/loss'] == pytest.approx(r['train/distill/ce'])
  ev = [r for r in rows if 'eval/distill/kl' in r][-1]
  assert ev['eval/distill/teacher_loss'] < ev['eval/loss']  # the trained teacher is better
  assert os.path.isfile(os.path.join(whole, 'tokenizer.model'))  # the teacher's, for sampling

  # A crash after step 2's checkpoint (step 4's lost), then a rerun: it resumes at step 2,
  # the teacher coming back from the student's own checkpoint, and repeats steps 3 and 4.
  parts = str(tmp_path / 'parts')
  shutil.copytree(whole, parts)
  shutil.rmtree(os.path.join(parts, 'checkpoints', '4'))
  spec, overrides, _ = config_lib.split_config_args(_flags(teacher, copy_files, 4))
  final = trainer.train(config_lib.load_config(spec, overrides), parts, devices=ONE_DEVICE())
  assert final['step'] == 4
  resumed = {r['step']: r for r in _rows(parts) if 'train/loss' in r}
  assert sorted(resumed) == [1, 2, 3, 4]  # each step once
  for r in train:
    for key in ('train/loss', 'train/distill/kl', 'train/distill/teacher_loss'):
      assert resumed[r['step']][key] == pytest.approx(r[key], rel=1e-5), (r['step'], key)
  evals = [r['eval/loss'] for r in rows if r['step'] == 4 and 'eval/loss' in r]
  assert final['eval/loss'] == pytest.approx(evals[0], rel=1e-5)
  # research.evaluate's path: the student's loss and the distill/ terms, the teacher from the
  # student's checkpoint.
  again = validation.validation(whole)
  assert again['loss'] == pytest.approx(ev['eval/loss'], rel=1e-5)
  assert again['distill/kl'] == pytest.approx(ev['eval/distill/kl'], rel=1e-5)


def test_bad_field_is_one_line_and_exit_2(teacher, copy_files, tmp_path):
  result = _run('research.train', *_flags(teacher, copy_files, 2),
                '--config.distill.temperature=0', f'--workdir={tmp_path / "w"}')
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'distill.temperature=0.0' in lines[0], result.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_config_errors_name_the_field(tmp_path, teacher, copy_files, tokenizer_path):
  def error(**overrides):
    with pytest.raises(ConfigError) as e:
      _student_config(teacher, copy_files, **overrides)
    return e.value

  assert error(**{'distill.teacher': ''}).field == 'distill.teacher'
  assert error(**{'distill.teacher': str(tmp_path)}).field == 'distill.teacher'  # no config.json
  assert error(**{'distill.temperature': -1.0}).field == 'distill.temperature'
  assert error(**{'distill.alpha': 1.5}).field == 'distill.alpha'
  assert error(**{'data.vocab_size': 128}).field == 'data.vocab_size'
  assert error(**{'model.family': 'encoder'}).field == 'model.family'
  # An encoder-decoder teacher: refused by name.
  t5 = tmp_path / 't5'
  os.makedirs(t5)
  config_lib.save_config(source_config('encoder_decoder'), str(t5 / 'config.json'))
  e = error(**{'distill.teacher': str(t5)})
  assert e.field == 'distill.teacher' and "'encoder_decoder'" in str(e)
  # Another tokenizer with the same vocabulary size: refused, naming data.tokenizer.
  other = str(tmp_path / 'other.model')
  docs = [' '.join(r['prompt'] + r['response'] for r in copy_task(50, s)) for s in range(20)]
  docs += ['### System:\nthe quick brown fox jumps over the lazy dog\n'] * 5
  tokenizer_lib.train_tokenizer(docs, 96, other, num_sentinels=0, byte_fallback=False)
  e = error(**{'data.tokenizer': other})
  assert e.field == 'data.tokenizer' and "teacher's" in str(e)
  assert '\n' not in str(e)
