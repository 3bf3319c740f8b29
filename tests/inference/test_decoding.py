"""Cached decoding against the full forward pass, the samplers' distributions, and the CLI path."""

from __future__ import annotations

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config_lib, models
from research.errors import UserError
from research.inference import decoding

VOCAB = 64


def tiny_config(**model_fields):
  c = config_lib.base_config()
  c.data.seq_len = 32
  c.data.vocab_size = VOCAB
  c.model.d_model = 32
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.dtype = 'float32'
  for name, value in model_fields.items():
    c.model[name] = value
  return config_lib.finalize(c)


def init_params(model, seed=0, std=0.3):
  """Random parameters drawn in NumPy: XLA's CPU compile of `model.init` takes seconds.

  A large `std` spreads the logits, so that argmax is never decided by rounding.
  """
  tokens_BT = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens_BT)['params'])
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    noise = rng.standard_normal(shape.shape).astype(np.float32)
    is_scale = jax.tree_util.keystr(path).endswith("['scale']")
    return jnp.asarray(1 + 0.1 * noise if is_scale else std * noise)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def full_logits(model, params, tokens_BT):
  return np.asarray(jax.jit(model.apply)({'params': params}, tokens_BT))


# Two rows with different prompts, and two copies of one prompt. Tests share these shapes and
# the sampling settings below, so most of them reuse one compiled decoder.
PROMPT_BP = np.array([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], np.int32)
SAME_PROMPT_BP = np.tile(PROMPT_BP[:1], (2, 1))
N = 12
SAMPLED = dict(max_new_tokens=N, temperature=1.0)
GREEDY = dict(max_new_tokens=N, temperature=0.0)


@pytest.fixture(scope='module')
def rope():
  model = models.build_model(tiny_config())
  return model, init_params(model)


def check_against_full_forward(model, params, prompt_BP, tokens_BN, step_logits_BNV):
  """The logits each token was drawn from equal the full model's at the position before it."""
  tokens_BN, step_logits_BNV = np.asarray(tokens_BN), np.asarray(step_logits_BNV)
  full_BTV = full_logits(model, params, np.concatenate([prompt_BP, tokens_BN], axis=1))
  p = prompt_BP.shape[1]
  full_BNV = full_BTV[:, p - 1:-1]  # position t predicts token t + 1
  np.testing.assert_allclose(step_logits_BNV, full_BNV, atol=1e-4, rtol=1e-4)
  return full_BNV


@pytest.mark.parametrize('position,num_kv_heads,scan_layers', [
    ('rope', 2, False),
    ('learned', 2, False),
    ('rope', 2, True),
    ('sinusoidal', 1, True),
])
def test_cached_logits_match_full_forward(position, num_kv_heads, scan_layers):
  model = models.build_model(tiny_config(position=position, num_kv_heads=num_kv_heads,
                                         scan_layers=scan_layers))
  params = init_params(model)
  # Sampled (not greedy) tokens: a random-init model's greedy continuation often repeats one
  # token, which would hide cache-slot or position errors.
  tokens_BN, logits_BNV = decoding.generate_with_logits(model, params, PROMPT_BP,
                                                        jax.random.key(0), **SAMPLED)
  assert tokens_BN.shape == (2, N) and tokens_BN.dtype == jnp.int32
  assert len(set(np.asarray(tokens_BN[0]).tolist())) > 2
  check_against_full_forward(model, params, PROMPT_BP, tokens_BN, logits_BNV)


def test_greedy_tokens_are_argmax_of_full_forward(rope):
  model, params = rope
  tokens_BN, logits_BNV = decoding.generate_with_logits(model, params, PROMPT_BP,
                                                        jax.random.key(0), **GREEDY)
  full_BNV = check_against_full_forward(model, params, PROMPT_BP, tokens_BN, logits_BNV)
  np.testing.assert_array_equal(tokens_BN, full_BNV.argmax(-1))


