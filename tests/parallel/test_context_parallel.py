"""Context parallelism (mesh.context): attention and a whole decoder over a sequence sharded on the
context axis give the unsharded numbers (float32, 1e-5), for both strategies.

The attention cases go through the stack's zig-zag permutation too (for causal masks): inputs in
token order, `to_zigzag`, the sharded attention, `from_zigzag`, compared with attention.attend_xla
on the whole row, outputs and gradients with respect to q, k and v.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import aot, config_lib, plan as plan_lib
from research.errors import ConfigError
from research.layers import attention, context_parallel as cp, patterns as patterns_lib
from research.parallel import mesh as mesh_lib
from research.training import trainer
from tests import helpers

B, T, H, G, K = 2, 64, 4, 2, 8
BLOCK = 4  # tiles smaller than the chunks, so each block is several tiles and some get skipped


def _mesh(context, data):
  cfg = config_lib.base_config().mesh
  cfg.context, cfg.data = context, data
  return mesh_lib.make_mesh(cfg, jax.devices()[:context * data]), mesh_lib.rules_of(cfg)


def _segments():
  """Row 0: two packed examples then padding (segment 0); row 1: one example."""
  seg = np.ones((B, T), np.int32)
  seg[0, 20:], seg[0, 50:] = 2, 0
  return jnp.asarray(seg)


CASES = {  # name: (causal, pattern), all on packed rows (_segments)
    'bidirectional': (False, patterns_lib.Pattern()),
    'causal': (True, patterns_lib.Pattern()),
    # W=6 over chunks of 4 (context=8) or 8 (context=4) tokens: the ring skips steps.
    'causal_sliding': (True, patterns_lib.Pattern('sliding', window=6)),
}


# Every case and strategy on context=8; on context=4 x data=2 the causal case with both (the
# whole-decoder test below runs sliding windows on that mesh too): the suite's time budget.
LAYOUTS = ([(case, 8, 1, strategy) for case in sorted(CASES) for strategy in cp.STRATEGIES] +
           [('causal', 4, 2, strategy) for strategy in cp.STRATEGIES])


@pytest.mark.parametrize('case,context,data,strategy', LAYOUTS)
def test_attention_matches_unsharded(case, context, data, strategy):
  _check_attention(*CASES[case], context, data, strategy)


@pytest.mark.parametrize('pattern', [patterns_lib.Pattern('chunked', chunk=12),
                                     patterns_lib.Pattern('longformer', window=6,
                                                          global_tokens=3)],
                         ids=lambda p: p.kind)
def test_other_local_patterns_match_unsharded(pattern):
  """Chunks and Longformer's global tokens, round the ring (causal, zig-zag)."""
  _check_attention(True, pattern, 4, 2, 'ring')


def _check_attention(causal, pattern, context, data, strategy):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (B, T, H, K))
  k, v = (jax.random.normal(key, (B, T, G, K)) for key in keys[1:3])
  cotangent = jax.random.normal(keys[3], (B, T, H, K))
  spec = attention.MaskSpec.self_attention(_segments(), causal=causal)

  def reference(q, k, v):
    return attention.attend_xla(q, k, v, spec.dense(pattern))

  def sharded(q, k, v):
    seg, index = spec.q_segment_ids_BT, spec.q_index_BT
    if causal:
      q, k, v, seg, index = cp.to_zigzag(q, k, v, seg, index)
    local = attention.MaskSpec(seg, seg, index, index, causal=causal)
    out = cp.attend(q, k, v, local, pattern, strategy=strategy, block_size=BLOCK)
    return cp.from_zigzag(out)[0] if causal else out

  def out_and_grads(fn):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(cotangent)

  want = jax.jit(out_and_grads, static_argnums=0)(reference)
  mesh, rules = _mesh(context, data)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = jax.jit(out_and_grads, static_argnums=0)(sharded)
  for name, g, w in zip(('out', 'dq', 'dk', 'dv'), (got[0], *got[1]), (want[0], *want[1])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)


def test_ring_skips_the_blocks_a_window_cannot_reach():
  sliding = patterns_lib.Pattern('sliding', window=6)
  # Zig-zag chunks of 4 tokens over 8 devices: a window of 6 reaches 2 chunks back, which
  # are ring steps 1-2 for the first chunk and, mirrored, steps 6-7 for the second.
  assert cp.ring_steps(sliding, 8, 64, causal=True) == (0, 1, 2, 6, 7)
  assert cp.ring_steps(sliding, 4, 64, causal=True) == (0, 1, 3)  # chunks of 8: 1 back
  assert cp.ring_steps(sliding, 8, 64, causal=False) == (0, 1, 7)  # one neighbour each side
  assert cp.ring_steps(patterns_lib.Pattern('chunked', chunk=8), 8, 64, causal=False) == (0,)
  assert cp.ring_steps(None, 8, 64, causal=True) == tuple(range(8))  # full: every block


def test_zigzag_order_balances_causal_work():
  assert list(cp.zigzag_order(4)) == [0, 7, 1, 6, 2, 5, 3, 4]
  # Causal (query, key) pairs per device over 8 chunks of 1: every device gets the same.
  order = cp.zigzag_order(4)
  work = [sum(q + 1 for q in order[2 * d:2 * d + 2]) for d in range(4)]
  assert work == [9, 9, 9, 9]


def _decoder_config(**overrides):
  return helpers.tiny_config(**{
      'data.seq_len': 64, 'model.d_model': 32, 'model.dtype': 'float32',
      'model.attention.pattern': 'sliding,full', 'model.attention.window': 12,
      'model.attention.block_size': 8, 'train.batch_size': 4, **overrides})


