"""PEFT: LoRA merged equals unmerged; each method trains (loss falls) with its frozen parameters
bit-identical and without optimizer state; trainable counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.data import sft
from research.data import tokenizer as tokenizer_lib
from research.errors import ConfigError
from research.training import peft, trainer
from tests.finetune.conftest import ONE_DEVICE, sft_config, source_config


def test_merged_lora_equals_unmerged_outputs():
  config = source_config(**{'peft.method': 'lora', 'peft.rank': 4})
  model = models.build_model(config)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 4, 96)

  @jax.jit
  def lora_params(rng):
    params = nn.meta.unbox(model.init({'params': rng}, tokens)['params'])
    # B starts at zero; make the deltas non-zero so that the test can see them.
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [jax.random.normal(jax.random.fold_in(rng, i), x.shape) * 0.05
              if peft.path_of(kp).endswith('_lora_b') else x for i, (kp, x) in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, leaves)

  params = lora_params(jax.random.key(0))
  lora_logits = jax.jit(model.apply)({'params': params}, tokens)
  merged = jax.jit(lambda p: peft.merge_lora(p, config.peft.alpha))(params)
  paths = [peft.path_of(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(merged)]
  assert paths and not any('_lora_' in path for path in paths)
  config.peft.method = 'none'
  apply = jax.jit(models.build_model(config).apply)
  merged_logits = apply({'params': merged}, tokens)
  base_logits = apply({'params': jax.jit(_base)(params)}, tokens)
  np.testing.assert_allclose(merged_logits, lora_logits, atol=2e-5, rtol=1e-5)
  assert float(jnp.abs(base_logits - lora_logits).max()) > 1e-2  # the deltas matter


def _base(params):
  """The LoRA model's parameters without the deltas."""
  return peft.merge_lora(jax.tree_util.tree_map_with_path(
      lambda kp, x: jnp.zeros_like(x) if '_lora_' in peft.path_of(kp) else x, params), 1.0)


@pytest.fixture(scope='module')
def sft_batches(decoder_source, copy_data, tokenizer_path):
  config = sft_config(decoder_source[0], *copy_data, **{'finetune.pack': False})
  data = sft.load_sft(config, tokenizer_lib.load_tokenizer(tokenizer_path))
  # One fixed batch: every method can lower its loss there within a few steps, even on top of
  # an untrained base model.
  return [data.train_batch(0, 0, config.train.batch_size)]


def _train(config, source, batches, steps):
  run = trainer.build_run(config, devices=ONE_DEVICE())
  from research.training import restore  # pylint: disable=g-import-not-at-top
  state, _ = restore.init_from(run, trainer.init_state(run, 0), source)
  start = jax.device_get(state.params)
  step = trainer.make_train_step(run)
  losses = []
  for i in range(steps):
    state, metrics = step(state, trainer.device_batch(run, batches[i % len(batches)]))
    losses.append(float(metrics['loss']))
  return run, start, state, losses


# LoRA's training run is the command-line test's (test_sft_train.py), with the same checks.
@pytest.mark.parametrize('method,lr', [('prompt', 0.2), ('bitfit', 2e-2), ('adapter', 1e-2)])
def test_method_trains_only_its_parameters(method, lr, decoder_source, copy_data, sft_batches):
  source = decoder_source[0]
  config = sft_config(source, *copy_data, **{'peft.method': method, 'train.lr': lr,
                                             'train.warmup_steps': 0, 'train.steps': 8,
                                             'train.schedule': 'constant'})
  run, start, state, losses = _train(config, source, sft_batches, 8)
  assert losses[-1] < losses[0] - 0.03, losses
  mask = run.trainable
  end = jax.device_get(state.params)
  changed = jax.tree.map(lambda a, b: bool((a != b).any()), start, end)
  for (kp, train), (_, moved) in zip(jax.tree_util.tree_leaves_with_path(mask),
                                     jax.tree_util.tree_leaves_with_path(changed)):
    path = peft.path_of(kp)
    if not train:
      assert not moved, f'{path} is frozen but changed'
  assert any(jax.tree.leaves(jax.tree.map(lambda t, m: t and m, mask, changed)))
  # Optimizer state exists for trainable parameters only: Adam's mu and nu, one each.
  counts = peft.count_params(state.params, config.peft)
  state_size = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
  assert state_size == 2 * counts['trainable_params']
  assert counts['trainable_params'] < counts['total_params'] / 4
  # The frozen set is exactly what the method names.
  names = [peft.path_of(kp) for kp, t in jax.tree_util.tree_leaves_with_path(mask) if t]
  expected = {'prompt': 'soft_prompt', 'bitfit': 'b', 'adapter': '_adapter'}
  assert names and all(expected[method] in n for n in names), names


def test_bitfit_without_biases_is_a_config_error():
  config = source_config(**{'model.use_bias': False, 'peft.method': 'bitfit'})
  with pytest.raises(ConfigError, match='no parameter to train'):
    trainer.build_run(config)
  with pytest.raises(ConfigError, match='peft.method'):
    source_config(**{'peft.method': 'ia3'})
