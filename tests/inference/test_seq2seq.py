"""Encoder-decoder inference: cached decoding against the full forward pass, and beam search."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from research import models
from research.errors import UserError
from research.inference import seq2seq
from tests.models.test_encoder_decoder import VOCAB, init_params, tiny_config

N = 8
# Row 0 is right-padded with 0 (the encoder masks it); row 1 fills the input.
INPUTS_BS = np.array([[5, 9, 17, 33, 60, 7, 0, 0, 0], [11, 12, 40, 41, 90, 3, 8, 77, 20]],
                     np.int32)


@pytest.fixture(scope='module')
def t5():
  model = models.build_model(tiny_config())
  return model, init_params(model)


@pytest.fixture(scope='module')
def full_forward(t5):
  """Teacher-forced logits_BTV of target tokens_BN (the decoder reads start, t_0, ..., t_N-2)."""
  model, params = t5
  apply = jax.jit(model.apply)

  def run(inputs_BS, tokens_BN):
    decoder_in = np.concatenate([np.zeros((len(tokens_BN), 1), np.int32), tokens_BN[:, :-1]], 1)
    return np.asarray(apply({'params': params}, inputs_BS, decoder_in))

  return run


def log_prob_and_length(logits_NV, tokens_N, eos_id):
  """A target's log-probability up to and including its first eos, and its length."""
  logprobs_NV = jax.nn.log_softmax(logits_NV)
  ends = np.flatnonzero(tokens_N == eos_id) if eos_id is not None else []
  length = ends[0] + 1 if len(ends) else len(tokens_N)
  return float(sum(logprobs_NV[i, tokens_N[i]] for i in range(length))), length


def score(logits_NV, tokens_N, eos_id, alpha):
  logprob, length = log_prob_and_length(logits_NV, tokens_N, eos_id)
  return logprob / ((5 + length) / 6) ** alpha


@pytest.fixture(scope='module')
def greedy(t5):
  model, params = t5
  tokens, logits = seq2seq.generate_with_logits(model, params, INPUTS_BS, jax.random.key(0),
                                                max_new_tokens=N, temperature=0.0)
  return np.asarray(tokens), np.asarray(logits)


