"""train.offload: state in pinned host memory between steps changes where it lives, not what the
run computes; checkpoints move between offloaded and device runs; the planner counts it."""

import os
import signal

import jax
import numpy as np
import pytest

from research import plan as plan_lib
from research.errors import ConfigError
from research.parallel import mesh as mesh_lib
from research.training import checkpointing, metrics as metrics_lib, trainer
from tests import helpers

_MESH = {'mesh.fsdp': 2, 'mesh.data': 4}  # state sharded, batch split: 8 devices


def _config(offload: str, **overrides):
  return helpers.tiny_config(**{**_MESH, 'train.offload': offload, **overrides})


def _memory_kinds(tree) -> set[str]:
  return {x.sharding.memory_kind for x in jax.tree.leaves(tree)}


def test_offloaded_steps_equal_device_steps_and_state_stays_on_host():
  dataset = helpers.PatternDataset()
  results = {}
  for offload in ('none', 'optimizer', 'optimizer_and_params'):
    run = trainer.build_run(_config(offload))
    state, step, losses = trainer.init_state(run, seed=0), trainer.make_train_step(run), []
    for i in range(3):
      state, metrics = step(state, trainer.device_batch(run, trainer.host_train_batch(
          run, dataset, i)))
      losses.append(float(metrics['loss']))
    host = {'none': set(), 'optimizer': {'opt_state'},
            'optimizer_and_params': {'opt_state', 'params'}}[offload]
    for field in ('params', 'opt_state'):
      want = 'pinned_host' if field in host else 'device'
      assert _memory_kinds(getattr(state, field)) == {want}, (offload, field)
    w = state.params['stack']['layer_0']['mlp']['w_in']
    assert w.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')  # layout as before
    results[offload] = (losses, jax.device_get(state))
  ref_losses, ref_state = results.pop('none')
  for offload, (losses, state) in results.items():
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6, err_msg=offload)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=offload)


def _losses(workdir):
  return {m['step']: m['train/loss'] for m in metrics_lib.read_metrics(workdir)
          if 'train/loss' in m}


def _restored(workdir, offload):
  run = trainer.build_run(_config(offload))
  manager = checkpointing.make_manager(workdir, async_save=False)
  state = checkpointing.restore(manager, trainer.abstract_state(run))
  manager.close()
  return state


@pytest.mark.slow
def test_resume_across_offload_settings_equals_uninterrupted(tmp_path):
  """Interrupted at step 3 with one setting, resumed with another: every step's loss and the
  final state equal an uninterrupted offloaded run's (both directions of the switch)."""
  dataset = helpers.PatternDataset()
  overrides = {'train.steps': 6, 'train.checkpoint_every': 100, 'train.eval_every': 100}
  straight = str(tmp_path / 'straight')
  trainer.train(_config('optimizer_and_params', **overrides), straight, dataset=dataset)

  def sigterm_after_3(step, state, metrics):
    del state, metrics
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  for first, then in (('optimizer_and_params', 'none'), ('none', 'optimizer')):
    workdir = str(tmp_path / f'{first}_then_{then}')
    out = trainer.train(_config(first, **overrides), workdir, dataset=dataset,
                        hooks=[sigterm_after_3])
    assert out['preempted_at'] == 3
    assert trainer.train(_config(then, **overrides), workdir, dataset=dataset)['step'] == 6
    la, lb = _losses(straight), _losses(workdir)
    assert sorted(lb) == list(range(1, 7))
    np.testing.assert_allclose([lb[s] for s in range(1, 7)], [la[s] for s in range(1, 7)],
                               rtol=1e-6)
    a, b = _restored(straight, then), _restored(workdir, then)
    assert _memory_kinds(b.opt_state) == {'device' if then == 'none' else 'pinned_host'}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_plan_counts_host_bytes_and_the_peak_they_free():
  plans = {o: plan_lib.plan(_config(o), num_devices=8)
           for o in ('none', 'optimizer', 'optimizer_and_params')}
  base, opt, both = plans['none'], plans['optimizer'], plans['optimizer_and_params']
  assert base.host_bytes == 0 and 0 < base.opt_state_bytes < base.activation_bytes
  assert opt.host_bytes == base.opt_state_bytes
  assert both.host_bytes == base.opt_state_bytes + base.param_bytes
  # Activations outweigh the optimizer state here: HBM drops by all of it. Parameters stay on
  # the device for the whole step: they save nothing at the peak.
  assert base.total_bytes - opt.total_bytes == base.opt_state_bytes
  assert both.total_bytes == opt.total_bytes
  text = plan_lib.format_plan(opt)
  assert 'offload (optimizer), saved at the peak' in text
  assert "pinned host memory: " in text and "(train.offload='optimizer')" in text
  assert 'offload' not in plan_lib.format_plan(base)
  assert opt.to_dict()['host_bytes'] == opt.host_bytes
  # Few activations: the update, holding the whole optimizer state, becomes the peak.
  short = {o: plan_lib.plan(_config(o, **{'data.seq_len': 4, 'train.batch_size': 8}),
                            num_devices=8) for o in ('none', 'optimizer')}
  a = short['none'].activation_bytes
  assert a < short['none'].opt_state_bytes
  assert short['none'].total_bytes - short['optimizer'].total_bytes == a


def test_backend_without_pinned_host_is_a_config_error(monkeypatch):
  monkeypatch.setattr(mesh_lib, 'memory_kinds', lambda mesh: {'device'})
  with pytest.raises(ConfigError, match=r"train.offload='optimizer'.*pinned_host.*'none'"):
    trainer.build_run(_config('optimizer'))
  trainer.build_run(_config('none'))  # nothing offloaded: nothing asked of the backend
  with pytest.raises(ConfigError, match='train.offload'):
    _config('params')
