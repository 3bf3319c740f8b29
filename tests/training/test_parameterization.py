"""μP and per-class learning rates: exact SP at the base width, init and output multipliers,
per-class factors in the optimizer's step, Adam-atan2 against a hand-derived reference, errors."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config_lib, models, plan
from research.errors import ConfigError
from research.training import optimizers, trainer
from tests import helpers

W = 4  # width multiplier of the μP cases below: d_model 64 over base width 16

FAMILIES = {
    'decoder': {},
    'encoder': {'model.family': 'encoder', 'objective.name': 'mlm', 'model.head_transform': True,
                'model.tie_embeddings': False, 'model.output_bias': True},
    'encoder_decoder': {'model.family': 'encoder_decoder', 'objective.name': 'span_corruption',
                        'model.position': 'relative', 'model.num_kv_heads': 0},
}


def mup(base_width=64 // W, **overrides):
  return helpers.tiny_config(**{'model.parameterization': 'mup', 'model.base_width': base_width,
                                **overrides})


def _init(config, seed=0):
  model = models.build_model(config)
  args = [np.zeros((2, config.data.seq_len), np.int32)] * (
      2 if config.model.family == 'encoder_decoder' else 1)
  return model, nn.meta.unbox(model.init(jax.random.key(seed), *args)['params']), args


def _classes(params):
  flat = jax.tree_util.tree_flatten_with_path(optimizers.param_classes(params))[0]
  return {jax.tree_util.keystr(path): cls for path, cls in flat}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_mup_at_the_base_width_is_sp_for_every_family(family):
  sp = helpers.tiny_config(**FAMILIES[family])
  at_base = mup(base_width=64, **FAMILIES[family])
  assert models.build_model(at_base).cfg == models.build_model(sp).cfg
  assert dict(at_base.train.effective_lr) == dict(sp.train.effective_lr)


def test_mup_at_the_base_width_trains_exactly_as_sp():
  """Same init, losses and parameters, bit for bit, over three steps (scanned, untied)."""
  dataset = helpers.PatternDataset()
  results = []
  for config in (helpers.tiny_config(**{'model.scan_layers': True,
                                        'model.tie_embeddings': False}),
                 mup(base_width=64, **{'model.scan_layers': True,
                                       'model.tie_embeddings': False})):
    run = trainer.build_run(config, devices=jax.devices()[:1])
    state = trainer.init_state(run, seed=0)
    step = trainer.make_train_step(run)
    losses = []
    for t in range(3):
      state, metrics = step(state, trainer.device_batch(
          run, trainer.host_train_batch(run, dataset, t)))
      losses.append(float(metrics['loss']))
    results.append((losses, jax.device_get(state.params)))
  (sp_losses, sp_params), (mup_losses, mup_params) = results
  assert sp_losses == mup_losses
  jax.tree.map(np.testing.assert_array_equal, sp_params, mup_params)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_mup_init_scales_hidden_matrices_only(family):
  """Hidden matrices start at 1/sqrt(w) of SP's draw; embeddings, the unembedding, norms and
  biases are SP's own. The init and the optimizer agree on which class a parameter is."""
  extra = {'model.moe.num_experts': 4, 'model.moe.d_ff': 32,
           'model.scan_layers': True} if family == 'decoder' else {}
  _, sp_params, _ = _init(helpers.tiny_config(**FAMILIES[family], **extra))
  _, mup_params, _ = _init(mup(**FAMILIES[family], **extra))
  classes = _classes(sp_params)
  assert set(classes.values()) >= {'embedding', 'hidden', 'vector'}
  flat_sp = dict(jax.tree_util.tree_flatten_with_path(sp_params)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(mup_params)[0]:
    key = jax.tree_util.keystr(path)
    if classes[key] == 'hidden':
      np.testing.assert_allclose(value, flat_sp[path] / W ** 0.5, rtol=1e-6, err_msg=key)
    else:
      np.testing.assert_array_equal(value, flat_sp[path], err_msg=key)


@pytest.mark.parametrize('family', ['decoder', 'encoder'])
def test_mup_multiplies_the_logits_by_one_over_w(family):
  """With head_dim fixed (so the attention scale is SP's), the same parameters give μP logits
  of SP's / w: tied (decoder) and untied with an output bias (encoder)."""
  fixed = {**FAMILIES[family], 'model.head_dim': 16}
  sp_model, params, args = _init(helpers.tiny_config(**fixed))
  mup_model = models.build_model(mup(**fixed))
  assert mup_model.cfg.attention_scale is None  # base head_dim = head_dim
  np.testing.assert_allclose(mup_model.apply({'params': params}, *args),
                             sp_model.apply({'params': params}, *args) / W, rtol=1e-5,
                             atol=1e-7)


def test_mup_attention_scale_is_one_over_head_dim_and_sp_at_the_base():
  cfg = models.build_model(mup()).cfg  # head_dim 16, base head_dim 4
  assert cfg.attention_scale == pytest.approx(4 ** 0.5 / 16)  # sqrt(base) / head_dim
  assert cfg.readout_mult == 1 / W and cfg.hidden_init_std == pytest.approx(0.02 / W ** 0.5)
  t5 = models.build_model(mup(**{'model.attention_scale': 1.0})).cfg
  assert t5.attention_scale == pytest.approx((4 / 16) ** 0.5)  # T5's 1.0, x sqrt(base / hd)


def _one_update(config, grads_seed=1):
  """The run's optimizer (what the trainer applies) on one random gradient: updates, params."""
  run = trainer.build_run(config, devices=jax.devices()[:1])
  shapes = jax.tree.map(lambda s: s.shape, nn.meta.unbox(
      trainer.abstract_state(run).params), is_leaf=lambda x: hasattr(x, 'shape'))
  rng = np.random.default_rng(grads_seed)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  updates, _ = run.tx.update(grads, run.tx.init(params), params)
  return updates, params


STEP = {'model.tie_embeddings': False, 'train.schedule': 'constant', 'train.warmup_steps': 0,
        'train.grad_clip': 0.0, 'train.weight_decay': 0.0, 'model.position': 'learned'}


@pytest.mark.parametrize('overrides, expected', [
    # μP: hidden matrices step at lr / w; embeddings, the untied unembedding, norms unchanged.
    ({'model.parameterization': 'mup'},
     {'embedding': 1, 'hidden': 1 / W, 'unembedding': 1, 'vector': 1}),
    # SP with Everett-style exponents and constant multipliers.
    ({'train.lr_exponents': 'embedding=0.5,unembedding=1,vector=-1',
      'train.lr_multipliers': 'hidden=3'},
     {'embedding': W ** -0.5, 'hidden': 3, 'unembedding': 1 / W, 'vector': W}),
])
def test_per_class_factors_reach_the_optimizer(overrides, expected):
  """One step of the run's own optimizer: each parameter's update is SP's (same gradient)
  times its class's factor, and the effective learning rates say the same."""
  base = {**STEP, 'model.base_width': 64 // W}
  sp_updates, _ = _one_update(helpers.tiny_config(**base))
  config = helpers.tiny_config(**base, **overrides)
  updates, params = _one_update(config)
  classes = _classes(params)
  assert set(classes.values()) == set(expected)
  for (path, u), u_sp in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                             jax.tree.leaves(sp_updates)):
    factor = expected[classes[jax.tree_util.keystr(path)]]
    np.testing.assert_allclose(u, factor * u_sp, rtol=1e-6, err_msg=jax.tree_util.keystr(path))
  for name, factor in expected.items():
    assert config.train.effective_lr[name] == pytest.approx(config.train.lr * factor)


def test_adam_atan2_matches_a_numpy_reference():
  """Two steps against the formula, and step 1 against its closed form: m_hat = g and
  sqrt(v_hat) = |g|, so the update is -lr x (a atan(1 / b) sign(g) + wd x p)."""
  lr, b1, b2, a, b, wd = 0.1, 0.9, 0.95, 1.27, 2.0, 0.1
  config = helpers.tiny_config(**{'train.optimizer': 'adam_atan2', 'train.atan2_b': b,
                                  'train.schedule': 'constant', 'train.warmup_steps': 0,
                                  'train.lr': lr, 'train.weight_decay': wd,
                                  'train.grad_clip': 0.0})
  tx = optimizers.make_optimizer(config.train, config.model)
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(3, 4)).astype(np.float32),
            'scale': rng.normal(size=(4,)).astype(np.float32)}  # a norm scale: no decay
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(2)]
  state = tx.init(params)
  m = {k: 0 * v for k, v in params.items()}
  v = {k: 0 * x for k, x in params.items()}
  p_ref = {k: x.astype(np.float64) for k, x in params.items()}
  p = params
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update(g, state, p)
    p = jax.tree.map(lambda x, u: x + u, p, updates)
    for k in params:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k].astype(np.float64) ** 2
      m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
      decay = wd * p_ref[k] if k == 'w' else 0
      step = a * np.arctan2(m_hat, b * np.sqrt(v_hat)) + decay
      if t == 1:
        np.testing.assert_allclose(step - decay, a * np.arctan(1 / b) * np.sign(g[k]),
                                   rtol=1e-6)
      p_ref[k] = p_ref[k] - lr * step
    for k in params:
      np.testing.assert_allclose(p[k], p_ref[k], rtol=1e-5, atol=1e-6)


