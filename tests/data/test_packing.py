"""Packed rows hold every example once, and a packed model run equals running each alone."""

import jax
import numpy as np
import pytest

from research import models
from research.data import packing
from research.errors import UserError
from tests import helpers


def test_first_fit_keeps_every_example_once():
  rng = np.random.default_rng(0)
  examples = [list(rng.integers(4, 100, rng.integers(1, 12))) for _ in range(50)]
  packed = packing.pack(examples, 16)
  recovered = []
  for tokens, seg in zip(packed['tokens'], packed['segment_ids']):
    for s in range(1, seg.max() + 1):
      recovered.append(tokens[seg == s].tolist())
  assert sorted(map(tuple, recovered)) == sorted(map(tuple, examples))
  fill = sum(map(len, examples)) / packed['tokens'].size
  assert fill > 0.6 and len(packed['tokens']) < len(examples)  # rows mostly full
  assert (packed['tokens'][packed['segment_ids'] == 0] == 0).all()


def test_too_long_is_an_error():
  with pytest.raises(UserError, match='longer than seq_len=4'):
    packing.pack([[1, 2, 3, 4, 5]], 4)


def test_packed_decoder_equals_examples_alone():
  config = helpers.tiny_config()
  model = models.build_model(config)
  examples = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
  packed = packing.pack(examples, 12)
  assert packed['tokens'].shape == (1, 12)
  params = model.init(jax.random.key(0), packed['tokens'])['params']
  logits = model.apply({'params': params}, packed['tokens'], packed['positions'],
                       packed['segment_ids'])
  start = 0
  for example in examples:
    alone = model.apply({'params': params}, np.asarray([example]))
    np.testing.assert_allclose(logits[0, start:start + len(example)], alone[0], atol=1e-5)
    start += len(example)
