"""Pruning: exact masks, masked optimizer steps, gradual schedules that resume exactly,
structured pruning into smaller models, and the one-shot command end to end."""

import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import research
from research import models
from research.compress import __main__ as compress_main, prune
from research.data import tokenizer as tokenizer_lib
from research.training import checkpointing, optimizers, pruning
from research.training import trainer
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONE_DEVICE = lambda: jax.devices()[:1]
GRADUAL = {'train.pruning.method': 'magnitude', 'train.pruning.sparsity': 0.5,
           'train.pruning.start_step': 0, 'train.pruning.end_step': 6,
           'train.pruning.update_every': 2, 'train.schedule': 'constant',
           'train.eval_every': 100, 'train.checkpoint_every': 4}


def _flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree))


# ------------------------------------------------------------------------------------------------
# Masks.


def test_magnitude_and_2_4_masks_are_exact():
  rng = np.random.default_rng(0)
  # A scanned query kernel [layers, D, H, K] and an output projection [H, K, D].
  cases = [(rng.normal(size=(2, 16, 4, 8)), pruning.Layout(1, (1,))),
           (rng.normal(size=(4, 8, 16)), pruning.Layout(0, (0, 1)))]
  for w, layout in cases:
    keep = np.asarray(pruning.magnitude_mask(jnp.asarray(w), layout, 0.3))
    per_matrix = keep.reshape(len(w) if layout.leading else 1, -1)
    n = per_matrix.shape[1]
    assert (per_matrix.sum(-1) == n - round(0.3 * n)).all()  # each matrix exactly
    assert np.abs(w[~keep]).max() <= np.abs(w[keep]).min() or layout.leading  # the smallest go

    keep = np.asarray(pruning.two_four_mask(jnp.asarray(w), layout))
    inputs_last = np.moveaxis(keep, layout.inputs, range(keep.ndim - len(layout.inputs),
                                                         keep.ndim))
    groups = inputs_last.reshape(inputs_last.shape[:keep.ndim - len(layout.inputs)] + (-1, 4))
    assert (groups.sum(-1) == 2).all()  # exactly 2 of every 4 consecutive inputs
    w_last = np.moveaxis(np.abs(w), layout.inputs, range(w.ndim - len(layout.inputs), w.ndim))
    w_groups = w_last.reshape(groups.shape)
    kept_min = np.where(groups, w_groups, np.inf).min(-1)
    dropped_max = np.where(groups, -np.inf, w_groups).max(-1)
    assert (kept_min >= dropped_max).all()  # the 2 largest of each group stay


def test_layouts_prune_matrices_only():
  run = trainer.build_run(helpers.tiny_config(**{'train.pruning.method': '2:4'}),
                          devices=ONE_DEVICE())
  paths = {'/'.join(p): l for p, l in run.prunable.items()}
  assert paths['stack/layer_0/attn/query'] == pruning.Layout(0, (0,))  # reads embed
  assert paths['stack/layer_0/attn/out'] == pruning.Layout(0, (0, 1))  # reads heads x head_dim
  assert paths['stack/layer_0/mlp/w_out'] == pruning.Layout(0, (0,))  # reads mlp
  assert not any('embed' in p or 'norm' in p for p in paths)


def test_cubic_schedule():
  cfg = helpers.tiny_config(**GRADUAL).train.pruning
  values = [float(pruning.sparsity_at(cfg, t)) for t in (0, 2, 4, 6, 9)]
  np.testing.assert_allclose(values, [0, 0.5 * (1 - (2 / 3) ** 3), 0.5 * (1 - (1 / 3) ** 3),
                                      0.5, 0.5], rtol=1e-6)
  assert [bool(pruning.is_due(cfg, t)) for t in range(8)] == [True, False, True, False, True,
                                                              False, True, False]


def test_adamw_with_weight_decay_keeps_pruned_weights_at_zero():
  config = helpers.tiny_config(**{'train.weight_decay': 0.5, 'train.grad_clip': 0.0})
  tx = optimizers.make_optimizer(config.train, config.model)
  rng = np.random.default_rng(1)
  params = {'mlp': {'w_in': jnp.asarray(rng.normal(size=(16, 32)), jnp.float32),
                    'b_in': jnp.zeros((32,))}}
  layouts = {('mlp', 'w_in'): pruning.Layout(0, (0,))}
  masks = pruning.compute_masks('2:4', params, layouts, 0.5)
  params = pruning.apply(params, masks)
  opt_state = tx.init(params)
  for step in range(5):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    params, opt_state = pruning.masked_update(tx, grads, opt_state, params, masks)
  w, keep = np.asarray(params['mlp']['w_in']), np.asarray(masks['mlp']['w_in'])
  assert (w[~keep] == 0).all() and (w[keep] != 0).all()
  mu = np.asarray(optax.tree_utils.tree_get(opt_state, 'mu')['mlp']['w_in'])  # AdamW's
  assert (mu[~keep] == 0).all()  # no gradient ever reached the pruned weights' moments


