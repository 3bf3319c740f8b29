"""Weight decay reaches weight matrices and embeddings only, whatever their rank."""

import flax.linen as nn
import jax
import numpy as np

from research import models
from research.training import optimizers
from tests import helpers


def _mask_by_name(config):
  model = models.build_model(config)
  variables = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))
  params = nn.meta.unbox(variables['params'])
  flat = jax.tree_util.tree_flatten_with_path(optimizers.decay_mask(params))[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): bool(v) for path, v in flat}


def test_scanned_norms_and_expert_biases_are_not_decayed():
  config = helpers.tiny_config(**{
      'model.scan_layers': True, 'model.use_bias': True, 'model.moe.num_experts': 4,
      'model.moe.d_ff': 32})
  mask = _mask_by_name(config)
  decayed = {k for k, v in mask.items() if v}
  kept = {k for k, v in mask.items() if not v}
  assert any(k.endswith('/scale') for k in kept)  # [L, D] scanned norm scales
  assert any(k.endswith('moe/b_in') for k in kept)  # [L, E, F] expert biases
  assert not any(k.endswith(('/scale', 'bias', '/b_in', '/b_out')) for k in decayed)
  for name in ('moe/w_in', 'moe/w_out', 'moe/router', 'embed/embedding'):
    assert any(k.endswith(name) for k in decayed), name
