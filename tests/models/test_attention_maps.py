"""attention_maps: per-layer attention probabilities, as the model computed them."""

import jax
import jax.numpy as jnp
import numpy as np

from research import models
from research.layers import attention
from tests import helpers


def test_decoder_maps_are_causal_distributions_per_layer_and_head():
  config = helpers.tiny_config(**{'model.attention.pattern': 'sliding,full',
                                  'model.attention.window': 4,
                                  'model.attention.implementation': 'xla'})
  model = models.build_model(config)
  tokens_BT = jax.random.randint(jax.random.key(0), (2, 12), 4, 128)

  def run(rng, t):  # one compiled program: init, the maps, and plain logits with and without
    p = model.init(rng, t)['params']
    return (models.attention_maps(model, p, t), model.apply({'params': p}, t),
            model.apply({'params': p}, t, mutable=[attention.PROBS_COLLECTION])[0])

  maps, logits_BTV, logits_with_maps_BTV = jax.jit(run)(jax.random.key(1), tokens_BT)
  assert sorted(maps) == ['stack/layer_0/attn', 'stack/layer_1/attn']
  for probs_BHTS in maps.values():
    assert probs_BHTS.shape == (2, 4, 12, 12)
    np.testing.assert_allclose(probs_BHTS.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.triu(probs_BHTS, 1).max()) == 0.0  # causal: no later key
  sliding = np.asarray(maps['stack/layer_0/attn'])
  t, s = np.indices((12, 12))
  assert sliding[:, :, t - s >= 4].max() == 0.0  # the window: 4 keys back at most
  assert np.asarray(maps['stack/layer_1/attn'])[:, :, t - s >= 4].max() > 0.0
  # The sown maps change nothing: plain apply gives the same logits.
  np.testing.assert_allclose(logits_BTV, logits_with_maps_BTV, rtol=1e-6)

