"""Encoder-decoder: masks, packing, T5's relative position buckets, sharding, and training."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config_lib, models
from research.layers import relative_bias
from research.training import trainer
from tests import helpers

VOCAB = 128


def tiny_config(**model_fields):
  """A 2+2-layer, 32-wide T5 v1.1-shaped model (relative bias, GeGLU, untied), float32."""
  c = config_lib.base_config()
  c.data.seq_len = 32
  c.data.vocab_size = VOCAB
  c.model.family = 'encoder_decoder'
  c.model.d_model = 32
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.d_ff = 64
  c.model.activation = 'geglu'
  c.model.position = 'relative'
  c.model.relative_buckets = 8
  c.model.relative_max_distance = 16
  c.model.attention_scale = 1.0
  c.model.tie_embeddings = False
  c.model.dtype = 'float32'
  c.objective.name = 'span_corruption'
  for name, value in model_fields.items():
    c.model[name] = value
  return config_lib.finalize(c)


def init_params(model, seed=0, std=0.3):
  """Random parameters drawn in NumPy (XLA's CPU compile of `model.init` takes seconds).

  A large `std` spreads the logits, so that argmax is never decided by rounding.
  """
  args = (jax.ShapeDtypeStruct((1, 8), jnp.int32), jax.ShapeDtypeStruct((1, 8), jnp.int32))
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)['params'])
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    noise = rng.standard_normal(shape.shape).astype(np.float32)
    is_scale = jax.tree_util.keystr(path).endswith("['scale']")
    return jnp.asarray(1 + 0.1 * noise if is_scale else std * noise)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def t5():
  model = models.build_model(tiny_config())
  return model, init_params(model), jax.jit(model.apply)


def tokens(shape, seed):
  return np.random.default_rng(seed).integers(4, VOCAB, shape).astype(np.int32)


# ---------------------------------------------------------------- relative position buckets


def mesh_tf_bucket(relative_position, bidirectional, num_buckets, max_distance):
  """Mesh TensorFlow's `_relative_position_bucket` (T5's original), one integer at a time."""
  ret, n = 0, -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0) * num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return ret + n
  val = max_exact + int(math.log(n / max_exact + np.finfo(np.float32).eps)
                        / math.log(max_distance / max_exact) * (num_buckets - max_exact))
  return ret + min(val, num_buckets - 1)


# (key - query) -> bucket, worked by hand from T5's formula for 32 buckets, max distance 128.
BIDIRECTIONAL_32 = {0: 0, -1: 1, -7: 7, -8: 8, -11: 8, -12: 9, -16: 10, -32: 12, -64: 14,
                    -127: 15, -128: 15, -1000: 15, 1: 17, 7: 23, 8: 24, 16: 26, 1000: 31}
UNIDIRECTIONAL_32 = {5: 0, 1: 0, 0: 0, -1: 1, -15: 15, -16: 16, -32: 21, -64: 26, -100: 30,
                     -127: 31, -128: 31, -500: 31}


@pytest.mark.parametrize('bidirectional,expected', [(True, BIDIRECTIONAL_32),
                                                    (False, UNIDIRECTIONAL_32)])
def test_buckets_match_hand_computed_t5_values(bidirectional, expected):
  rel = np.array(list(expected))
  got = relative_bias.relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32,
                                               max_distance=128)
  np.testing.assert_array_equal(np.asarray(got), list(expected.values()))


@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 16), (64, 256)])
@pytest.mark.parametrize('bidirectional', [True, False])
def test_buckets_match_mesh_tensorflow(num_buckets, max_distance, bidirectional):
  rel = np.arange(-600, 601)
  got = relative_bias.relative_position_bucket(rel, bidirectional=bidirectional,
                                               num_buckets=num_buckets, max_distance=max_distance)
  expected = [mesh_tf_bucket(int(r), bidirectional, num_buckets, max_distance) for r in rel]
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_bias_module_looks_up_its_table_for_decode_offsets():
  module = relative_bias.RelativePositionBias(num_heads=3, num_buckets=8, max_distance=16,
                                              bidirectional=False)
  variables = module.init(jax.random.key(0), jnp.arange(4), jnp.arange(4))
  table = np.asarray(nn.meta.unbox(variables['params'])['embedding'])
  # A decode step: one query at cache index 5 against 9 key slots.
  bias = np.asarray(module.apply(variables, jnp.array([5]), jnp.arange(9)))
  assert bias.shape == (3, 1, 9)
  buckets = [mesh_tf_bucket(s - 5, False, 8, 16) for s in range(9)]
  np.testing.assert_allclose(bias[:, 0, :], table[buckets].T)


# ---------------------------------------------------------------- masks and packing


# Every test below runs one of three compiled programs: logits for (ENC, DEC) inputs without
# segment ids, the same with segment ids, and the encoder alone.
ENC, DEC = (2, 14), (2, 11)


def test_logits_are_float32_and_shaped(t5):
  _, params, apply = t5
  logits = apply({'params': params}, tokens(ENC, 0), tokens(DEC, 1))
  assert logits.shape == DEC + (VOCAB,) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_decoder_is_causal(t5):
  _, params, apply = t5
  enc, dec = tokens(ENC, 0), tokens(DEC, 1)
  base = np.asarray(apply({'params': params}, enc, dec))
  changed = dec.copy()
  changed[:, 5] = (changed[:, 5] + 1) % VOCAB
  after = np.asarray(apply({'params': params}, enc, changed))
  np.testing.assert_allclose(after[:, :5], base[:, :5], atol=1e-6)
  assert np.abs(after[:, 5:] - base[:, 5:]).max(axis=-1).min() > 1e-4


def test_encoder_is_bidirectional(t5):
  model, params, _ = t5
  encode = jax.jit(lambda p, e: model.apply({'params': p}, e, method='encode'))
  enc = tokens(ENC, 0)
  base = np.asarray(encode(params, enc))
  changed = enc.copy()
  changed[:, 7] = (changed[:, 7] + 1) % VOCAB
  after = np.asarray(encode(params, changed))
  # Every position, including those before the change, sees it.
  assert np.abs(after - base).max(axis=-1).min() > 1e-4


def test_packed_examples_match_separate_runs(t5):
  """Two examples packed in a row give each example's own logits, cross-attention included."""
  _, params, apply = t5
  enc_a, enc_b = tokens((2, 6), 0), tokens((2, 5), 1)
  dec_a, dec_b = tokens((2, 4), 2), tokens((2, 5), 3)
  enc = np.concatenate([enc_a, enc_b, np.zeros((2, 3), np.int32)], axis=1)
  dec = np.concatenate([dec_a, dec_b, np.zeros((2, 2), np.int32)], axis=1)
  enc_seg = np.tile(np.array([1] * 6 + [2] * 5 + [0] * 3, np.int32), (2, 1))
  dec_seg = np.tile(np.array([1] * 4 + [2] * 5 + [0] * 2, np.int32), (2, 1))
  packed = np.asarray(apply({'params': params}, enc, dec, enc_seg, dec_seg))
  # Each example alone, right-padded: encoder padding (token 0) is masked, and decoder padding
  # comes after every real token of a causal decoder.
  pad = lambda x, shape: np.pad(x, ((0, 0), (0, shape[1] - x.shape[1])))
  alone_a = np.asarray(apply({'params': params}, pad(enc_a, ENC), pad(dec_a, DEC)))
  alone_b = np.asarray(apply({'params': params}, pad(enc_b, ENC), pad(dec_b, DEC)))
  np.testing.assert_allclose(packed[:, :4], alone_a[:, :4], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(packed[:, 4:9], alone_b[:, :5], atol=1e-4, rtol=1e-4)


def test_encoder_padding_is_invisible(t5):
  """Segment id 0 masks encoder tokens whatever they are; without ids, token 0 is padding."""
  _, params, apply = t5
  enc, dec = tokens(ENC, 0), tokens(DEC, 1)
  enc_seg = np.ones(ENC, np.int32)
  enc_seg[:, 9:] = 0
  zero_padded = np.where(enc_seg == 1, enc, 0)
  expected = np.asarray(apply({'params': params}, zero_padded, dec))
  got = apply({'params': params}, enc, dec, enc_seg, np.ones(DEC, np.int32))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  # ... and the padding did matter before it was masked.
  assert np.abs(np.asarray(apply({'params': params}, enc, dec)) - expected).max() > 1e-3


def test_rope_and_tied_t5_1_0_output_build():
  model = models.build_model(tiny_config(position='rope', tie_embeddings=True,
                                         activation='relu'))
  params = init_params(model)
  assert 'unembed' not in params and 'encoder_relative_bias' not in params
  logits = jax.jit(model.apply)({'params': params}, tokens((2, 6), 0), tokens((2, 5), 1))
  assert logits.shape == (2, 5, VOCAB) and np.all(np.isfinite(logits))


# ---------------------------------------------------------------- sharding and training


class SentinelTokenizer(helpers.SyntheticTokenizer):
  """PatternDataset's tokenizer with T5 sentinels at the top of the vocabulary, as T5 lays out."""
  num_sentinels = 16

  def sentinel_id(self, i):
    return self.vocab_size - 1 - i


def pattern_dataset():
  dataset = helpers.PatternDataset(VOCAB - SentinelTokenizer.num_sentinels)
  dataset.tokenizer = SentinelTokenizer(VOCAB)
  return dataset


LAYOUTS = {
    'single': dict(data=1, fsdp=1, tensor=1, devices=1),
    'data8': dict(data=8, fsdp=1, tensor=1, devices=8),
    'fsdp8': dict(data=1, fsdp=8, tensor=1, devices=8),
    'data2_fsdp2_tensor2': dict(data=2, fsdp=2, tensor=2, devices=8),
}


def sharding_config(**overrides):
  """helpers.tiny_config as a 1+1-layer T5 v1.1 shape trained by span corruption."""
  return helpers.tiny_config(**{
      'model.family': 'encoder_decoder', 'objective.name': 'span_corruption',
      'model.position': 'relative', 'model.attention_scale': 1.0, 'model.activation': 'geglu',
      'model.tie_embeddings': False, 'model.num_kv_heads': 0, 'model.d_model': 32,
      'model.num_layers': 1, 'model.dtype': 'float32', **overrides})


def sharded_params(run):
  """The same NumPy-drawn parameters for every layout, placed in the run's shards.

  (Compiling the trainer's random initialisation costs more than everything else here.)
  """
  return jax.device_put(init_params(run.model, std=0.05), run.state_shardings.params)


def loss_and_grads(layout):
  spec = LAYOUTS[layout]
  config = sharding_config(**{'mesh.data': spec['data'], 'mesh.fsdp': spec['fsdp'],
                              'mesh.tensor': spec['tensor']})
  run = trainer.build_run(config, devices=jax.devices()[:spec['devices']])
  params = sharded_params(run)
  value, grads = helpers.batch_loss_and_grads(run, params, pattern_dataset())
  return value, grads, params


@pytest.mark.slow
def test_layouts_match_single_device():
  ref_loss, ref_grads, _ = loss_and_grads('single')
  assert 4.0 < ref_loss < 6.0  # about ln(128) at initialisation
  for layout in ('data8', 'fsdp8', 'data2_fsdp2_tensor2'):
    value, grads, params = loss_and_grads(layout)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-5, err_msg=layout)
    helpers.assert_grads_close(grads, ref_grads, label=layout)
  # The last layout really shards: cross-attention [embed, heads, head_dim] over fsdp and tensor.
  query = params['decoder']['layer_0']['cross']['query']
  assert query.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor', None)
  assert query.addressable_shards[0].data.shape == (16, 2, 8)


def test_training_reduces_the_loss():
  """The trainer's step, batches and span corruption, on a learnable corpus."""
  config = sharding_config(**{'train.steps': 30, 'train.lr': 1e-2, 'train.warmup_steps': 4,
                              'mesh.data': 1})
  run = trainer.build_run(config, devices=jax.devices()[:1])
  params = sharded_params(run)
  state = jax.device_put(trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                            opt_state=run.tx.init(params)),
                         run.state_shardings)
  train_step, dataset = trainer.make_train_step(run), pattern_dataset()
  losses = []
  for step in range(config.train.steps):
    batch = trainer.device_batch(run, trainer.host_train_batch(run, dataset, step))
    state, metrics = train_step(state, batch)
    losses.append(float(metrics['loss']))
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert last < 0.75 * first, losses
