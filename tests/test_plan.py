"""The memory and FLOP planner against the real thing: initialised models, JAX's saved residuals
and XLA's compiled memory analysis."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from research import config_lib, plan as plan_lib
from research.errors import ConfigError
from research.training import trainer
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2 = os.path.join(REPO, 'configs/decoder/gpt2_small.py')

FAMILIES = {
    'decoder': {},
    'encoder': {'model.family': 'encoder', 'objective.name': 'mlm', 'model.position': 'learned'},
    'encoder_decoder': {
        'model.family': 'encoder_decoder', 'objective.name': 'span_corruption',
        'model.position': 'relative', 'model.attention_scale': 1.0, 'model.activation': 'geglu',
        'model.tie_embeddings': False, 'model.num_kv_heads': 0},
}


def _device0_bytes(tree) -> int:
  """Bytes that device 0 really holds of every array in `tree`."""
  device = jax.devices()[0]
  return sum(next(s.data.nbytes for s in x.addressable_shards if s.device == device)
             for x in jax.tree.leaves(tree))


# One 1-layer model per family (compiling the random initialisation dominates these tests), each
# under a mesh that shards its state: the default rules split every 'embed' dimension over fsdp.
INIT_MESHES = {'decoder': {'mesh.data': 1, 'mesh.fsdp': 8},
               'encoder': {'mesh.data': 2, 'mesh.fsdp': 4},
               'encoder_decoder': {'mesh.data': 2, 'mesh.fsdp': 4}}


@pytest.mark.parametrize('family', FAMILIES)
def test_parameter_count_and_shards_match_the_initialised_state(family):
  """The count against trainer.init_state's parameters, and the per-device bytes of parameters
  and optimizer state against the shards that device 0 really holds."""
  config = helpers.tiny_config(**FAMILIES[family], **INIT_MESHES[family],
                               **{'model.num_layers': 1})
  state = trainer.init_state(trainer.build_run(config), seed=0)
  plan = plan_lib.plan(config, num_devices=8)
  assert plan.params_total == sum(x.size for x in jax.tree.leaves(state.params))
  assert plan.param_bytes == _device0_bytes(state.params)
  assert plan.opt_state_bytes == _device0_bytes(state.opt_state)
  assert plan.params_per_device < plan.params_total / 3  # the mesh really split the state
  assert plan.grad_bytes == plan.param_bytes


# --- Activations. -----------------------------------------------------------------------------


def _batch_spec(config, sharding=None) -> dict:
  """ShapeDtypeStructs of one training batch of `config`'s objective."""
  b = config.train.batch_size
  if config.objective.name == 'span_corruption':
    from research.objectives import span_corruption  # pylint: disable=g-import-not-at-top
    _, inputs_len, targets_len = span_corruption.lengths(config)
    lengths = {'encoder_inputs': inputs_len, 'encoder_segment_ids': inputs_len,
               'decoder_inputs': targets_len, 'decoder_segment_ids': targets_len,
               'targets': targets_len, 'weights': targets_len}
  else:
    lengths = dict.fromkeys(('inputs', 'targets', 'weights', 'segment_ids', 'positions'),
                            config.data.seq_len)
  return {k: jax.ShapeDtypeStruct((b, n), jnp.float32 if k == 'weights' else jnp.int32,
                                  sharding=sharding) for k, n in lengths.items()}


def _float32_config(**overrides):
  """Compute dtype and attention pinned, so the plan (for a GPU) and this CPU run agree."""
  return helpers.tiny_config(**{
      'data.seq_len': 64, 'data.vocab_size': 512, 'model.d_model': 128, 'model.num_layers': 2,
      'model.num_heads': 4, 'model.num_kv_heads': 0, 'model.activation': 'gelu',
      'train.batch_size': 4, 'mesh.data': 1, 'model.scan_layers': True,
      'model.dtype': 'float32', 'model.attention.implementation': 'xla', **overrides})