def test_cached_decoding_matches_the_full_forward(greedy, full_forward):
  tokens, step_logits = greedy
  full = full_forward(INPUTS_BS, tokens)
  np.testing.assert_allclose(step_logits, full, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(tokens, full.argmax(-1))


def test_padding_is_masked(t5, greedy):
  """Row 0's padding, filled with other tokens but marked as segment 0, changes nothing."""
  model, params = t5
  segment_ids = np.ones_like(INPUTS_BS)
  segment_ids[0, 6:] = 0
  noisy = INPUTS_BS.copy()
  noisy[0, 6:] = [99, 98, 97]
  out = seq2seq.generate(model, params, noisy, jax.random.key(0), max_new_tokens=N,
                         temperature=0.0, encoder_segment_ids_BS=segment_ids)
  np.testing.assert_array_equal(np.asarray(out), greedy[0])


def test_eos_ends_a_row(t5, greedy):
  model, params = t5
  tokens = greedy[0]
  eos = int(tokens[0, 2])  # row 0 emits it at step 2 (or earlier)
  out = np.asarray(seq2seq.generate(model, params, INPUTS_BS, jax.random.key(0),
                                    max_new_tokens=N, temperature=0.0, eos_id=eos))
  first = np.argmax(tokens[0] == eos)
  np.testing.assert_array_equal(out[0, :first + 1], tokens[0, :first + 1])
  assert np.all(out[0, first:] == eos)


def test_beam_size_one_is_greedy(t5, greedy):
  model, params = t5
  tokens, scores = seq2seq.beam_search(model, params, INPUTS_BS, beam_size=1, max_new_tokens=N,
                                       eos_id=None, length_penalty=0.6)
  np.testing.assert_array_equal(np.asarray(tokens)[:, 0], greedy[0])
  assert np.asarray(scores).shape == (2, 1)


@pytest.fixture(scope='module')
def eos_id(greedy):
  """A token greedy decoding emits mid-way in row 1 (so hypotheses finish at several lengths)."""
  return int(greedy[0][1, 3])


def test_beam_search_scores_are_true_and_beat_greedy(t5, greedy, full_forward, eos_id):
  model, params = t5
  alpha = 0.6
  tokens, scores = seq2seq.beam_search(model, params, INPUTS_BS, beam_size=4, max_new_tokens=N,
                                       eos_id=eos_id, length_penalty=alpha)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert tokens.shape == (2, 4, N) and scores.shape == (2, 4)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
  greedy_tokens = np.asarray(seq2seq.generate(model, params, INPUTS_BS, jax.random.key(0),
                                              max_new_tokens=N, temperature=0.0, eos_id=eos_id))
  greedy_logits = full_forward(INPUTS_BS, greedy_tokens)
  for b in range(2):
    # Every reported score is the beam's true length-normalised log-probability under the full
    # forward pass: the cache followed each hypothesis through every reordering.
    beam_logits = full_forward(np.repeat(INPUTS_BS[b:b + 1], 4, 0), tokens[b])
    for k in range(4):
      np.testing.assert_allclose(scores[b, k], score(beam_logits[k], tokens[b, k], eos_id, alpha),
                                 atol=1e-4, rtol=1e-4)
    greedy_score = score(greedy_logits[b], greedy_tokens[b], eos_id, alpha)
    assert scores[b, 0] >= greedy_score - 1e-5, (b, scores[b], greedy_score)
  assert len({tuple(t) for t in tokens[1]}) == 4  # distinct hypotheses


def test_finished_beams_stay_finished(t5, greedy, eos_id):
  model, params = t5
  # Row 0's most likely first token is eos: that one-token hypothesis finishes at once, and with
  # alpha = 0 no continuation (whose log-probability only falls) can displace it.
  first_eos = int(greedy[0][0, 0])
  tokens, scores = seq2seq.beam_search(model, params, INPUTS_BS, beam_size=4, max_new_tokens=N,
                                       eos_id=first_eos, length_penalty=0.0)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert np.all(tokens[0, 0] == first_eos)
  step0 = jax.nn.log_softmax(greedy[1][0, 0])
  np.testing.assert_allclose(scores[0, 0], step0[first_eos], atol=1e-5, rtol=1e-5)
  # Every hypothesis is eos-padded after its first eos.
  for hypothesis in tokens.reshape(-1, N):
    ends = np.flatnonzero(hypothesis == first_eos)
    if len(ends):
      assert np.all(hypothesis[ends[0]:] == first_eos)


@pytest.mark.parametrize('kwargs,needle', [
    (dict(beam_size=0), 'beam_size'), (dict(length_penalty=-1.0), 'length_penalty'),
    (dict(max_new_tokens=0), 'max_new_tokens'), (dict(beam_size=VOCAB), 'half the vocabulary')])
def test_bad_beam_settings_are_user_errors(t5, kwargs, needle):
  model, params = t5
  args = {**dict(beam_size=2, max_new_tokens=4, eos_id=1), **kwargs}
  with pytest.raises(UserError, match=needle):
    seq2seq.beam_search(model, params, INPUTS_BS, **args)


def test_recurrent_mixers_decode_and_follow_their_beams():
  """Gated DeltaNet / attention in both stacks (bidirectional in the encoder): cached greedy
  decoding equals the full forward pass, and every beam's score is its true log-probability,
  so the recurrent state and convolution window were reordered with the beams."""
  model = models.build_model(tiny_config(mixer={'pattern': 'gated_deltanet,attention',
                                                'chunk_size': 8, 'conv_width': 4,
                                                'state_dim': 8, 'expand': 2,
                                                'feature_map': 'elu'}))
  params = init_params(model)
  apply = jax.jit(model.apply)

  def full(inputs_BS, tokens_BN):
    decoder_in = np.concatenate([np.zeros((len(tokens_BN), 1), np.int32), tokens_BN[:, :-1]], 1)
    return np.asarray(apply({'params': params}, inputs_BS, decoder_in))

  tokens, logits = seq2seq.generate_with_logits(model, params, INPUTS_BS, jax.random.key(0),
                                                max_new_tokens=N, temperature=0.0)
  tokens = np.asarray(tokens)
  np.testing.assert_allclose(np.asarray(logits), full(INPUTS_BS, tokens), atol=1e-4, rtol=1e-4)
  beams, scores = seq2seq.beam_search(model, params, INPUTS_BS, beam_size=3, max_new_tokens=N,
                                      eos_id=None, length_penalty=0.0)
  beams, scores = np.asarray(beams), np.asarray(scores)
  for b in range(2):
    beam_logits = full(np.repeat(INPUTS_BS[b:b + 1], 3, 0), beams[b])
    for k in range(3):
      np.testing.assert_allclose(scores[b, k], score(beam_logits[k], beams[b, k], None, 0.0),
                                 atol=1e-4, rtol=1e-4)
  assert len({tuple(t) for t in beams[1]}) == 3
