"""Pipeline stages (mesh.stage; GPipe and circular repeats): pipelined losses, gradients and
updates equal the unpipelined run's for scanned and unrolled stacks, and the settings it cannot
run are ConfigErrors that name the field.

Tiny models (d_model 32, 4 scanned or 8 unrolled layers, 32 tokens) keep the compiles short.
"""

import functools

import jax
import numpy as np
import pytest

from research import plan
from research.errors import ConfigError
from research.parallel import pipeline
from research.training import trainer
from tests import helpers

STEPS = 5


def _config(**overrides):
  # SGD with momentum: the parameters after STEPS updates are a linear function of the
  # gradients, so comparing them compares every step's gradients (AdamW's first steps would
  # only compare their signs).
  return helpers.tiny_config(**{
      'model.d_model': 32, 'model.num_layers': 4, 'model.scan_layers': True,
      'model.dtype': 'float32', 'train.steps': STEPS, 'train.optimizer': 'sgd',
      'train.lr': 0.3, 'mesh.data': 1, **overrides})


def _unrolled(**overrides):
  """8 unrolled layers alternating sliding-window and full attention: a chunk of k layers
  repeats when k is even."""
  return _config(**{'model.scan_layers': False, 'model.num_layers': 8,
                    'model.attention.pattern': 'sliding,full', 'model.attention.window': 8,
                    **overrides})


def _spy_on_schedule(monkeypatch, calls):
  real = pipeline.schedule

  @functools.wraps(real)
  def spy(*args, **kwargs):
    calls.append((kwargs['stages'], kwargs['repeats'], kwargs['micro_batches']))
    return real(*args, **kwargs)

  monkeypatch.setattr(pipeline, 'schedule', spy)


def _train(config, devices, monkeypatch=None):
  """Per-step losses and gradient norms of STEPS train steps, the parameters after them, and
  the (stages, repeats, micro-batches) of every pipeline schedule traced. The gradients are
  checked through the step (their global norm each step, and the SGD updates they sum to in the
  final parameters), so one program compiles per run."""
  calls = []
  if monkeypatch is not None:
    _spy_on_schedule(monkeypatch, calls)
  dataset = helpers.PatternDataset(128)
  run = trainer.build_run(config, devices=devices)
  state = trainer.init_state(run, seed=0)
  step = trainer.make_train_step(run)
  losses, norms = [], []
  for i in range(STEPS):
    state, metrics = step(state, trainer.device_batch(run, trainer.host_train_batch(
        run, dataset, i)))
    losses.append(float(metrics['loss']))
    norms.append(float(metrics['grad_norm']))
  return losses, norms, jax.device_get(state.params), calls


def _hybrid(**overrides):
  """4 unrolled layers alternating Gated DeltaNet and attention: a recurrent state and a
  short-convolution window in every chunk."""
  return _config(**{'model.scan_layers': False, 'model.mixer.pattern': 'gated_deltanet,attention',
                    'model.mixer.chunk_size': 8, **overrides})


STACKS = {'scanned': _config, 'unrolled': _unrolled, 'hybrid': _hybrid}


@pytest.fixture(scope='module')
def references():
  """The unpipelined runs on one device, per stack (computed when first asked)."""
  cache = {}

  def get(stack):
    if stack not in cache:
      cache[stack] = _train(STACKS[stack](), jax.devices()[:1])
    return cache[stack]
  return get


