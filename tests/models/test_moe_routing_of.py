"""moe.routing_of: per-token expert choices, consistent with the layer's own load counts."""

import jax
import numpy as np

from research import models
from research.layers import moe
from tests import helpers


def test_routing_of_matches_probabilities_and_logged_load():
  config = helpers.tiny_config(**{'model.moe.num_experts': 4, 'model.moe.d_ff': 32,
                                  'model.d_model': 32, 'model.dtype': 'float32',
                                  'model.num_layers': 1})
  model = models.build_model(config)
  tokens_BT = jax.random.randint(jax.random.key(0), (2, 16), 4, 128)


  def run(rng, t):  # one compiled program: initialisation, routing and the layer's own metrics
    variables = {'params': model.init(rng, t)['params']}
    return moe.routing_of(model, variables, t), moe.apply_model(model, variables, t)[1]

  routing, info = jax.jit(run)(jax.random.key(1), tokens_BT)
  assert sorted(routing) == ['stack/layer_0']
  for layer, r in routing.items():
    probs_BTE, experts_BTK = np.asarray(r['probs_BTE']), np.asarray(r['experts_BTK'])
    assert probs_BTE.shape == (2, 16, 4) and experts_BTK.shape == (2, 16, 2)
    np.testing.assert_array_equal(experts_BTK, np.argsort(-probs_BTE, axis=-1)[..., :2])
    # The assignments before capacity are what the layer counts as its load.
    counts_E = np.bincount(experts_BTK.ravel(), minlength=4)
    logged_E = [info['metrics'][f'moe/{layer}/tokens_per_expert/{e}'] for e in range(4)]
    np.testing.assert_allclose(counts_E, logged_E)