def test_scanned_cache_is_stacked_over_layers():
  model = models.build_model(tiny_config(scan_layers=True))
  cache = decoding.init_cache(model.clone(decode=True), 3, 17)
  leaves = jax.tree_util.tree_leaves_with_path(cache)
  shapes = {jax.tree_util.keystr(path).split("'")[-2]: leaf.shape for path, leaf in leaves}
  assert shapes == {'key': (2, 3, 17, 2, 8), 'value': (2, 3, 17, 2, 8), 'index': (2,),
                    'segment_ids': (2, 3, 17), 'token_index': (2, 3, 17)}


def test_sampling_reproducible_and_rows_independent(rope):
  model, params = rope

  def run(seed):
    tokens_BN, _ = decoding.generate_with_logits(model, params, SAME_PROMPT_BP,
                                                 jax.random.key(seed), **SAMPLED)
    return np.asarray(tokens_BN)

  a_BN, b_BN, c_BN = run(3), run(3), run(4)
  np.testing.assert_array_equal(a_BN, b_BN)
  assert (a_BN != c_BN).any()
  assert (a_BN[0] != a_BN[1]).any()  # one prompt, replicated: different samples per row


def test_eos_row_stays_eos(rope):
  model, params = rope
  rng = jax.random.key(1)
  free_BN, _ = decoding.generate_with_logits(model, params, PROMPT_BP, rng, **SAMPLED)
  free_BN = np.asarray(free_BN)
  eos = int(free_BN[0, 4])
  got_BN, _ = decoding.generate_with_logits(model, params, PROMPT_BP, rng, eos_id=eos, **SAMPLED)
  # Same key, same logits: rows agree with the free run up to their first eos, then stay eos.
  expected_BN = free_BN.copy()
  for row in expected_BN:
    hits = np.flatnonzero(row == eos)
    if hits.size:
      row[hits[0]:] = eos
  np.testing.assert_array_equal(got_BN, expected_BN)
  assert (got_BN[0, 4:] == eos).all()
  assert (expected_BN != free_BN).any()  # some row really went on past its eos


def test_early_stop_when_every_row_is_done(rope):
  model, params = rope
  greedy_BN, _ = decoding.generate_with_logits(model, params, SAME_PROMPT_BP, jax.random.key(0),
                                               **GREEDY)
  eos = int(greedy_BN[0, 0])
  tokens_BN, logits_BNV = decoding.generate_with_logits(
      model, params, SAME_PROMPT_BP, jax.random.key(0), eos_id=eos, **GREEDY)
  np.testing.assert_array_equal(tokens_BN, np.full((2, N), eos))
  assert np.abs(np.asarray(logits_BNV[:, 1:])).max() == 0  # the loop never ran a step


def test_length_and_argument_errors(rope):
  learned = models.build_model(tiny_config(position='learned'))  # max_len = seq_len = 32
  params = init_params(learned)
  rng = jax.random.key(0)
  with pytest.raises(UserError, match='more than the model context'):
    decoding.generate(learned, params, np.zeros((1, 33), np.int32), rng, max_new_tokens=1)
  with pytest.raises(UserError, match='use at most 27'):
    decoding.generate(learned, params, PROMPT_BP, rng, max_new_tokens=28)
  with pytest.raises(UserError, match='max_new_tokens=0'):
    decoding.generate(learned, params, PROMPT_BP, rng, max_new_tokens=0)
  with pytest.raises(UserError, match='empty'):
    decoding.generate(learned, params, np.zeros((1, 0), np.int32), rng, max_new_tokens=1)
  with pytest.raises(UserError, match='top_p'):
    decoding.sample_logits(jnp.zeros((1, 4)), rng, temperature=1.0, top_p=0.0)
  with pytest.raises(UserError, match='temperature'):
    decoding.sample_logits(jnp.zeros((1, 4)), rng, temperature=-1.0)
  # RoPE has no table: the continuation may run past the training length (32).
  model, params = rope
  tokens_BN = decoding.generate(model, params, PROMPT_BP, rng, max_new_tokens=40)
  assert tokens_BN.shape == (2, 40) and tokens_BN.dtype == jnp.int32