# ------------------------------------------------------------------------------------------------
# Gradual pruning in the trainer.


def _state(workdir, config):
  run = trainer.build_run(config, devices=ONE_DEVICE())
  manager = checkpointing.make_manager(workdir)
  state = checkpointing.restore(manager, trainer.abstract_state(run))
  manager.close()
  return state


def test_gradual_pruning_resumes_exactly(tmp_path):
  """8 steps straight equal 4 steps, a checkpoint, a restore and 4 more (the trainer's own
  save and restore; the loop around them is tests/training/test_trainer.py's)."""
  dataset = helpers.PatternDataset()
  run = trainer.build_run(helpers.tiny_config(**GRADUAL, **{'train.steps': 8}),
                          devices=ONE_DEVICE())
  step_fn = trainer.make_train_step(run)
  batch = lambda i: trainer.device_batch(run, trainer.host_train_batch(run, dataset, i))

  def steps(state, first, last):
    sparsity = []
    for i in range(first, last):
      state, metrics = step_fn(state, batch(i))
      sparsity.append(float(metrics['pruning/sparsity']))
    return state, sparsity

  straight, sparsity = steps(trainer.init_state(run, 0), 0, 8)
  half, _ = steps(trainer.init_state(run, 0), 0, 4)  # mid-schedule: sparsity 0.48 of 0.5
  manager = checkpointing.make_manager(str(tmp_path), async_save=False)
  checkpointing.save(manager, 4, half, force=True)
  manager.wait_until_finished()
  restored = checkpointing.restore(manager, trainer.abstract_state(run))
  manager.close()
  resumed, _ = steps(restored, 4, 8)
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  masks, params = _flat(straight.model_state[pruning.MASKS]), _flat(straight.params)
  for path, keep in masks.items():
    assert keep.mean() == 0.5 and (params[path][~keep] == 0).all()
  assert sparsity[0] == 0 and sparsity[-1] == 0.5 and sparsity == sorted(sparsity)


# ------------------------------------------------------------------------------------------------
# Structured pruning.


def _logits(config, params, tokens_BT):
  model = models.build_model(config)
  return np.asarray(model.apply({'params': params}, tokens_BT))


@pytest.mark.parametrize('overrides, method, keep, fields', [
    ({'model.num_kv_heads': 0}, 'heads', 3, (3, 3)),  # multi-head: any count
    ({'model.scan_layers': True}, 'heads', 2, (2, 2)),  # GQA 4/2: each group keeps its best
    ({'model.num_heads': 6, 'model.num_kv_heads': 3, 'model.head_dim': 16}, 'heads', 4,
     (4, 2)),  # 6/3: 4 is no multiple of 3 groups but of 2 per group: whole groups
    ({}, 'channels', 100, None),
])
def test_structured_pruning_equals_the_masked_original(overrides, method, keep, fields):
  config = helpers.tiny_config(**overrides)
  run = trainer.build_run(config, devices=ONE_DEVICE())
  params = jax.device_get(trainer.init_state(run, seed=0).params)
  names = prune._logical_names(run)
  kept, new_fields = prune.structured_plan(config, params, names, method, keep)
  if fields is not None:
    assert (new_fields['num_heads'], new_fields['num_kv_heads']) == fields
  small_config = helpers.tiny_config(**{**overrides, **{f'model.{k}': v
                                                         for k, v in new_fields.items()}})
  small = prune.slice_tree(params, names, kept)
  shapes = trainer.abstract_state(trainer.build_run(small_config, devices=ONE_DEVICE())).params
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, small)
  assert prune._count(small) < prune._count(params)
  tokens_BT = np.random.default_rng(0).integers(0, 128, (2, 16))
  np.testing.assert_allclose(_logits(small_config, small, tokens_BT),
                             _logits(config, prune.zero_pruned(params, names, kept), tokens_BT),
                             rtol=1e-5, atol=1e-5)