def _assert_close(tree_a, tree_b, tol):
  paths_a = jax.tree_util.tree_leaves_with_path(tree_a)
  leaves_b = jax.tree.leaves(tree_b)
  assert len(paths_a) == len(leaves_b)
  for (path, a), b in zip(paths_a, leaves_b):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('stack,layout,expected_calls', [
    # GPipe, remat 'full' per stage iteration; M = 4 micro-batches of 4 rows over data=2.
    ('scanned', {'mesh.stage': 4, 'mesh.data': 2, 'model.remat': 'full'}, (4, 1, 4)),
    # 2 gradient-accumulation micro-batches of 8 rows, each cut into 2 pipeline micro-batches.
    ('scanned', {'mesh.stage': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2, 'train.micro_batches': 2},
     (2, 1, 2)),
    # Circular: 4 one-layer chunks, each micro-batch twice round 2 stages, 4 in flight.
    ('scanned', {'mesh.stage': 2, 'mesh.pipeline_repeats': 2, 'mesh.pipeline_micro_batches': 4,
                 'mesh.data': 2, 'mesh.tensor': 2}, (2, 2, 4)),
    # Unrolled, two layers (sliding, full) per stage.
    ('unrolled', {'mesh.stage': 4, 'mesh.data': 2}, (4, 1, 4)),
    # Unrolled and circular: chunks of 2 layers, twice round 2 stages.
    ('unrolled', {'mesh.stage': 2, 'mesh.pipeline_repeats': 2, 'mesh.fsdp': 2,
                  'mesh.tensor': 2, 'model.remat': 'full'}, (2, 2, 2)),
    # Recurrent mixers: a (Gated DeltaNet, attention) chunk per stage, heads on tensor.
    ('hybrid', {'mesh.stage': 2, 'mesh.data': 2, 'mesh.tensor': 2}, (2, 1, 2)),
], ids=['scanned_stage4_data2_remat', 'scanned_stage2_fsdp2_tensor2_accum2',
        'scanned_circular2_data2_tensor2', 'unrolled_stage4_data2',
        'unrolled_circular2_fsdp2_tensor2_remat', 'hybrid_mixers_stage2_data2_tensor2'])
def test_pipeline_matches_unpipelined(references, stack, layout, expected_calls, monkeypatch):
  config = STACKS[stack](**layout)
  losses, norms, params, calls = _train(config, jax.devices(), monkeypatch)
  ref_losses, ref_norms, ref_params, _ = references(stack)
  assert calls and set(calls) == {expected_calls}  # the pipeline ran, not the plain stack
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(norms, ref_norms, rtol=1e-5, atol=1e-5)
  _assert_close(params, ref_params, 1e-5)
  assert losses[-1] < losses[0]  # it trains


@pytest.mark.parametrize('scanned', [True, False], ids=['scanned', 'unrolled'])
def test_stage_params_put_chunk_r_s_on_stage_s(scanned):
  """Layer (r S + s) k + j is layer j of stage s's chunk in repeat r (S 2, R 3, k 2)."""
  s_count, r_count, k = 2, 3, 2
  layers = s_count * r_count * k
  if scanned:
    stack = {'layers': {'w': np.arange(layers)}}
  else:
    stack = {f'layer_{i}': {'w': np.array(i)} for i in range(layers)}
  params = pipeline.stage_params(stack, stages=s_count, repeats=r_count, layers=layers,
                                 scanned=scanned)
  for s in range(s_count):
    for r in range(r_count):
      for j in range(k):
        got = params['layers']['w'][s, r, j] if scanned else params[f'layer_{j}']['w'][s, r]
        assert got == (r * s_count + s) * k + j
  back = pipeline.unstage_params(params, stages=s_count, repeats=r_count, layers=layers,
                                 scanned=scanned)
  _assert_close(back, stack, 0)


