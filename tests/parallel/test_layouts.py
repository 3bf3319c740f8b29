"""Mesh presets: their parameter layouts match the checked-in golden tables, and the arrays the
trainer creates are sharded exactly as the `research.shardings` dump says.

Regenerate the goldens after an intended layout change with
  LMFORGE_UPDATE_GOLDEN=1 pytest tests/parallel/test_layouts.py
and review the diff like code.
"""

import os
import pathlib

import jax
import numpy as np
import pytest

from research import config_lib, shardings
from research.errors import ConfigError
from research.parallel import mesh as mesh_lib
from research.training import trainer
from tests import helpers

GOLDEN = pathlib.Path(__file__).parent / 'golden'


def preset_config(preset: str, **overrides):
  # 4 query heads over 2 key/value heads: fsdp_tp's tensor=4 cannot split the key/value heads.
  # fsdp_pp's 4 stages need 4 layers (scanned: the stack's layers go over 'stage').
  if preset == 'fsdp_pp':
    overrides = {'model.num_layers': 4, 'model.scan_layers': True, **overrides}
  return helpers.tiny_config(**{'mesh.preset': preset, 'model.dtype': 'float32', **overrides})


@pytest.mark.parametrize('preset', sorted(mesh_lib.PRESETS))
def test_preset_layout_matches_golden(preset):
  text = shardings.format_layouts(shardings.param_layouts(preset_config(preset), 8))
  path = GOLDEN / f'{preset}.txt'
  if os.environ.get('LMFORGE_UPDATE_GOLDEN'):
    path.write_text(text + '\n')
  assert text + '\n' == path.read_text(), f'layout of preset {preset} changed; see {path}'


def test_preset_sizes():
  def sizes(preset, **kw):
    # data stage fsdp expert context tensor
    return mesh_lib.mesh_shape(preset_config(preset, **kw).mesh, 8)
  assert sizes('dp') == (8, 1, 1, 1, 1, 1)
  assert sizes('fsdp') == (1, 1, 8, 1, 1, 1)
  assert sizes('fsdp_tp') == (1, 1, 2, 1, 1, 4)
  assert sizes('fsdp_ep') == (1, 1, 2, 4, 1, 1)
  assert sizes('ep') == (1, 1, 1, 8, 1, 1)
  assert sizes('fsdp_pp') == (1, 4, 2, 1, 1, 1)
  assert sizes('fsdp_cp') == (1, 1, 2, 1, 4, 1)
  # Explicit sizes win over the preset's: a hybrid 2-way data x 4-way FSDP mesh.
  assert sizes('fsdp', **{'mesh.data': 2}) == (2, 1, 4, 1, 1, 1)
  assert sizes('fsdp_tp', **{'mesh.tensor': 2}) == (1, 1, 4, 1, 1, 2)


def test_unknown_preset_is_a_config_error():
  with pytest.raises(ConfigError, match="mesh.preset.*'zero3'.*fsdp_tp"):
    preset_config('zero3')


def test_config_file_selects_a_preset_from_the_command_line():
  c = config_lib.load_config('configs/decoder/shakespeare.py', [('mesh.preset', 'fsdp')])
  assert mesh_lib.mesh_shape(c.mesh, 8) == (1, 1, 8, 1, 1, 1)


@pytest.mark.parametrize('preset', ['fsdp', 'fsdp_tp'])
def test_trainer_arrays_are_laid_out_as_dumped(preset):
  config = preset_config(preset)
  run = trainer.build_run(config, devices=jax.devices()[:8])
  state = trainer.init_state(run, seed=0)
  layouts = {l.path: l for l in shardings.param_layouts(config, 8)}
  leaves = jax.tree_util.tree_leaves_with_path(state.params)
  assert len(leaves) == len(layouts)
  for path, array in leaves:
    layout = layouts['/'.join(k.key for k in path)]
    assert array.sharding.spec == layout.spec, layout.path
    assert array.addressable_shards[0].data.shape == layout.shard_shape, layout.path


def test_fsdp_tp_with_too_few_kv_heads_trains_like_one_device():
  """tensor=4 over 2 key/value heads replicates them instead of failing, with the same loss."""
  dataset = helpers.PatternDataset(128)
  losses = []
  for preset, devices in (('dp', 1), ('fsdp_tp', 8)):
    config = preset_config(preset)
    run = trainer.build_run(config, devices=jax.devices()[:devices])
    loss, _ = helpers.batch_loss_and_grads(run, trainer.init_state(run, seed=0).params, dataset)
    losses.append(loss)
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
