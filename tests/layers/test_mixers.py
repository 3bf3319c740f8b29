"""Recurrent sequence mixers (research/layers/recurrent.py, research/layers/mixers.py).

The kernel: the chunkwise-parallel form equals the step-by-step recurrence and a naive quadratic
form written here (forward and gradients, float32, 1e-4) for several chunk sizes, ragged lengths
and packed segments. The layers: packed segments reset the state and the convolution, cached
decoding equals the full forward token by token, the bidirectional forms, sharding, remat and
config errors.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.errors import ConfigError
from research.inference import decoding
from research.layers import attention, mixers, recurrent
from research.training import trainer
from tests import helpers

# ------------------------------------------------------------------------------- the kernel

H, K, V = 2, 4, 3  # V != K: a transposed state would not even have the right shape


def segments(t: int) -> np.ndarray:
  """[3, t] segment ids: three packed segments cut inside chunks and a 0-padding tail (its own
  segment); one segment over the whole row; a cut at 16 (or at t - 1), a chunk edge."""
  a, b, tail = t // 4, t // 3, max(2, t // 8)
  row0 = np.repeat(np.array([1, 2, 3, 0], np.int32), [a, b, t - a - b - tail, tail])
  row1 = np.full(t, 5, np.int32)
  row2 = np.where(np.arange(t) < min(16, t - 1), 7, 9).astype(np.int32)
  return np.stack([row0, row1, row2])


def kernel_inputs(t: int, *, delta: bool, seed: int = 0):
  """(q, k, v, log_alpha, beta) float32 for 3 rows: unit-norm keys for the delta rule (its
  state stays bounded), decays in [-0.7, 0] with some exactly 0, write strengths in (0, 1]."""
  rng = np.random.default_rng(seed)
  q = 0.5 * rng.standard_normal((3, t, H, K))
  k = rng.standard_normal((3, t, H, K))
  k = k / np.linalg.norm(k, axis=-1, keepdims=True) if delta else 0.5 * k
  v = rng.standard_normal((3, t, H, V))
  log_alpha = -rng.uniform(0.0, 0.7, (3, t, H)) * (rng.uniform(size=(3, t, H)) > 0.2)
  beta = rng.uniform(0.05, 1.0, (3, t, H))
  return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v, log_alpha, beta))


def naive(q, k, v, log_alpha, beta, segment_ids, *, delta: bool):
  """The quadratic form over a whole row, written from the recurrence's definition.

  D_ti = exp(sum_{i<j<=t} log_alpha_j) for i <= t in one segment (a run of equal ids), else 0.
  Additive rule: deltas beta_i v_i. Delta rule: delta_t = beta_t (v_t - (alpha_t S)^T k_t), i.e.
  the T x T system (I + A) delta = beta V, A_ti = beta_t D_ti k_t.k_i (i < t). Then
  O = (Q K^T * D) delta and the final state S = sum_i D_Ti k_i delta_i^T.
  """
  seg = np.asarray(segment_ids)
  b, t = seg.shape
  start = np.ones((b, t), bool)
  start[:, 1:] = seg[:, 1:] != seg[:, :-1]
  run = np.cumsum(start, axis=1)
  visible = (run[:, :, None] == run[:, None, :]) & np.tril(np.ones((t, t), bool))
  visible_BHTI = jnp.asarray(visible[:, None])
  cum_BHT = jnp.cumsum(jnp.moveaxis(log_alpha, 2, 1), axis=-1)
  exponent = jnp.where(visible_BHTI, cum_BHT[..., :, None] - cum_BHT[..., None, :], 0.0)
  d_BHTI = jnp.where(visible_BHTI, jnp.exp(exponent), 0.0)
  beta_BHT = jnp.moveaxis(beta, 2, 1)
  v_BHTV = beta_BHT[..., None] * jnp.moveaxis(v, 2, 1)
  if delta:
    kk_BHTI = jnp.einsum('bthk,bihk->bhti', k, k)
    a_BHTI = beta_BHT[..., None] * d_BHTI * kk_BHTI * np.tril(np.ones((t, t)), -1)
    delta_BHTV = jnp.linalg.solve(jnp.eye(t) + a_BHTI, v_BHTV)
  else:
    delta_BHTV = v_BHTV
  scores_BHTI = jnp.einsum('bthk,bihk->bhti', q, k) * d_BHTI
  o_BTHV = jnp.einsum('bhti,bhiv->bthv', scores_BHTI, delta_BHTV)
  state_BHKV = jnp.einsum('bhi,bihk,bhiv->bhkv', d_BHTI[:, :, -1], k, delta_BHTV)
  return o_BTHV, state_BHKV


@functools.lru_cache(maxsize=None)
def value_and_grads(form: str, delta: bool, chunk_size: int = 0):
  """jit(inputs, segment ids, cotangent) -> (o, final state, grads of sum(o * cotangent) with
  respect to q, k, v, log_alpha, beta)."""
  def fn(inputs, segment_ids, cotangent):
    def loss(inputs):
      if form == 'naive':
        o, state = naive(*inputs, segment_ids, delta=delta)
      elif form == 'recurrent':
        o, state = recurrent.recurrent(*inputs, delta=delta, segment_ids_BT=segment_ids)
      else:
        o, state = recurrent.chunked(*inputs, delta=delta, chunk_size=chunk_size,
                                     segment_ids_BT=segment_ids)
      return jnp.sum(o * cotangent), (o, state)
    grads, (o, state) = jax.grad(loss, has_aux=True)(inputs)
    return o, state, grads
  if form == 'naive':  # its masks are NumPy: the segment ids are static
    return lambda inputs, segment_ids, cotangent: jax.jit(
        lambda i, c: fn(i, segment_ids, c))(inputs, cotangent)
  return jax.jit(fn)


def assert_close(got, want, label):
  for name, g, w in zip(('o', 'state', 'q', 'k', 'v', 'log_alpha', 'beta'),
                        jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-4,
                               err_msg=f'{label}: {name}')


@pytest.mark.parametrize('delta', [False, True], ids=['additive', 'delta'])
@pytest.mark.parametrize('t,chunk_sizes', [(37, (1, 4, 8, 16)), (13, (4, 16))],
                         ids=['T37', 'T13'])
def test_chunked_equals_recurrence_and_quadratic_form(t, chunk_sizes, delta):
  """Outputs, final states and the gradients of sum(o * cotangent) for every input, against the
  quadratic form (and at T=37 the recurrence): 37 and 13 tokens fill no chunk of 4, 8 or 16
  evenly, and 16 > 13 is one padded chunk."""
  inputs = kernel_inputs(t, delta=delta, seed=t)
  segment_ids = jnp.asarray(segments(t))
  cotangent = jax.random.normal(jax.random.key(t), (3, t, H, V))
  want = value_and_grads('naive', delta)(inputs, segments(t), cotangent)
  assert np.abs(np.asarray(want[0])).max() > 0.1  # a real signal, not all zeros
  assert np.abs(np.asarray(want[2][3])).max() > 1e-3  # the decays matter
  if t == 37:
    assert_close(value_and_grads('recurrent', delta)(inputs, segment_ids, cotangent), want,
                 'recurrent')
  for chunk_size in chunk_sizes:
    assert_close(value_and_grads('chunked', delta, chunk_size)(inputs, segment_ids, cotangent),
                 want, f'chunk_size={chunk_size}')


@pytest.mark.parametrize('delta', [False, True], ids=['additive', 'delta'])
def test_split_row_continues_from_the_state(delta):
  """Two calls, the second from the first's state and last segment, equal one call: row 0
  continues a segment across the split, row 1 its only one, row 2 starts a new segment right at
  it (the carried state must be dropped). The second half runs chunked and step by step."""
  t, split = 37, 16
  inputs = kernel_inputs(t, delta=delta, seed=t)
  segment_ids = jnp.asarray(segments(t))
  chunked = jax.jit(functools.partial(recurrent.chunked, delta=delta, chunk_size=8))
  step = jax.jit(functools.partial(recurrent.recurrent, delta=delta))
  # The whole row: the program the test above compiled (checked there against the references).
  whole_o, whole_state, _ = value_and_grads('chunked', delta, 8)(
      inputs, segment_ids, jnp.zeros((3, t, H, V)))
  first_o, state = chunked(*(x[:, :split] for x in inputs), segment_ids_BT=segment_ids[:, :split])
  assert np.abs(np.asarray(state)).max() > 0.1
  rest = tuple(x[:, split:] for x in inputs)
  for name, form in (('chunked', chunked), ('recurrent', step)):
    second_o, final_state = form(*rest, segment_ids_BT=segment_ids[:, split:],
                                 initial_state_BHKV=state,
                                 initial_segment_B=segment_ids[:, split - 1])
    np.testing.assert_allclose(np.concatenate([first_o, second_o], axis=1), whole_o,
                               atol=1e-5, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(final_state, whole_state, atol=1e-5, rtol=1e-5, err_msg=name)
  # Without the segment the state continues into row 2's new segment: a different output.
  leaked_o, _ = chunked(*rest, segment_ids_BT=segment_ids[:, split:], initial_state_BHKV=state)
  assert np.abs(np.asarray(leaked_o[2] - whole_o[2, split:])).max() > 1e-3
  np.testing.assert_allclose(leaked_o[:2], whole_o[:2, split:], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- the layers

KINDS = ('linear_attention', 'mamba2', 'gated_deltanet')
LAYER = dict(d_model=16, num_heads=2, head_dim=8)
MIX = mixers.MixerConfig(chunk_size=8, conv_width=4, state_dim=8, expand=2)


def random_params(shapes, seed=0, std=0.3):
  """Parameters drawn in NumPy from eval_shape'd shapes (compiling `init` takes seconds); norm
  scales near 1. A large std spreads logits, so that argmax is never decided by rounding."""
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    noise = rng.standard_normal(shape.shape).astype(np.float32)
    is_scale = jax.tree_util.keystr(path).endswith(("['scale']", "['norm']"))
    return jnp.asarray(1 + 0.1 * noise if is_scale else std * noise)

  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes))


@functools.lru_cache(maxsize=None)
def mixer_layer(kind: str, causal: bool):
  """(params, jit(params, x_BTD, segment_ids_BT) -> y_BTD) of one mixer layer on its own."""
  layer = mixers.make(kind, MIX, **LAYER, init_std=0.02, out_init_std=0.02, dtype=jnp.float32,
                      decode=False, name=None)
  mask = lambda segment_ids_BT: attention.MaskSpec.self_attention(segment_ids_BT, causal=causal)
  x_BTD = jax.ShapeDtypeStruct((1, 8, LAYER['d_model']), jnp.float32)
  shapes = jax.eval_shape(lambda x: layer.init(jax.random.key(0), x, mask(jnp.ones((1, 8)))),
                          x_BTD)['params']
  params = random_params(shapes, seed=len(kind))
  apply = jax.jit(lambda p, x, s: layer.apply({'params': p}, x, mask(s.astype(jnp.int32))))
  return params, apply


def packed_rows(t1: int, t2: int, *, causal: bool, seed: int = 0):
  """(x_BTD, segment_ids_BT): row 0 packs example 1 (t1 tokens) then example 2 (t2); rows 1
  and 2 hold each example with other tokens around it. Causal: each example first in its row,
  padding (segment 0) after; bidirectional: the other slot holds different tokens."""
  rng = np.random.default_rng(seed)
  d, t = LAYER['d_model'], t1 + t2
  ex1, ex2, junk1, junk2 = (rng.standard_normal((n, d)) for n in (t1, t2, t2, t1))
  packed = np.concatenate([ex1, ex2])
  if causal:
    rows = [packed, np.concatenate([ex1, junk1]), np.concatenate([ex2, junk2])]
    segment_ids = [[1] * t1 + [2] * t2, [1] * t1 + [0] * t2, [1] * t2 + [0] * t1]
  else:
    rows = [packed, np.concatenate([ex1, junk1]), np.concatenate([junk2, ex2])]
    segment_ids = [[1] * t1 + [2] * t2] * 3
  return jnp.asarray(np.stack(rows), jnp.float32), jnp.asarray(segment_ids, jnp.int32)


@pytest.mark.parametrize('causal', [True, False], ids=['causal', 'bidirectional'])
@pytest.mark.parametrize('kind', KINDS)
def test_packed_segments_reset_the_state_and_the_convolution(kind, causal):
  t1, t2 = 11, 13  # the boundary falls inside a chunk of 8
  params, apply = mixer_layer(kind, causal)
  x_BTD, segment_ids_BT = packed_rows(t1, t2, causal=causal)
  y_BTD = np.asarray(apply(params, x_BTD, segment_ids_BT))
  alone2 = y_BTD[2, :t2] if causal else y_BTD[2, t1:]
  np.testing.assert_allclose(y_BTD[0, :t1], y_BTD[1, :t1], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(y_BTD[0, t1:], alone2, atol=1e-5, rtol=1e-5)
  # One segment over the same row: example 2 now sees example 1 (the check can fail).
  joined_BTD = np.asarray(apply(params, x_BTD, jnp.ones_like(segment_ids_BT)))
  assert np.abs(joined_BTD[0, t1:] - alone2).max() > 1e-3
  if kind != 'linear_attention':  # the convolution alone, on the first tokens after the cut
    assert np.abs(joined_BTD[0, t1:t1 + 3] - alone2[:3]).max() > 1e-3


def test_bidirectional_linear_attention_is_the_closed_form():
  """phi(q_t) (sum_i phi(k_i) v_i^T) / (phi(q_t) . sum_i phi(k_i)) over each segment, from the
  layer's own parameters (elu + 1 features)."""
  t1, t2 = 11, 13
  params, apply = mixer_layer('linear_attention', False)
  x_BTD, segment_ids_BT = packed_rows(t1, t2, causal=False)
  got_BTD = np.asarray(apply(params, x_BTD, segment_ids_BT))
  p = jax.tree.map(np.asarray, params)
  phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))
  x = np.asarray(x_BTD, np.float64)
  q_BTHK, k_BTHK = (phi(np.einsum('btd,dhk->bthk', x, p[n])) for n in ('query', 'key'))
  v_BTHK = np.einsum('btd,dhk->bthk', x, p['value'])
  want_BTD = np.zeros_like(got_BTD)
  for span in (slice(0, t1), slice(t1, t1 + t2)):
    q, k, v = q_BTHK[:, span], k_BTHK[:, span], v_BTHK[:, span]
    kv_BHKV = np.einsum('bihk,bihv->bhkv', k, v)
    o_BTHV = np.einsum('bthk,bhkv->bthv', q, kv_BHKV)
    o_BTHV /= np.einsum('bthk,bhk->bth', q, k.sum(axis=1))[..., None]
    want_BTD[:, span] = np.einsum('bthv,hvd->btd', o_BTHV, p['out'])
  np.testing.assert_allclose(got_BTD, want_BTD, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('kind', ['mamba2', 'gated_deltanet'])
def test_bidirectional_layer_commutes_with_reversal(kind):
  """The forward and the reversed recurrence over shared weights, summed: reversing a
  one-segment row reverses the output (the convolution included, so each direction must see
  its own past)."""
  params, apply = mixer_layer(kind, False)
  x_BTD, _ = packed_rows(11, 13, causal=False)
  ones_BT = jnp.ones(x_BTD.shape[:2], jnp.int32)
  y_BTD = np.asarray(apply(params, x_BTD, ones_BT))
  flipped_BTD = np.asarray(apply(params, x_BTD[:, ::-1], ones_BT))
  np.testing.assert_allclose(flipped_BTD[:, ::-1], y_BTD, atol=1e-5, rtol=1e-4)
  causal_BTD = np.asarray(mixer_layer(kind, True)[1](params, x_BTD, ones_BT))
  assert np.abs(causal_BTD - y_BTD).max() > 1e-3  # the backward direction contributes


# ------------------------------------------------------------------------------- the models

def model_config(pattern: str, **overrides):
  """helpers.tiny_config, 32 wide over a 64-token vocabulary, with `pattern` as model.mixer."""
  return helpers.tiny_config(**{
      'data.vocab_size': 64, 'model.d_model': 32, 'model.dtype': 'float32',
      'model.mixer.pattern': pattern, 'model.mixer.chunk_size': 8, 'model.mixer.state_dim': 8,
      **overrides})


def model_params(model, seed=0, std=0.3):
  tokens_BT = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  return random_params(jax.eval_shape(model.init, jax.random.key(0), tokens_BT)['params'], seed,
                       std)


# Prompts of 7, 3 and 5 tokens, left-padded into one batch.
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
NEW = 6


@pytest.mark.parametrize('pattern,scan_layers', [
    ('linear_attention', True),
    ('mamba2', False),
    ('gated_deltanet', True),
    ('gated_deltanet,attention', False),
])
def test_cached_decoding_equals_the_full_forward(pattern, scan_layers):
  """Each row's step logits (prefill chunked over the left-padded prompt, then one token at a
  time from the cached state and convolution window) equal the full forward over that row's
  own prompt and continuation, position by position."""
  model = models.build_model(model_config(pattern, **{'model.scan_layers': scan_layers}))
  params = model_params(model)
  prompt_BP, lengths_B = decoding.left_pad(PROMPTS)
  tokens_BN, logits_BNV = decoding.generate_with_logits(
      model, params, prompt_BP, jax.random.key(0), max_new_tokens=NEW, temperature=1.0,
      prompt_lengths_B=lengths_B)
  tokens_BN, logits_BNV = np.asarray(tokens_BN), np.asarray(logits_BNV)
  assert len(set(tokens_BN[0].tolist())) > 2  # sampled, not one repeated token
  # The full forward over each row alone: prompt then continuation, right-padded (causal: the
  # padding after a row's tokens changes none of its logits).
  full_BT = np.zeros((len(PROMPTS), max(lengths_B) + NEW), np.int32)
  for b, prompt in enumerate(PROMPTS):
    full_BT[b, :len(prompt) + NEW] = np.concatenate([prompt, tokens_BN[b]])
  full_BTV = np.asarray(jax.jit(model.apply)({'params': params}, full_BT))
  for b, length in enumerate(lengths_B):
    np.testing.assert_allclose(logits_BNV[b], full_BTV[b, length - 1:length - 1 + NEW],
                               atol=1e-4, rtol=1e-4, err_msg=f'row {b}')


def test_encoder_keeps_packed_examples_apart():
  """A bidirectional stack of recurrent mixers (model.family='encoder'): finite logits, and an
  example's logits do not depend on the example packed next to it."""
  config = model_config('mamba2,gated_deltanet', **{'model.family': 'encoder',
                                                    'objective.name': 'mlm'})
  model = models.build_model(config)
  params = model_params(model)
  rng = np.random.default_rng(0)
  t1, t = 13, 32
  tokens_BT = rng.integers(4, 64, (2, t)).astype(np.int32)
  tokens_BT[1, :t1] = tokens_BT[0, :t1]  # one example, two different neighbours
  segment_ids_BT = np.array([[1] * t1 + [2] * (t - t1)] * 2, np.int32)
  positions_BT = np.array([list(range(t1)) + list(range(t - t1))] * 2, np.int32)
  logits_BTV = np.asarray(jax.jit(model.apply)({'params': params}, tokens_BT, positions_BT,
                                               segment_ids_BT))
  assert np.isfinite(logits_BTV).all()
  np.testing.assert_allclose(logits_BTV[0, :t1], logits_BTV[1, :t1], atol=1e-4, rtol=1e-4)
  assert np.abs(logits_BTV[0, t1:] - logits_BTV[1, t1:]).max() > 1e-2


# ------------------------------------------------------------------ sharding, remat, configs

DATASET = helpers.PatternDataset(64)


def loss_and_grads(devices=1, **overrides):
  """(run, params, loss, grads) of a mamba2 + gated_deltanet decoder on the training batch, its
  parameters placed as the run's mesh shards them (one draw: the same for every mesh)."""
  config = model_config('mamba2,gated_deltanet', **overrides)
  run = trainer.build_run(config, devices=jax.devices()[:devices])
  params = jax.device_put(model_params(run.eval_model, seed=3, std=0.1), run.state_shardings.params)
  loss, grads = helpers.batch_loss_and_grads(run, params, DATASET)
  return run, params, loss, grads


@pytest.fixture(scope='module')
def one_device():
  return loss_and_grads()[2:]


def test_tensor_parallel_equals_one_device(one_device):
  """mesh data=2 x fsdp=2 x tensor=2: the mixers' heads split on 'tensor'; loss and gradients
  as on one device (float32, 1e-5 relative per tensor)."""
  ref_loss, ref_grads = one_device
  _, params, loss, grads = loss_and_grads(8, **{'mesh.data': 2, 'mesh.fsdp': 2,
                                                   'mesh.tensor': 2})
  assert np.isfinite(ref_loss) and ref_loss > 1.0
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  helpers.assert_grads_close(grads, ref_grads, rtol=1e-5, label='data2_fsdp2_tensor2')
  spec = jax.sharding.PartitionSpec
  mamba, deltanet = (params['stack'][f'layer_{i}']['mixer'] for i in range(2))
  # [embed, heads, head_dim] -> [fsdp, tensor, -]; [heads, head_dim, embed] -> [tensor, -, fsdp]
  for name, layer in (('value', mamba), ('gate', mamba), ('query', deltanet), ('key', deltanet)):
    assert tuple(layer[name].sharding.spec)[:2] == ('fsdp', 'tensor'), name
    assert layer[name].addressable_shards[0].data.shape == (
        layer[name].shape[0] // 2, layer[name].shape[1] // 2, layer[name].shape[2]), name
  for layer in (mamba, deltanet):
    assert layer['out'].addressable_shards[0].data.shape == (
        layer['out'].shape[0] // 2, layer['out'].shape[1], layer['out'].shape[2] // 2)
  for name in ('a_log', 'dt_bias', 'skip'):
    assert mamba[name].sharding.spec == spec('tensor'), name
  # Convolution taps and Mamba-2's state entries are named in no rule: replicated.
  assert tuple(mamba['value_conv']['kernel'].sharding.spec)[:2] == (None, 'tensor')
  assert tuple(deltanet['key_conv']['kernel'].sharding.spec)[:2] == (None, 'tensor')
  assert all(axis is None for axis in mamba['key_query_conv']['kernel'].sharding.spec)


def test_full_remat_gives_the_same_gradients(one_device):
  ref_loss, ref_grads = one_device
  run, params, loss, grads = loss_and_grads(**{'model.remat': 'full'})
  tokens_BT = jnp.zeros((1, 8), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p: run.eval_model.apply({'params': p}, tokens_BT))(params)
  assert 'remat' in str(jaxpr)  # the layers really are rematerialised
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  helpers.assert_grads_close(grads, ref_grads, rtol=1e-5, label='remat=full')


@pytest.mark.parametrize('overrides,field,match', [
    ({'model.mixer.pattern': 'foo*2'}, 'model.mixer.pattern', "unknown mixer 'foo'"),
    ({'model.mixer.pattern': 'gated_deltanet*0'}, 'model.mixer.pattern', 'COUNT >= 1'),
    ({'model.mixer.pattern': 'mamba2', 'model.mixer.chunk_size': 24},
     'model.mixer.chunk_size', 'data.seq_len=32'),
    ({'model.mixer.pattern': 'gated_deltanet*3,attention', 'model.mixer.chunk_size': 8,
      'model.scan_layers': True},
     'model.mixer.pattern', 'scan_layers'),
    ({'model.mixer.pattern': 'linear_attention', 'model.mixer.feature_map': 'tanh'},
     'model.mixer.feature_map', 'choose one of'),
    ({'model.mixer.pattern': 'mamba2', 'model.num_heads': 3, 'model.num_kv_heads': 1,
      'model.head_dim': 16, 'model.mixer.expand': 1, 'model.mixer.chunk_size': 8},
     'model.mixer.expand', 'mamba2 splits'),
    ({'model.mixer.conv_width': 0}, 'model.mixer.conv_width', 'positive'),
])
def test_bad_mixer_configs_name_the_field(overrides, field, match):
  with pytest.raises(ConfigError, match=match) as error:
    helpers.tiny_config(**overrides)
  assert error.value.field == field


def test_pattern_is_a_cycle_and_attention_only_needs_no_chunk_divisor():
  assert mixers.parse_pattern(' gated_deltanet * 3 , attention') == (
      ('gated_deltanet',) * 3 + ('attention',))
  cfg = models.transformer_config(
      model_config('mamba2*2,attention', **{'model.num_layers': 5}).model, seq_len=32).mixer
  assert cfg.layer_kinds(5) == ('mamba2', 'mamba2', 'attention', 'mamba2', 'mamba2')
  assert cfg.has_recurrent and not cfg.uniform
  plain = helpers.tiny_config(**{'model.mixer.chunk_size': 24})  # every layer attention
  assert models.transformer_config(plain.model, seq_len=32).mixer.pattern == ('attention',)