def test_mixture_of_experts_matches_gradient_accumulation(monkeypatch):
  """MoE layers, experts over mesh.expert, pipelined with M = 2: their statistics are averaged
  over the micro-batches, so the reference is the unpipelined run accumulating gradients over
  the same 2 micro-batches. Losses, gradient norms, MoE metrics and the aux-free balancing
  bias (model_state) agree step by step; the z-loss carries the router's gradient.

  Gradient accumulation weights each micro-batch's aux loss by its loss tokens, the pipeline
  (like the unpipelined batch, whose routing statistics count every token) does not: the
  corpus has no EOS (which carries no loss weight), so both micro-batches weigh the same."""
  moe = {'model.moe.num_experts': 4, 'model.moe.top_k': 2, 'model.moe.balance': 'aux_free',
         'model.moe.z_loss_coef': 0.1, 'train.steps': 3}
  results = []
  for layout in ({'train.micro_batches': 2},
                 {'mesh.stage': 2, 'mesh.expert': 2, 'mesh.data': 2,
                  'mesh.pipeline_micro_batches': 2}):
    calls = []
    _spy_on_schedule(monkeypatch, calls)
    config = _config(**moe, **layout)
    dataset = helpers.PatternDataset(128)
    dataset.train_tokens = np.where(dataset.train_tokens == 1, 2, dataset.train_tokens)
    devices = jax.devices()[:1] if len(layout) == 1 else jax.devices()
    run = trainer.build_run(config, devices=devices)
    state = trainer.init_state(run, seed=0)
    step = trainer.make_train_step(run)
    metrics = []
    for i in range(3):
      state, m = step(state, trainer.device_batch(run, trainer.host_train_batch(
          run, dataset, i)))
      metrics.append({k: float(v) for k, v in m.items() if k.startswith(('loss', 'grad_norm',
                                                                          'moe/'))})
    results.append((metrics, jax.device_get(state.model_state), calls))
  (ref_metrics, ref_state, _), (metrics, state, calls) = results
  assert calls == [(2, 1, 2)]
  assert 'moe/aux_loss_total' in metrics[0] and 'moe/stack/layer_3/load_cv' in metrics[0]
  for got, want in zip(metrics, ref_metrics):
    assert got.keys() == want.keys()
    for key in want:
      assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
  _assert_close(state, ref_state, 1e-6)
  assert np.abs(jax.tree.leaves(state)[0]).sum() > 0  # the bias moved


def test_encoder_decoder_gradients_match_unpipelined(monkeypatch):
  """Both T5 stacks pipelined: the bidirectional encoder, and the decoder whose stages take
  their micro-batch's encoder outputs and cross mask; the relative bias reaches every stage."""
  from tests.models import test_encoder_decoder  # pylint: disable=g-import-not-at-top
  calls = []
  _spy_on_schedule(monkeypatch, calls)
  dataset = test_encoder_decoder.pattern_dataset()
  config = functools.partial(_config, **{
      'model.family': 'encoder_decoder', 'objective.name': 'span_corruption',
      'model.position': 'relative', 'model.num_layers': 2,
      'data.vocab_size': test_encoder_decoder.VOCAB})
  reference = trainer.build_run(config(), devices=jax.devices()[:1])
  params = test_encoder_decoder.init_params(reference.model, std=0.05)  # no init compile
  piped = trainer.build_run(config(**{'mesh.stage': 2, 'mesh.data': 2, 'mesh.tensor': 2}),
                            devices=jax.devices())
  loss, grads = helpers.batch_loss_and_grads(reference, params, dataset)
  piped_loss, piped_grads = helpers.batch_loss_and_grads(
      piped, jax.device_put(params, piped.state_shardings.params), dataset)
  assert calls == [(2, 1, 2)] * 2  # encoder and decoder
  assert piped_loss == pytest.approx(loss, rel=1e-5)
  _assert_close(piped_grads, grads, 1e-5)