RESIDUAL_CASES = {
    'none': {},
    'bfloat16': {'model.dtype': 'bfloat16'},
    'swiglu_gqa': {'model.activation': 'swiglu', 'model.num_kv_heads': 2},
    'relu': {'model.activation': 'relu'},
    'gpt2_shape': {'model.norm': 'layernorm', 'model.use_bias': True, 'model.position': 'learned'},
    'full': {'model.remat': 'full'},
    'dots': {'model.remat': 'dots', 'model.activation': 'geglu'},
    'dots_no_batch': {'model.remat': 'dots_no_batch'},
    'save_qkv_attention': {'model.remat': 'save_qkv_attention', 'model.dtype': 'bfloat16'},
    'save_attention_out': {'model.remat': 'save_attention_out'},
    # Gemma 3's layer: (1 + scale) RMSNorm before and after each sublayer, QK-norm, GeGLU, MQA.
    'gemma_shape': {'model.norm': 'rmsnorm_plus_one', 'model.norm_position': 'sandwich',
                    'model.qk_norm': True, 'model.activation': 'geglu', 'model.embed_scale': True,
                    'model.num_kv_heads': 1},
    'qk_norm_bfloat16': {'model.qk_norm': True, 'model.activation': 'swiglu',
                         'model.num_kv_heads': 2, 'model.dtype': 'bfloat16'},
    'encoder': FAMILIES['encoder'],
    'encoder_decoder': FAMILIES['encoder_decoder'],
    'encoder_decoder_full': {**FAMILIES['encoder_decoder'], 'model.remat': 'full'},
    # Recurrent mixers (model.mixer), 4 chunks of 16: chunk-layout tensors, [C, C] scores,
    # per-chunk states, convolutions, gates; remat policies through their named q, k, v, output.
    'linear_attention': {'model.mixer.pattern': 'linear_attention', 'model.mixer.chunk_size': 16},
    'linear_attention_encoder': {**FAMILIES['encoder'], 'model.mixer.pattern': 'linear_attention',
                                 'model.mixer.chunk_size': 16},
    'mamba2_bfloat16': {'model.mixer.pattern': 'mamba2', 'model.mixer.chunk_size': 16,
                        'model.dtype': 'bfloat16'},
    'gated_deltanet': {'model.mixer.pattern': 'gated_deltanet', 'model.mixer.chunk_size': 16},
    'gated_deltanet_kernel_kept': {'model.mixer.pattern': 'gated_deltanet',
                                   'model.mixer.chunk_size': 16,
                                   'model.mixer.kernel_remat': False},
    'linear_attention_encoder_kernel_kept': {
        **FAMILIES['encoder'], 'model.mixer.pattern': 'linear_attention',
        'model.mixer.chunk_size': 16, 'model.mixer.kernel_remat': False},
    'gated_deltanet_dots': {'model.mixer.pattern': 'gated_deltanet', 'model.mixer.chunk_size': 16,
                            'model.remat': 'dots'},
    # Unrolled (a scan has one layer type), one layer of each kind.
    'hybrid': {'model.mixer.pattern': 'gated_deltanet,mamba2,linear_attention,attention',
               'model.mixer.chunk_size': 16, 'model.num_layers': 4, 'model.scan_layers': False},
}


@pytest.mark.parametrize('case', RESIDUAL_CASES)
def test_saved_activations_match_jax_saved_residuals(case):
  """The per-layer part of the model, tensor by tensor: what the plan says the forward pass
  keeps (activations less the backward working set) against the residuals JAX's autodiff saves
  for the train step's loss, traced on abstract values (nothing runs). Scanned layers, as JAX
  then stores exactly what it saves; unrolled, XLA may fuse some away (see the next test), and
  JAX saves per layer what depends only on the segment ids (the plan: once per stack), so the
  unrolled hybrid has one layer of each kind."""
  saved_residuals = pytest.importorskip('jax._src.ad_checkpoint').saved_residuals
  config = _float32_config(**RESIDUAL_CASES[case])
  run = trainer.build_run(config, devices=jax.devices()[:1])
  state = trainer.abstract_state(run)

  def loss(params, batch):
    return run.objective.loss_fn(run.model, params, batch)[0]

  with run.context():
    residuals = saved_residuals(loss, state.params, _batch_spec(config))
  jax_bytes = sum(aval.size * aval.dtype.itemsize for aval, source in residuals
                  if 'from the argument' not in source)
  plan = plan_lib.plan(config, num_devices=1)
  planned = plan.activation_bytes - plan.activation_terms['working_set']
  assert planned == pytest.approx(jax_bytes, rel=0.05)