@functools.lru_cache(maxsize=1)
def _runs():
  """The one-device reference run, the context=4 x data=2 run, and the reference's params
  (built once for the tests that share them)."""
  ref_run = trainer.build_run(_decoder_config(), devices=jax.devices()[:1])
  config = _decoder_config(**{'mesh.context': 4, 'mesh.data': 2,
                              'model.attention.context_strategy': 'ring'})
  run = trainer.build_run(config, devices=jax.devices()[:8])
  return ref_run, run, trainer.init_state(ref_run, seed=0).params


def test_decoder_loss_and_grads_match_unsharded():
  """context=4 x data=2 (zig-zag stack, ring, a sliding and a full layer) against one device:
  the permutation at the stack's ends, the sharded layers between, both kinds of ring."""
  dataset = helpers.PatternDataset(128)
  ref_run, run, params = _runs()
  ref_loss, ref_grads = helpers.batch_loss_and_grads(ref_run, params, dataset)
  sharded = jax.device_put(params, run.state_shardings.params)
  loss, grads = helpers.batch_loss_and_grads(run, sharded, dataset)
  assert 4.0 < ref_loss < 6.0  # about ln(128) at initialisation
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  helpers.assert_grads_close(grads, ref_grads)


def test_decoding_on_a_context_mesh_is_ordinary_decoding():
  """KV-cache decoding never takes the context path: greedy tokens and logits on the
  context=4 mesh equal one device's (a 6-token prompt, 4 new tokens: lengths that do not
  divide the context axis)."""
  from research.inference import decoding  # pylint: disable=g-import-not-at-top
  ref_run, run, params = _runs()
  prompt = np.arange(12, dtype=np.int32).reshape(2, 6) + 5
  outputs = []
  for r in (ref_run, run):
    with r.context():
      outputs.append(decoding.generate_with_logits(
          r.eval_model, jax.device_put(params, r.state_shardings.params), prompt,
          jax.random.key(0), max_new_tokens=4, temperature=0.0))
  np.testing.assert_array_equal(outputs[1][0], outputs[0][0])
  np.testing.assert_allclose(outputs[1][1], outputs[0][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('overrides,needle', [
    ({'data.seq_len': 60}, 'mesh.context=4: does not divide data.seq_len=60 into 2 x context'),
    ({'model.attention.block_size': 5}, 'model.attention.block_size=5: must divide the 8-token'),
    ({'objective.name': 'prefix_lm'}, "objective.name='prefix_lm': with mesh.context=4"),
    ({'model.attention.pattern': 'bigbird'}, 'supported patterns are full, sliding'),
    ({'model.attention.implementation': 'splash'}, "use 'auto', 'xla' or 'blockwise'"),
    ({'model.attention_softcap': 30.0}, 'soft-capped scores are not supported'),
    ({'model.moe.num_experts': 4}, "model.moe.router='top_k': with mesh.context=4"),
    ({'model.family': 'encoder_decoder', 'objective.name': 'span_corruption'},
     "model.family='encoder_decoder'"),
    ({'mesh.rules': (('batch', 'data'), ('length', None))}, "needs the rule ('length', "),
    ({'model.attention.context_strategy': 'tree'}, "context_strategy='tree': choose one of"),
])
def test_unsupported_settings_are_config_errors(overrides, needle):
  with pytest.raises(ConfigError, match='^[^\n]*$') as e:
    helpers.tiny_config(**{'mesh.context': 4, 'data.seq_len': 64, **overrides})
  assert needle in str(e.value)


@pytest.mark.parametrize('variant', ['', ':tiny'])
def test_long_context_config_validates(variant):
  config = config_lib.load_config(f'configs/decoder/long_context_128k.py{variant}')
  assert config.mesh.context == 4 and mesh_lib.mesh_shape(config.mesh, 8) == (1, 1, 2, 1, 4, 1)


def test_context_axis_cuts_activations_not_parameters():
  from research import shardings  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_config(**{'mesh.context': 4, 'mesh.data': 2, 'data.seq_len': 64})
  assert mesh_lib.mesh_shape(config.mesh, 8) == (2, 1, 1, 1, 4, 1)
  assert dict(mesh_lib.rules_of(config.mesh))['length'] == 'context'
  for layout in shardings.param_layouts(config, 8):
    assert 'context' not in str(layout.spec), layout.path


def test_scanned_stack_memory_is_what_the_plan_says():
  """A scanned, rematerialised stack at context=4: XLA's temporaries (activations and
  gradients) within 25 % of research.plan's. Guards against O(T^2) buffers: a layer scan's
  partial evaluation once hoisted every tile's mask out of the loop (8.7x the plan here)."""
  config = helpers.tiny_config(**{
      'data.seq_len': 2048, 'model.d_model': 64, 'model.dtype': 'float32',
      'model.scan_layers': True, 'model.remat': 'full', 'model.attention.block_size': 128,
      'model.attention.context_strategy': 'ring', 'train.batch_size': 2, 'mesh.context': 4,
      'mesh.data': 2})
  run = trainer.build_run(config, devices=jax.devices()[:8])
  with run.context():
    compiled = trainer.make_train_step(run).lower(
        trainer.abstract_state(run), aot.abstract_batch(run)).compile()
  plan = plan_lib.plan(config, num_devices=8)
  assert plan.attention_impl == 'context_ring' and plan.rows_per_device == 1
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert plan.activation_bytes + plan.grad_bytes == pytest.approx(temp, rel=0.25)
