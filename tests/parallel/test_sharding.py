"""Every mesh layout gives the single-device losses and gradients (float32, 1e-5 relative).

Gradients are compared per parameter tensor as ||g - g_ref|| / ||g_ref||.
"""

import jax
import numpy as np
import pytest

from research.training import trainer
from tests import helpers

LAYOUTS = {
    'single': dict(data=1, fsdp=1, tensor=1, devices=1),
    'data8': dict(data=8, fsdp=1, tensor=1, devices=8),
    'fsdp8': dict(data=1, fsdp=8, tensor=1, devices=8),
    'data2_fsdp2_tensor2': dict(data=2, fsdp=2, tensor=2, devices=8),
}


def loss_and_grads(layout, scan_layers=False):
  spec = LAYOUTS[layout]
  config = helpers.tiny_config(**{'mesh.data': spec['data'], 'mesh.fsdp': spec['fsdp'],
                                  'mesh.tensor': spec['tensor'], 'model.dtype': 'float32',
                                  'model.scan_layers': scan_layers})
  run = trainer.build_run(config, devices=jax.devices()[:spec['devices']])
  state = trainer.init_state(run, seed=0)
  dataset = helpers.PatternDataset(config.data.vocab_size)
  value, grads = helpers.batch_loss_and_grads(run, state.params, dataset)
  return value, grads, state


@pytest.mark.parametrize('scan_layers', [False, True])
@pytest.mark.slow
def test_layouts_match_single_device(scan_layers):
  ref_loss, ref_grads, _ = loss_and_grads('single', scan_layers)
  assert 4.0 < ref_loss < 6.0  # about ln(128) at initialisation
  for layout in ('data8', 'fsdp8', 'data2_fsdp2_tensor2'):
    value, grads, _ = loss_and_grads(layout, scan_layers)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-5, err_msg=layout)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
      ref = _lookup(ref_grads, path)
      # Relative to each tensor's norm: a different reduction order moves float32 sums by
      # ulps, which is large relative error only for entries that cancel to almost zero.
      rel = np.linalg.norm(g - ref) / np.linalg.norm(ref)
      assert rel < 1e-5, f'{layout} {jax.tree_util.keystr(path)}: relative error {rel:.2e}'


def _lookup(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_parameters_are_sharded_as_the_rules_say():
  _, _, state = loss_and_grads('data2_fsdp2_tensor2')
  params = state.params
  mlp_in = params['stack']['layer_0']['mlp']['w_in']  # [embed, mlp] -> [fsdp, tensor]
  assert mlp_in.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  # Each device holds a quarter of the matrix: fsdp and tensor split it, data replicates it.
  shard = mlp_in.addressable_shards[0].data
  assert shard.shape == (mlp_in.shape[0] // 2, mlp_in.shape[1] // 2)
  embed = params['embed']['embedding']  # [vocab, embed] -> [tensor, fsdp]
  assert embed.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp')
