"""The training loop: losses fall, micro-batching is exact, resume equals uninterrupted."""

import os
import pytest
import signal

import jax
import numpy as np

from research.training import checkpointing, metrics as metrics_lib, trainer
from tests import helpers


def _params(workdir, config, **mesh):
  for axis, size in mesh.items():
    config.mesh[axis] = size
  run = trainer.build_run(config)
  manager = checkpointing.make_manager(workdir, keep=3)
  state = checkpointing.restore(manager, trainer.abstract_state(run))
  manager.close()
  return run, state


def test_loss_falls_and_logs_are_written(tmp_path):
  config = helpers.tiny_config(**{'train.steps': 30, 'train.eval_every': 30})
  final = trainer.train(config, str(tmp_path), dataset=helpers.PatternDataset())
  logs = metrics_lib.read_metrics(str(tmp_path))
  losses = [m['train/loss'] for m in logs if 'train/loss' in m]
  assert len(losses) == 30
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3  # repeating patterns are learnable
  assert final['eval/loss'] < losses[0] - 0.3
  assert all(m['train/tokens_per_sec'] > 0 for m in logs if 'train/loss' in m)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  for m in logs:  # measured step time, the same interval's wall time as tokens/s
    if 'train/loss' in m:
      assert m['train/step_time_s'] == pytest.approx(tokens_per_step / m['train/tokens_per_sec'])
  assert os.path.exists(tmp_path / 'config.json')
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'tensorboard'))


def test_micro_batches_give_the_same_update():
  dataset = helpers.PatternDataset()
  results = []
  for micro in (1, 4):
    config = helpers.tiny_config(**{'train.micro_batches': micro, 'train.batch_size': 32})
    run = trainer.build_run(config)
    state = trainer.init_state(run, seed=0)
    step = trainer.make_train_step(run)
    state, metrics = step(state, trainer.device_batch(run, trainer.host_train_batch(run, dataset, 0)))
    results.append((jax.device_get(state.params), float(metrics['loss'])))
  (p1, l1), (p4, l4) = results
  np.testing.assert_allclose(l1, l4, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
  dataset = helpers.PatternDataset()
  overrides = {'train.steps': 40, 'train.checkpoint_every': 100, 'train.eval_every': 100}
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  trainer.train(helpers.tiny_config(**overrides), straight, dataset=dataset)

  def sigterm_after_20(step, state, metrics):
    del state, metrics
    if step == 20:
      os.kill(os.getpid(), signal.SIGTERM)  # the real signal path, delivered to this process

  first = trainer.train(helpers.tiny_config(**overrides), resumed, dataset=dataset,
                        hooks=[sigterm_after_20])
  assert first['preempted_at'] == 20 and first['step'] == 20
  second = trainer.train(helpers.tiny_config(**overrides), resumed, dataset=dataset)
  assert second['step'] == 40

  config = helpers.tiny_config(**overrides)
  _, a = _params(straight, config)
  _, b = _params(resumed, helpers.tiny_config(**overrides))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  # Same batches: every step's loss after the restart equals the uninterrupted run's.
  loss = lambda d: {m['step']: m['train/loss'] for m in metrics_lib.read_metrics(d)
                    if 'train/loss' in m}
  la, lb = loss(straight), loss(resumed)
  assert sorted(lb) == list(range(1, 41))
  np.testing.assert_allclose([lb[s] for s in range(21, 41)], [la[s] for s in range(21, 41)],
                             rtol=1e-6)


def test_checkpoint_restores_on_another_mesh(tmp_path):
  config = helpers.tiny_config(**{'train.steps': 3, 'mesh.data': 8})
  trainer.train(config, str(tmp_path), dataset=helpers.PatternDataset())
  _, on_data = _params(str(tmp_path), helpers.tiny_config(), data=8)
  run, on_other = _params(str(tmp_path), helpers.tiny_config(), data=2, fsdp=2, tensor=2)
  w = on_other.params['stack']['layer_0']['mlp']['w_in']
  assert w.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  assert int(on_other.step) == 3
  for x, y in zip(jax.tree.leaves(on_data), jax.tree.leaves(on_other)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