@pytest.mark.parametrize('layout', [
    {'mesh.stage': 2, 'mesh.context': 2, 'mesh.data': 2, 'model.remat': 'full',
     'model.attention.context_strategy': 'ring'},
    {'mesh.stage': 2, 'mesh.context': 4, 'mesh.pipeline_repeats': 2},
], ids=['stage2_context2_data2_ring_remat', 'circular2_context4_all_gather'])
def test_pipeline_with_context_parallelism_matches_one_device(layout, monkeypatch):
  """Stages over a context-sharded, zig-zag ordered causal sequence: the loss and gradients of
  one batch equal the single-device model's."""
  calls = []
  _spy_on_schedule(monkeypatch, calls)
  reference = trainer.build_run(_config(), devices=jax.devices()[:1])
  params = trainer.init_state(reference, seed=0).params
  dataset = helpers.PatternDataset(128)
  loss, grads = helpers.batch_loss_and_grads(reference, params, dataset)
  run = trainer.build_run(_config(**layout), devices=jax.devices())
  got_loss, got_grads = helpers.batch_loss_and_grads(
      run, jax.device_put(params, run.state_shardings.params), dataset)
  assert calls and calls[0][:2] == (2, layout.get('mesh.pipeline_repeats', 1))
  assert got_loss == pytest.approx(loss, rel=1e-6)
  helpers.assert_grads_close(got_grads, grads, rtol=1e-5)


def test_layer_parameters_are_sharded_over_stages():
  run = trainer.build_run(_config(**{'mesh.stage': 4, 'mesh.data': 2}), devices=jax.devices())
  query = run.state_shardings.params['stack']['layers']['attn']['query']  # [L, D, H, K]
  assert query.spec[0] == 'stage'
  assert query.shard_shape((4, 32, 4, 8)) == (1, 32, 4, 8)  # 4 layers over 4 stages


@pytest.mark.parametrize('overrides,needle', [
    ({'mesh.stage': 3}, 'mesh.stage=3: mesh.stage x mesh.pipeline_repeats = 3 chunks do not '
     'divide model.num_layers=4'),
    ({'mesh.stage': 2, 'mesh.pipeline_repeats': 4}, 'mesh.pipeline_repeats=4: mesh.stage x '
     'mesh.pipeline_repeats = 8 chunks do not divide model.num_layers=4'),
    ({'mesh.stage': 2, 'mesh.pipeline_repeats': 0}, 'mesh.pipeline_repeats=0: must be a positive'),
    ({'mesh.stage': 4, 'model.num_layers': 8, 'mesh.pipeline_micro_batches': 2,
      'mesh.pipeline_repeats': 2},
     'mesh.pipeline_micro_batches=2: circular repeats (mesh.pipeline_repeats=2) need at least '
     'mesh.stage=4 micro-batches'),
    ({'mesh.stage': 4, 'model.scan_layers': False, 'model.attention.pattern': 'sliding,full',
      'model.attention.window': 8}, "model.attention.pattern='sliding,full': does not repeat "
     'every 1 layers'),
    ({'mesh.stage': 4, 'model.scan_layers': False, 'model.mixer.pattern': 'mamba2,attention',
      'model.mixer.chunk_size': 8}, "model.mixer.pattern='mamba2,attention': does not repeat "
     'every 1 layers'),
    ({'mesh.stage': -1}, 'mesh.stage=-1: must be a positive integer'),
    ({'mesh.stage': 2, 'mesh.pipeline_micro_batches': 3},
     'mesh.pipeline_micro_batches=3: must divide the 16 sequences'),
    ({'mesh.stage': 2, 'train.micro_batches': 4, 'mesh.pipeline_micro_batches': 8},
     'mesh.pipeline_micro_batches=8: must divide the 4 sequences of each train micro-batch'),
    ({'mesh.stage': 2, 'model.family': 'encoder_decoder', 'objective.name': 'span_corruption',
      'model.decoder_layers': 3}, 'chunks do not divide model.decoder_layers=3'),
    ({'mesh.stage': 4, 'model.scan_layers': False, 'model.moe.num_experts': 4,
      'model.moe.every': 2}, 'model.moe.every=2: does not divide 1, the layers of one pipeline'),
    ({'mesh.stage': 2, 'mesh.rules': (('batch', 'data'), ('layers', None))},
     "needs the rule ('layers', 'stage')"),
])
def test_config_errors(overrides, needle):
  with pytest.raises(ConfigError) as e:
    _config(**overrides)
  assert needle in str(e.value)
  assert '\n' not in str(e.value)