# --- sample_logits -------------------------------------------------------------------------------

LOGITS_V = np.log(np.array([0.35, 0.25, 0.15, 0.1, 0.08, 0.04, 0.02, 0.01], np.float32))
NUM_DRAWS = 40_000


def draw(temperature, top_k=0, top_p=1.0, seed=0):
  logits_BV = jnp.broadcast_to(jnp.asarray(LOGITS_V), (NUM_DRAWS, LOGITS_V.size))
  fn = jax.jit(lambda l, r: decoding.sample_logits(l, r, temperature=temperature, top_k=top_k,
                                                    top_p=top_p))
  return np.asarray(fn(logits_BV, jax.random.key(seed)))


def frequencies(tokens):
  return np.bincount(tokens, minlength=LOGITS_V.size) / tokens.size


def test_greedy_settings_are_argmax():
  logits_BV = jax.random.normal(jax.random.key(0), (16, 50)) * 3
  argmax_B = np.asarray(jnp.argmax(logits_BV, -1))
  rng = jax.random.key(1)
  np.testing.assert_array_equal(decoding.sample_logits(logits_BV, rng, temperature=0.0),
                                argmax_B)
  for temperature in (0.5, 1.0, 10.0):
    np.testing.assert_array_equal(
        decoding.sample_logits(logits_BV, rng, temperature=temperature, top_k=1), argmax_B)
    np.testing.assert_array_equal(
        decoding.sample_logits(logits_BV, rng, temperature=temperature, top_p=1e-6), argmax_B)


@pytest.mark.parametrize('temperature', [1.0, 0.7])
def test_frequencies_match_softmax(temperature):
  expected = np.asarray(jax.nn.softmax(LOGITS_V / temperature))
  np.testing.assert_allclose(frequencies(draw(temperature)), expected, atol=0.01)


def test_top_k_stays_in_the_top_k_and_renormalises():
  tokens = draw(1.0, top_k=3)
  assert set(np.unique(tokens)) == {0, 1, 2}
  p = np.exp(LOGITS_V[:3]) / np.exp(LOGITS_V[:3]).sum()
  np.testing.assert_allclose(frequencies(tokens)[:3], p, atol=0.01)


@pytest.mark.parametrize('top_p,kept', [(0.3, 1), (0.5, 2), (0.59, 2), (0.61, 3), (0.9, 5)])
def test_top_p_keeps_the_nucleus(top_p, kept):
  # Cumulative mass 0.35, 0.60, 0.75, 0.85, 0.93, ...: the nucleus is the shortest prefix whose
  # mass reaches top_p.
  tokens = draw(1.0, top_p=top_p)
  assert set(np.unique(tokens)) == set(range(kept))
  p = np.exp(LOGITS_V[:kept]) / np.exp(LOGITS_V[:kept]).sum()
  np.testing.assert_allclose(frequencies(tokens)[:kept], p, atol=0.01)


def test_top_k_then_top_p():
  # top-k=4 renormalises to 0.41, 0.29, 0.18, 0.12; top-p=0.75 then keeps three.
  tokens = draw(1.0, top_k=4, top_p=0.75)
  assert set(np.unique(tokens)) == {0, 1, 2}



