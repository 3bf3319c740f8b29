"""Ahead-of-time compiles for TPU slices on this CPU host (libtpu, no TPU): a pod config is
known to shard and to fit in HBM before launch."""

import os
import subprocess
import sys

import pytest

from research import aot, shardings
from research.errors import UserError
from tests import helpers


@pytest.mark.slow
def test_multi_host_slice_compiles_with_fsdp():
  # Widths that TPU tiles (8 x 128) divide, so that shards are not padded.
  config = helpers.tiny_config(**{'mesh.preset': 'fsdp', 'model.scan_layers': True,
                                  'model.d_model': 1024, 'model.num_heads': 8,
                                  'model.num_kv_heads': 8, 'model.d_ff': 4096,
                                  'data.vocab_size': 1024})
  report = aot.compile_for_topology(config, 'v4:2x2x2')
  assert (report.num_devices, report.num_hosts, report.device_kind) == (8, 2, 'TPU v4')
  assert report.mesh == {'data': 1, 'stage': 1, 'fsdp': 8, 'expert': 1, 'context': 1,
                         'tensor': 1}
  # Each chip holds an eighth of the parameters and of Adam's two moments (the dump's shard
  # shapes), plus its rows of the batch and a few scalars.
  state_bytes = 3 * sum(l.shard_bytes for l in shardings.param_layouts(config, 8))
  assert state_bytes <= report.argument_bytes < 1.05 * state_bytes
  assert report.fits and 'fits in 32.00 GiB' in aot.format_report(report)
  assert 'all-gather' in report.compiled.as_text()  # FSDP gathers weights on the fly


def test_too_big_for_one_v5e_chip_is_refused_before_launch():
  # 2 layers of d_model 8,192: 1.6 B float32 parameters and Adam's two moments, ~19 GiB a chip
  # replicated over data parallelism, more than a v5e's 16 GiB: the TPU compiler says so.
  config = helpers.tiny_config(**{'model.d_model': 8192, 'model.num_heads': 64,
                                  'model.num_kv_heads': 64, 'model.activation': 'gelu',
                                  'mesh.preset': 'dp', 'train.batch_size': 4})
  with pytest.raises(aot.DoesNotFit, match=r'v5e:2x2: .*Ran out of memory in memory space hbm|'
                     r'v5e:2x2: .*exceeds available HBM.*--config.mesh.preset=fsdp'):
    aot.compile_for_topology(config, 'v5e:2x2')


def test_unknown_topology_is_a_user_error():
  with pytest.raises(UserError, match='--topology=v9z:1x1'):
    aot.topology_devices('v9z:1x1')


def test_command_prints_the_report():
  out = subprocess.run(
      [sys.executable, '-m', 'research.aot', '--config=configs/decoder/shakespeare.py:tiny',
       '--topology=v5e:2x2', '--config.mesh.preset=fsdp'],
      capture_output=True, text=True, timeout=600, check=False,
      # This test process holds libtpu's lock file from the tests above.
      env={**os.environ, 'ALLOW_MULTIPLE_LIBTPU_LOAD': '1'})
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'v5e:2x2: 4 x TPU v5 lite on 1 host(s), mesh data=1 x stage=1 x fsdp=4' in out.stdout


@pytest.mark.aot
def test_offloaded_optimizer_state_leaves_the_chips_arguments():
  """libtpu compiles train.offload: the optimizer state becomes host arguments (what
  research.plan counts as host bytes) and leaves HBM between steps. The step then stages it
  whole in HBM for the update (temporaries), so with activations this small the peak does not
  drop (5.7 MiB a chip without offload, 14.1 MiB with: 12.2 MiB of temporaries); research.plan
  models the staging as the larger of the optimizer state and the activations."""
  from research import plan as plan_lib  # pylint: disable=g-import-not-at-top
  reports, plans = {}, {}
  for offload in ('none', 'optimizer'):
    overrides = {'mesh.preset': 'fsdp', 'model.d_model': 256, 'train.offload': offload}
    reports[offload] = aot.compile_for_topology(helpers.tiny_config(**overrides), 'v5e:2x2')
    plans[offload] = plan_lib.plan(helpers.tiny_config(**overrides), num_devices=4,
                                   device='tpu-v5e')
  none, opt = (reports[o].compiled.memory_analysis() for o in ('none', 'optimizer'))
  host = plans['optimizer'].host_bytes
  assert none.host_argument_size_in_bytes == 0
  # TPU tiles pad the narrow dimensions of this tiny model (head_dim 64, 2 kv heads): 25 % here.
  assert host <= opt.host_argument_size_in_bytes < 1.3 * host
  assert opt.host_output_size_in_bytes == opt.host_argument_size_in_bytes
  assert none.argument_size_in_bytes - opt.argument_size_in_bytes == (
      opt.host_argument_size_in_bytes)