XLA_CASES = {
    'none_scanned': (1, {'model.remat': 'none'}),
    'none_unrolled': (1, {'model.remat': 'none', 'model.scan_layers': False}),
    'full_scanned_data8': (8, {'model.remat': 'full', 'train.batch_size': 64}),
    # Recurrent mixers, 4 chunks of 64 per row.
    'linear_attention_scanned': (1, {'model.mixer.pattern': 'linear_attention'}),
    'mamba2_full_scanned': (1, {'model.mixer.pattern': 'mamba2', 'model.remat': 'full'}),
    'gated_deltanet_scanned': (1, {'model.mixer.pattern': 'gated_deltanet'}),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', XLA_CASES)
def test_activation_estimate_within_25_percent_of_xla(case):
  """Against the compiled train step's `memory_analysis()` on CPU (float32, XLA attention),
  8 sequences of 256 tokens per device, d_model 128, 4 layers, vocabulary 512: activations
  dominate (parameters are 0.8M).

  What is compared: `temp_size_in_bytes` is the peak size of every buffer XLA allocates that is
  neither an argument nor an output of the step. The arguments are the state and the batch;
  the outputs are the new state (aliased to the donated one) and the metrics. So the
  temporaries are the activations and their backward buffers, plus the gradients (an
  intermediate: only the updated parameters leave the step) and the optimizer update's scratch.
  The plan's counterpart is activations + gradients. (Gradients are 1 to 5 % of it here; the
  update is elementwise and fuses into the in-place outputs.)

  Measured ratios (plan / XLA): 0.96 scanned, 1.19 unrolled (XLA fuses GELU's elementwise
  residuals across unrolled layers), 1.20 for full remat over 8 data-parallel devices (1.06 on
  one device with the same 8 sequences). The unrolled case keeps remat off: on CPU, XLA hoists an unrolled stack's
  recomputation into the forward pass (remat saves nothing there), so remat is checked scanned.
  Recurrent mixers: 0.97 linear attention, 1.02 Gated DeltaNet, 0.76 Mamba-2 with full remat.
  """
  num_devices, overrides = XLA_CASES[case]
  config = _float32_config(**{'data.seq_len': 256, 'model.num_layers': 4,
                              'train.batch_size': 8, 'mesh.data': -1, **overrides})
  run = trainer.build_run(config, devices=jax.devices()[:num_devices])
  with run.context():
    compiled = trainer.make_train_step(run).lower(
        trainer.abstract_state(run), _batch_spec(config, run.batch_sharding)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  plan = plan_lib.plan(config, num_devices=num_devices)
  assert plan.rows_per_device == 8
  assert plan.grad_bytes < 0.1 * temp
  assert plan.activation_bytes + plan.grad_bytes == pytest.approx(temp, rel=0.25)


def test_remat_shrinks_activations_in_the_documented_order():
  config = config_lib.load_config(GPT2, [('model.remat', 'none')])
  by_policy = {}
  for policy in ('none', 'dots', 'dots_no_batch', 'save_qkv_attention', 'full'):
    config.model.remat = policy
    plan = plan_lib.plan(config, device='tpu-v5p')
    by_policy[policy] = plan.activation_terms['layers']
  assert (by_policy['none'] > by_policy['dots'] > by_policy['dots_no_batch'] >
          by_policy['save_qkv_attention'] > by_policy['full'])


# --- Verdicts, devices, FLOPs. ----------------------------------------------------------------


def test_gpt2_small_fits_one_h100_at_its_config_batch():
  config = config_lib.load_config(GPT2)
  plan = plan_lib.plan(config, num_devices=1, device='h100-80gb')
  assert plan.params_total == 124_475_904
  assert plan.batch_size == 32 and plan.rows_per_device == 32
  assert plan.compute_dtype == 'bfloat16' and plan.attention_impl == 'cudnn'
  assert plan.fits and plan.total_bytes > 10 * 2**30  # activations at batch 32 are real
  # FLOPs come from research.training.flops, not a copy of it.
  from research import models  # pylint: disable=g-import-not-at-top
  from research.training import flops  # pylint: disable=g-import-not-at-top
  cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  assert plan.flops_per_step == flops.flops_per_step(cfg, config)
  assert plan.step_time_s == pytest.approx(
      plan.flops_per_step / (989e12 * plan_lib.DEFAULT_MFU))


def test_70b_model_does_not_fit_one_v5e_but_plans_for_a_pod():
  config = config_lib.load_config(GPT2, [
      ('model.d_model', '8192'), ('model.num_layers', '80'), ('model.num_heads', '64'),
      ('model.num_kv_heads', '8'), ('model.d_ff', '28672'), ('model.activation', 'swiglu'),
      ('model.position', 'rope'), ('model.use_bias', 'false'), ('model.norm', 'rmsnorm'),
      ('model.tie_embeddings', 'false'), ('model.remat', 'full'), ('data.seq_len', '4096'),
      ('train.batch_size', '256')])
  one = plan_lib.plan(config, num_devices=1, device='tpu-v5e')
  assert 68e9 < one.params_total < 72e9
  assert not one.fits
  # Fully sharded over 256 chips that are not here, it does.
  config.mesh.data, config.mesh.fsdp = 1, -1
  pod = plan_lib.plan(config, num_devices=256, device='tpu-v5p')
  assert pod.mesh['fsdp'] == 256 and pod.rows_per_device == 1
  assert pod.param_bytes == pytest.approx(one.param_bytes / 256, rel=0.01)
  assert pod.fits


def test_fsdp_mesh_divides_state_by_the_fsdp_axis():
  config = config_lib.load_config(GPT2, [('mesh.data', '2'), ('mesh.fsdp', '4')])
  sharded = plan_lib.plan(config, num_devices=8)
  whole = plan_lib.plan(config_lib.load_config(GPT2, [('mesh.data', '1')]), num_devices=1)
  assert sharded.params_total == whole.params_total
  assert sharded.param_bytes == pytest.approx(whole.param_bytes / 4, rel=0.01)
  assert sharded.rows_per_device == 32 // 8


def test_every_named_device_has_a_verdict():
  plans = plan_lib.plan_devices(config_lib.load_config(GPT2), num_devices=1)
  assert [p.device.name for p in plans] == list(plan_lib.DEVICES)
  by_name = {p.device.name: p for p in plans}
  assert by_name['a100-40gb'].device.hbm_bytes == 40 * 2**30
  assert by_name['tpu-v5e'].compute_dtype == 'bfloat16'
  assert by_name['tpu-v5e'].attention_impl == 'xla'  # scores materialised: more than on GPUs
  assert by_name['tpu-v5e'].activation_bytes > by_name['h100-80gb'].activation_bytes
  assert by_name['h200'].fits and not by_name['tpu-v5e'].fits


def test_unknown_device_is_a_config_error_naming_the_choices():
  with pytest.raises(ConfigError) as error:
    plan_lib.plan(helpers.tiny_config(), device='h100')
  message = str(error.value)
  assert message.startswith("--device='h100'")
  for name in plan_lib.DEVICES:
    assert name in message


def test_batch_that_does_not_divide_the_mesh_is_a_config_error():
  with pytest.raises(ConfigError, match='train.batch_size'):
    plan_lib.plan(helpers.tiny_config(**{'train.batch_size': 4}), num_devices=8)


# --- The command. -----------------------------------------------------------------------------


def _run(*args):
  env = helpers.subprocess_env(JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'research.plan', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_prints_the_plan_for_gpt2_small():
  result = _run(f'--config={GPT2}', '--device=h100-80gb')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '124,475,904' in result.stdout
  assert 'fits on h100-80gb' in result.stdout and 'GiB' in result.stdout


def test_command_json_for_every_device_and_one_line_errors():
  result = _run(f'--config={GPT2}', '--device=all', '--num_devices=8', '--config.mesh.data=2',
                '--config.mesh.fsdp=4', '--json')
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(result.stdout)['devices']
  assert len(rows) == len(plan_lib.DEVICES)
  assert rows[0]['mesh'] == {'data': 2, 'stage': 1, 'fsdp': 4, 'expert': 1, 'context': 1,
                             'tensor': 1}
  assert all(row['params_total'] == 124_475_904 for row in rows)

  bad = _run(f'--config={GPT2}', '--device=v100')
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      "error: --device='v100': choose one of " + ', '.join(plan_lib.DEVICES) + " (or 'all')"]
  assert 'Traceback' not in bad.stderr