def test_filter_logits_is_the_distribution_sampled():
  # top-k=4 renormalises to 0.41, 0.29, 0.18, 0.12; top-p=0.75 then keeps three.
  probs_V = np.asarray(jax.nn.softmax(decoding.filter_logits(LOGITS_V[None], temperature=1.0,
                                                             top_k=4, top_p=0.75)[0]))
  kept = np.exp(LOGITS_V[:3]) / np.exp(LOGITS_V[:3]).sum()
  np.testing.assert_allclose(probs_V[:3], kept, rtol=1e-5)
  assert probs_V[3:].max() == 0.0
  hot_V = np.asarray(decoding.filter_logits(LOGITS_V[None], temperature=2.0)[0])
  np.testing.assert_allclose(hot_V, np.asarray(LOGITS_V) / 2.0, rtol=1e-6)
  with pytest.raises(UserError, match='greedy'):
    decoding.filter_logits(LOGITS_V[None], temperature=0.0)

# --- research.sample -----------------------------------------------------------------------------

TEXT = ('ROMEO: But soft, what light through yonder window breaks?\n'
        'JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n') * 20


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A run directory as research.train leaves it: config.json, tokenizer.model, a checkpoint."""
  from research.data import pipeline, tokenizer as tokenizer_lib
  from research.training import checkpointing, trainer

  path = str(tmp_path_factory.mktemp('run'))
  tokenizer = tokenizer_lib.train_tokenizer(
      [TEXT], 80, os.path.join(path, pipeline.WORKDIR_TOKENIZER), num_sentinels=0,
      byte_fallback=False)
  config = tiny_config(position='learned')
  config.data.vocab_size = config.model.vocab_size = tokenizer.vocab_size
  config.train.batch_size = 8
  config_lib.save_config(config, os.path.join(path, 'config.json'))
  run = trainer.build_run(config)
  model = run.eval_model
  manager = checkpointing.make_manager(path, keep=2, async_save=False)
  for step in (1, 2):  # different parameters per step, to tell the checkpoints apart
    params = init_params(model, seed=step)
    state = trainer.TrainState(step=jnp.int32(step), params=params, opt_state=run.tx.init(params))
    checkpointing.save(manager, step, jax.device_put(state, run.state_shardings))
  manager.wait_until_finished()
  manager.close()
  return path


def test_sample_returns_prompt_plus_continuation(workdir):
  from research import sample as sample_lib

  # One setting throughout, so that every call reuses one compiled decoder.
  kwargs = dict(max_new_tokens=10, temperature=0.8, top_k=0, top_p=0.95, seed=0, num_samples=2)
  latest = sample_lib.sample(workdir, 'ROMEO:', **kwargs)
  assert len(latest) == 2 and all(t.startswith('ROMEO:') and len(t) > 6 for t in latest)
  assert latest[0] != latest[1]
  assert latest == sample_lib.sample(workdir, 'ROMEO:', step=2, **kwargs)
  assert latest != sample_lib.sample(workdir, 'ROMEO:', step=1, **kwargs)


def test_sample_user_errors(workdir, tmp_path):
  from research import sample as sample_lib

  kwargs = dict(max_new_tokens=10, temperature=0.8, top_k=0, top_p=0.95, seed=0)
  with pytest.raises(UserError, match='run research.train'):
    sample_lib.sample(str(tmp_path), 'ROMEO:', **kwargs)
  with pytest.raises(UserError, match='empty'):
    sample_lib.sample(workdir, '', **kwargs)
  with pytest.raises(UserError, match='more than the model context'):
    sample_lib.sample(workdir, 'ROMEO: ' * 40, **kwargs)
  with pytest.raises(UserError, match='max_new_tokens'):
    sample_lib.sample(workdir, 'ROMEO:', **dict(kwargs, max_new_tokens=0))
  with pytest.raises(UserError, match='no such checkpoint'):
    sample_lib.sample(workdir, 'ROMEO:', step=7, **kwargs)
  for name in ('config.json', 'tokenizer.model'):
    shutil.copy(os.path.join(workdir, name), tmp_path)
  os.mkdir(tmp_path / 'checkpoints')
  with pytest.raises(UserError, match='holds no checkpoint'):
    sample_lib.sample(str(tmp_path), 'ROMEO:', **kwargs)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['position'] == 'learned'