def test_effective_learning_rates_in_config_json_and_the_plan(tmp_path):
  config = mup()
  config_lib.save_config(config, str(tmp_path / 'config.json'))
  saved = json.loads((tmp_path / 'config.json').read_text())['train']['effective_lr']
  assert saved == {'embedding': 3e-3, 'hidden': 3e-3 / W, 'unembedding': 3e-3, 'vector': 3e-3}
  text = plan.format_plan(plan.plan(config, num_devices=1))
  assert 'peak learning rate per class: embedding 0.003, hidden 0.00075, unembedding 0.003, ' \
         'vector 0.003' in text


@pytest.mark.parametrize('overrides, needle', [
    ({'model.parameterization': 'ntk'}, "model.parameterization='ntk'"),
    ({'model.base_width': -8}, 'model.base_width=-8'),
    ({'model.parameterization': 'mup', 'model.base_width': 18}, 'multiple of model.num_heads'),
    ({'model.parameterization': 'mup', 'model.base_width': 16, 'train.optimizer': 'sgd'},
     "model.parameterization='mup'"),
    ({'train.lr_exponents': 'hidden=1'}, 'needs model.base_width'),
    ({'model.base_width': 16, 'train.lr_exponents': 'readout=1'}, "'readout=1'"),
    ({'model.base_width': 16, 'train.lr_exponents': 'hidden'}, 'CLASS=NUMBER'),
    ({'train.lr_multipliers': 'hidden=0'}, 'must be > 0'),
    ({'train.optimizer': 'adam_atan2', 'train.atan2_a': 0.0}, 'train.atan2_a=0.0'),
])
def test_errors_name_the_field_the_value_and_the_fix(overrides, needle):
  with pytest.raises(ConfigError, match=None) as error:
    helpers.tiny_config(**overrides)
  assert needle in str(error.value)