def test_heads_that_break_gqa_or_leave_none_are_errors():
  config = helpers.tiny_config()  # 4 query heads in 2 KV groups
  with pytest.raises(research.errors.UserError, match='--num_heads: keeping 3 query heads per '
                     'layer breaks grouped-query attention'):
    prune.head_plan(config, 3)
  with pytest.raises(research.errors.UserError, match='keeps 0 of model.num_heads=4'):
    prune.head_plan(config, 0)


# ------------------------------------------------------------------------------------------------
# The command, end to end.


@pytest.fixture(name='trained', scope='module')
def _trained(tmp_path_factory):
  """A tiny decoder trained a few steps, with a sentencepiece tokenizer beside it."""
  workdir = str(tmp_path_factory.mktemp('trained'))
  config = helpers.tiny_config(**{'train.steps': 3, 'train.eval_every': 100})
  trainer.train(config, workdir, dataset=helpers.PatternDataset(), devices=ONE_DEVICE())
  docs = [f'the {w} and the {v} of a {w}{v}' for w in 'abcdefgh' for v in 'ijklmnop']
  tokenizer_lib.train_tokenizer(docs * 4, 96, os.path.join(workdir, 'tokenizer.model'),
                                num_sentinels=0, byte_fallback=False)
  return workdir


def _command(*argv):
  return subprocess.run([sys.executable, '-m', *argv], cwd=REPO, env=helpers.subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def test_prune_command_then_sample_evaluate_and_fine_tune(trained, tmp_path):
  out = str(tmp_path / 'magnitude')
  result = _command('research.compress', 'prune', f'--workdir={trained}', f'--out={out}',
                    '--method=magnitude', '--sparsity=0.5')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['sparsity'] == 0.5 and summary['params_after'] == summary['params_before']
  data = tmp_path / 'qa.jsonl'
  data.write_text(''.join(json.dumps({'input': w, 'target': 'a'}) + '\n' for w in 'abcd'))
  result = _command('research.evaluate', f'--workdir={out}', '--task=few_shot', f'--data={data}',
                    '--config.eval.k=0', '--config.eval.max_new_tokens=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'accuracy' in result.stdout

  masks = _flat(research.load(out).model_state[pruning.MASKS])  # research.sample's loader
  # Fine-tuning from the pruned workdir keeps its zeros: the masks come back with it.
  tuned = str(tmp_path / 'tuned')
  config = helpers.tiny_config(**{'init_from': out, 'train.steps': 3, 'train.eval_every': 100})
  assert config.train.pruning.method == 'magnitude'  # inherited from the pruned source
  trainer.train(config, tuned, dataset=helpers.PatternDataset(), devices=ONE_DEVICE())
  params = _flat(_state(tuned, config).params)
  for path, keep in masks.items():
    assert (params[path][~keep] == 0).all() and (params[path][keep] != 0).all()

  summary = prune.prune_workdir(trained, str(tmp_path / 'two_four'), '2:4')
  assert summary['sparsity'] == 0.5
  summary = prune.prune_workdir(trained, str(tmp_path / 'heads'), 'heads', num_heads=2)
  assert summary['params_after'] < summary['params_before'] and summary['num_heads'] == 2
  pruned = research.load(str(tmp_path / 'heads'))
  assert pruned.config.model.num_heads == 2 and pruned.config.train.pruning.method == 'none'
  assert isinstance(pruned.generate('the a', max_new_tokens=4), str)


def test_bad_input_exits_with_one_line(trained, tmp_path, capsys):
  cases = [(['--method=random', '--sparsity=0.5'],
            "--method=random: choose one of ['magnitude', '2:4', 'heads', 'channels']"),
           (['--method=magnitude', '--sparsity=0.5', '--steps=3'], 'unknown flag --steps'),
           (['--method=magnitude', '--sparsity=1.5'], '--sparsity=1.5: must be in (0, 1)'),
           (['--method=heads', '--num_heads=3'], '--num_heads=3: keeping 3 query heads'),
           (['--method=heads', '--sparsity=0.9'], '--sparsity=0.9: keeps 0 of'),
           ([f'--out={trained}', '--method=2:4'], 'exists: give a new directory')]
  for args, expected in cases:
    argv = ['prune', f'--workdir={trained}', f'--out={tmp_path / "y"}', *args]
    with pytest.raises(SystemExit) as exit_info:
      compress_main.main(['research.compress'] + argv)  # python -m research.compress's path
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