def test_micro_batches_must_divide_over_batch_shards():
  # 16 rows / 8 micro-batches = 2 rows, over data=4 batch shards.
  config = _config(**{'mesh.stage': 2, 'mesh.data': 4, 'mesh.pipeline_micro_batches': 8})
  with pytest.raises(ConfigError, match='mesh.pipeline_micro_batches=8: each pipeline '
                     r'micro-batch \(16 / 8 = 2 sequences\) must divide over the 4 batch'):
    trainer.build_run(config, devices=jax.devices())


def test_plan_reports_bubble_and_per_stage_memory():
  flat = plan.plan(_config(**{'mesh.data': 8}), num_devices=8)
  piped = plan.plan(_config(**{'mesh.stage': 4, 'mesh.data': 2}), num_devices=8)
  assert flat.bubble_fraction == 0.0
  assert piped.bubble_fraction == pytest.approx(3 / 7)  # S = M = 4: (S - 1) / (M + S - 1)
  assert piped.step_time_s == pytest.approx(flat.step_time_s * 7 / 4)
  # A quarter of the layers' parameters per device; embeddings and norms on every stage.
  cfg_layers = 4 * (32 * (4 + 2 + 2) * 8 + 4 * 8 * 32 + 3 * 32 * 256 + 2 * 32)
  assert flat.params_per_device - piped.params_per_device == cfg_layers * 3 // 4
  # Layer residuals: a stage's 1 of 4 layers for M + S - 1 = 7 iterations of a quarter of its
  # 8 rows (data=2), against 4 layers x 2 rows (data=8): 8 x 7 / 16 / 2 of the flat mesh's.
  ratio = piped.activation_terms['layers'] / flat.activation_terms['layers']
  assert ratio == pytest.approx(8 * 7 / 16 / 2)
  assert piped.activation_terms['pipeline_buffer'] > 0
  assert 'pipeline (GPipe): 4 stages x 4 micro-batches, bubble 42.9%' in plan.format_plan(piped)


def test_plan_of_circular_repeats_and_unrolled_stacks():
  flat = plan.plan(_config(**{'mesh.data': 8}), num_devices=8)
  circular = plan.plan(_config(**{'mesh.stage': 2, 'mesh.pipeline_repeats': 2,
                                  'mesh.pipeline_micro_batches': 4, 'mesh.data': 4}),
                       num_devices=8)
  assert circular.bubble_fraction == pytest.approx(1 / 9)  # (S - 1) / (R M + S - 1)
  assert circular.step_time_s == pytest.approx(flat.step_time_s * 9 / 8)
  # R M + S - 1 = 9 iterations of one layer for b = 4 / 4 rows, against 4 layers x 2 rows.
  ratio = circular.activation_terms['layers'] / flat.activation_terms['layers']
  assert ratio == pytest.approx(9 / 8)
  assert 'pipeline (circular, 2 repeats): 2 stages x 4 micro-batches, bubble 11.1%' in (
      plan.format_plan(circular))
  # The stage's half of the float32 layer weights, reshuffled, and their gradients.
  cfg_layers = 4 * (32 * (4 + 2 + 2) * 8 + 4 * 8 * 32 + 3 * 32 * 256 + 2 * 32)
  assert circular.activation_terms['circular_weights'] == 2 * 4 * cfg_layers // 2
  assert 'circular_weights' not in flat.activation_terms
  # An unrolled stack keeps every layer on every stage.
  unrolled = plan.plan(_unrolled(**{'mesh.stage': 4, 'mesh.data': 2}), num_devices=8)
  unrolled_flat = plan.plan(_unrolled(**{'mesh.data': 8}), num_devices=8)
  assert unrolled.params_per_device == unrolled_flat.params_per_device
