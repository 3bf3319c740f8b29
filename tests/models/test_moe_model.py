"""MoE inside the models: config validation, layer placement, expert parallelism on 8 simulated
devices (sharded equals unsharded), scan_layers, KV-cache decoding and training."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.errors import ConfigError
from research.inference import decoding
from research.layers import moe
from research.objectives import causal_lm
from research.training import metrics as metrics_lib, trainer
from tests import helpers


def moe_config(**overrides):
  base = {'model.moe.num_experts': 4, 'model.dtype': 'float32', 'model.d_model': 32,
          'model.moe.d_ff': 32}
  return helpers.tiny_config(**{**base, **overrides})


# ---------------------------------------------------------------------------------------------
# Config and placement


@pytest.mark.parametrize('overrides,field', [
    ({'model.moe.top_k': 5}, 'model.moe.top_k'),
    ({'model.moe.router': 'hash'}, 'model.moe.router'),
    ({'model.moe.router': 'expert_choice'}, 'model.moe.router'),  # decoder: non-causal
    ({'model.moe.every': 2, 'model.scan_layers': True}, 'model.moe.every'),
    ({'model.moe.every': 3}, 'model.moe.every'),  # 2 layers: none would be MoE
    ({'model.moe.softmax_order': 'never'}, 'model.moe.softmax_order'),
    ({'model.moe.capacity_factor': 0.0}, 'model.moe.capacity_factor'),
    ({'model.moe.balance': 'aux_free', 'model.moe.router': 'expert_choice',
      'model.moe.allow_noncausal': True}, 'model.moe.balance'),
])
def test_bad_moe_configs_name_the_field(overrides, field):
  with pytest.raises(ConfigError) as err:
    moe_config(**overrides)
  assert err.value.field == field


def test_expert_choice_allowed_when_noncausal_is_acknowledged_or_for_encoders():
  moe_config(**{'model.moe.router': 'expert_choice', 'model.moe.allow_noncausal': True})
  moe_config(**{'model.moe.router': 'expert_choice', 'model.family': 'encoder',
                'objective.name': 'mlm'})


def _param_shapes(config, num_inputs=1):
  model = models.build_model(config)
  tokens = (jax.ShapeDtypeStruct((2, 8), jnp.int32),) * num_inputs
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *tokens)['params'])


def test_every_places_moe_layers_and_dense_model_is_unchanged():
  cfg = models.transformer_config(moe_config(**{'model.moe.every': 2}).model, seq_len=32)
  assert cfg.moe.d_ff == 32 and cfg.moe.top_k == 2 and hash(cfg)
  stack = _param_shapes(moe_config(**{'model.moe.every': 2}))['stack']
  assert set(stack['layer_0']) >= {'mlp'} and 'moe' not in stack['layer_0']
  assert 'moe' in stack['layer_1'] and 'mlp' not in stack['layer_1']
  assert stack['layer_1']['moe']['w_in'].shape == (4, 32, 32)  # [E, D, F]
  dense = _param_shapes(helpers.tiny_config(**{'model.d_model': 32}))['stack']
  assert 'mlp' in dense['layer_1'] and 'moe' not in dense['layer_1']
  # The other families take it too (encoder-decoder: in both stacks).
  ed = _param_shapes(moe_config(**{'model.family': 'encoder_decoder',
                                   'objective.name': 'span_corruption'}), num_inputs=2)
  assert 'moe' in ed['encoder']['layer_0'] and 'moe' in ed['decoder']['layer_1']


# ---------------------------------------------------------------------------------------------
# Expert parallelism: 8 simulated devices equal one


def loss_aux_and_grads(config, devices, params=None):
  """(CE loss, MoE aux loss, metrics, grads of CE + aux, params) on the step-0 batch."""
  run = trainer.build_run(config, devices=devices)
  if params is None:
    params = trainer.init_state(run, seed=0).params
  else:
    params = jax.device_put(params, run.state_shardings.params)
  dataset = helpers.PatternDataset(config.data.vocab_size)
  batch = trainer.device_batch(run, trainer.host_train_batch(run, dataset, step=0))
  model = run.eval_model

  def loss(params):
    logits, variables = model.apply({'params': params}, batch['inputs'], batch['positions'],
                                    batch['segment_ids'], mutable=[moe.AUX_COLLECTION])
    loss_sum, weight_sum, _ = causal_lm.cross_entropy(logits, batch['targets'], batch['weights'])
    aux, metrics = moe.moe_aux(variables[moe.AUX_COLLECTION])
    return loss_sum / weight_sum + aux, (loss_sum / weight_sum, aux, metrics)

  with run.context():
    (_, (ce, aux, metrics)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return float(ce), float(aux), jax.device_get(metrics), jax.device_get(grads), params


@pytest.mark.slow
@pytest.mark.parametrize('router', ['top_k', 'dropless'])
def test_expert_sharded_equals_single_device(router):
  # top_k at capacity factor 1.0 drops assignments: the drops must match too.
  overrides = {'model.moe.router': router, 'model.moe.capacity_factor': 1.0}
  single = moe_config(**overrides)
  ref_ce, ref_aux, ref_metrics, ref_grads, ref_params = loss_aux_and_grads(single,
                                                                          jax.devices()[:1])
  assert 4.0 < ref_ce < 6.0 and ref_aux > 0
  if router == 'top_k':
    assert ref_metrics['moe/dropped_fraction'] > 0
  sharded = moe_config(**overrides, **{'mesh.data': 2, 'mesh.expert': 4})
  ce, aux, metrics, grads, params = loss_aux_and_grads(sharded, jax.devices()[:8],
                                                       jax.device_get(ref_params))
  w_in = params['stack']['layer_0']['moe']['w_in']  # [expert, embed, mlp]
  assert w_in.sharding.spec[0] == 'expert'
  assert w_in.addressable_shards[0].data.shape[0] == 1  # 4 experts over expert=4
  np.testing.assert_allclose(ce, ref_ce, rtol=1e-5)
  np.testing.assert_allclose(aux, ref_aux, rtol=1e-5)
  for name, value in ref_metrics.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  helpers.assert_grads_close(grads, ref_grads)


# ---------------------------------------------------------------------------------------------
# scan_layers, decoding, training


def test_scanned_moe_stack_equals_unrolled():
  unrolled, scanned = (models.build_model(moe_config(**{'model.scan_layers': s}))
                       for s in (False, True))
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 4, 128)
  params = nn.meta.unbox(unrolled.init(jax.random.key(1), tokens)['params'])
  stacked = dict(params)
  layers = [params['stack'][f'layer_{i}'] for i in range(2)]
  stacked['stack'] = {'layers': jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  apply = lambda model, p: model.apply({'params': p}, tokens, mutable=[moe.AUX_COLLECTION])
  y_u, aux_u = jax.jit(lambda p: apply(unrolled, p))(params)
  y_s, aux_s = jax.jit(lambda p: apply(scanned, p))(stacked)
  np.testing.assert_allclose(y_s, y_u, atol=1e-5, rtol=1e-5)
  total_u, metrics_u = moe.moe_aux(aux_u[moe.AUX_COLLECTION])
  total_s, metrics_s = moe.moe_aux(aux_s[moe.AUX_COLLECTION])
  assert set(metrics_u) == set(metrics_s) and 'moe/stack/layer_1/load_cv' in metrics_u
  np.testing.assert_allclose(total_s, total_u, rtol=1e-5)
  for name in metrics_u:
    np.testing.assert_allclose(metrics_s[name], metrics_u[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('router', ['top_k', 'dropless'])
def test_cached_decoding_matches_full_forward(router):
  # A capacity that drops nothing in the full forward: decoding (one token at a time, with a
  # slot for every token) must then give the same logits.
  config = moe_config(**{'model.moe.router': router, 'model.moe.capacity_factor': 4.0,
                         'model.moe.top_k': 1})
  model = models.build_model(config)
  prompt = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), prompt)['params'])
  tokens, step_logits = decoding.generate_with_logits(model, params, prompt, jax.random.key(1),
                                                      max_new_tokens=6, temperature=1.0)
  full = jax.jit(model.apply)({'params': params}, np.concatenate([prompt, tokens], axis=1))
  np.testing.assert_allclose(step_logits, full[:, 3:-1], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_tiny_moe_decoder_trains(tmp_path):
  # The objective does not add the MoE auxiliary losses yet (see the MoE report): this checks
  # that a MoE model trains through the unchanged trainer, on cross-entropy alone.
  config = moe_config(**{'train.steps': 30, 'train.eval_every': 30, 'train.log_every': 5,
                         'train.checkpoint_every': 30, 'model.moe.every': 2,
                         'model.moe.top_k': 1, 'model.moe.jitter': 0.1})
  final = trainer.train(config, str(tmp_path), dataset=helpers.PatternDataset())
  losses = [m['train/loss'] for m in metrics_lib.read_metrics(str(tmp_path))
            if 'train/loss' in m]
  assert losses[-1] < losses[0] - 0.3, losses
  assert final['eval/loss'] < losses[0] - 0.3


@pytest.mark.parametrize('scan_layers,remat', [(False, 'none'), (True, 'full')])
def test_aux_free_state_lives_in_its_collection(scan_layers, remat):
  config = moe_config(**{'model.moe.balance': 'aux_free', 'model.scan_layers': scan_layers,
                         'model.remat': remat})
  model = models.build_model(config, deterministic=False)
  tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), tokens)
  state = variables[moe.STATE_COLLECTION]
  bias = (state['stack']['layers']['moe']['selection_bias'] if scan_layers else
          state['stack']['layer_1']['moe']['selection_bias'])
  assert bias.shape == ((2, 4) if scan_layers else (4,))
  params = nn.meta.unbox(variables['params'])
  # Training updates it (returned like any mutable collection); params alone still apply.
  _, new = jax.eval_shape(lambda p, s, t: model.apply(
      {'params': p, moe.STATE_COLLECTION: s}, t, rngs={'dropout': jax.random.key(0)},
      mutable=[moe.STATE_COLLECTION, moe.AUX_COLLECTION]), params, state, tokens)
  assert jax.tree.map(lambda a: a.shape, new[moe.STATE_COLLECTION]) == jax.tree.map(
      lambda a: a.shape, state)
  jax.eval_shape(lambda p, t: model.apply({'params': p}, t, rngs={'dropout': jax.random.key(0)}),
                 params, tokens)


def test_apply_model_and_add_to_loss_for_objectives():
  config = moe_config(**{'model.moe.balance': 'aux_free', 'model.moe.bias_update_rate': 0.5})
  train_model = models.build_model(config, deterministic=False)
  tokens = jax.random.randint(jax.random.key(0), (2, 8), 4, 128)
  variables = jax.jit(train_model.init)(jax.random.key(1), tokens)
  variables = {'params': nn.meta.unbox(variables['params']),
               moe.STATE_COLLECTION: variables[moe.STATE_COLLECTION]}
  rngs = {'dropout': jax.random.key(2)}
  logits, out = jax.jit(lambda v: moe.apply_model(train_model, v, tokens, rngs=rngs))(variables)
  assert logits.shape == (2, 8, 128)
  assert 'moe/stack/layer_1/tokens_per_expert/3' in out['metrics']
  bias = out['state'][moe.STATE_COLLECTION]['stack']['layer_0']['moe']['selection_bias']
  assert np.abs(np.asarray(bias)).max() == 0.5  # one sign step from zero
  np.testing.assert_allclose(
      out['aux_loss'], out['metrics']['moe/stack/layer_0/aux_loss'] +
      out['metrics']['moe/stack/layer_1/aux_loss'], rtol=1e-6)
  # Evaluation mode reads the state but does not update it.
  _, evaluated = moe.apply_model(train_model.clone(deterministic=True), variables, tokens)
  assert evaluated['state'] == {}
  # The objective's loss gains weight_sum x aux_loss; aux['loss_sum'] stays the cross-entropy.
  loss, aux = moe.add_to_loss(jnp.float32(10.0), dict(loss_sum=jnp.float32(10.0),
                                                      weight_sum=jnp.float32(4.0)), out)
  np.testing.assert_allclose(loss, 10.0 + 4.0 * out['aux_loss'], rtol=1e-6)
  assert float(aux['loss_sum']) == 10.0 and 'model_state' in aux
  # Dense models: plain apply.
  dense = models.build_model(helpers.tiny_config(**{'model.d_model': 32}))
  shapes = jax.eval_shape(lambda: moe.apply_model(
      dense, dense.init(jax.random.key(0), tokens), tokens))
  assert shapes[1] is None
  assert moe.add_to_loss(1.0, {}, None) == (1.0, {})
