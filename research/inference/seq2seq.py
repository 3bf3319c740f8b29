"""Encoder-decoder inference: sampling and beam search, each one compiled program.

The encoder runs once per call; the decoder then emits one token per step from its KV cache,
starting from T5's decoder start token (pad, 0). Cross-attention reads the fixed encoder outputs.

`generate` draws with `decoding.sample_logits` (greedy, temperature, top-k, top-p). `beam_search`
keeps `beam_size` live hypotheses per row and the best `beam_size` finished ones, scoring
finished hypotheses by log-probability / ((5 + length) / 6) ** alpha (GNMT, Wu et al. 2016, as
in T5X); the cache follows each hypothesis to its parent beam on every step.

Encoder inputs of one batch share one length S; shorter rows are right-padded with 0, which the
encoder masks (pass `encoder_segment_ids_BS` to say otherwise).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.inference.decoding import check_sampling_args, model_variables, sample_logits
from research.models.encoder_decoder import segment_ids_or_default

DECODER_START_ID = 0
NEG_INF = -1.0e7  # finite (T5X): -inf would make 0 * -inf and -inf - -inf NaNs in the bookkeeping


def init_cache(decoder, encoder_tokens_BS, length: int):
  """A zero decoder cache of `length` slots for these encoder inputs (shapes via eval_shape)."""
  b, s = encoder_tokens_BS.shape
  shapes = jax.eval_shape(
      lambda e, d: decoder.init(jax.random.key(0), e, d),
      jax.ShapeDtypeStruct((b, s), jnp.int32), jax.ShapeDtypeStruct((b, length), jnp.int32))
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes['cache'])


def _encode(model, variables, encoder_tokens_BS, encoder_segment_ids_BS):
  return model.apply(variables, encoder_tokens_BS, encoder_segment_ids_BS, method='encode')


def _step(decoder, variables, cache, encoded_BSD, encoder_segment_ids_BS, tokens_B1):
  """One decoder step through the cache: (float32 logits_BV, new cache)."""
  logits_B1V, variables = decoder.apply(
      {**variables, 'cache': cache}, encoded_BSD, tokens_B1, encoder_segment_ids_BS,
      method='decode_logits', mutable=['cache'])
  return logits_B1V[:, 0], variables['cache']


def _check_inputs(encoder_tokens_BS, max_new_tokens: int):
  if not isinstance(encoder_tokens_BS, jax.Array):
    encoder_tokens_BS = np.asarray(encoder_tokens_BS, np.int32)
  if encoder_tokens_BS.ndim != 2 or encoder_tokens_BS.shape[1] == 0:
    raise UserError(f'encoder_tokens_BS has shape {encoder_tokens_BS.shape}: expected '
                    '[batch, input_len] with input_len >= 1')
  if max_new_tokens <= 0:
    raise UserError(f'max_new_tokens={max_new_tokens}: must be a positive integer')
  return encoder_tokens_BS


def _eos_arg(eos_id: int | None):
  return jnp.int32(-1 if eos_id is None else eos_id)


# ----------------------------------------------------------------------------- sampling


@functools.lru_cache(maxsize=64)
def _compiled_generate(model, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                       has_eos: bool, return_logits: bool):
  """jit(params, model_state, encoder_tokens_BS, segment_ids_BS, rng, eos_id) -> (tokens_BN,
  logits_BNV or None). The eos id is an argument, not a setting: a new one compiles nothing."""
  model = model.clone(decode=False, deterministic=True)
  decoder = model.clone(decode=True)
  n = max_new_tokens

  def run(params, model_state, encoder_tokens_BS, encoder_segment_ids_BS, rng, eos_id):
    variables = model_variables(params, model_state)
    b = encoder_tokens_BS.shape[0]
    encoded_BSD = _encode(model, variables, encoder_tokens_BS, encoder_segment_ids_BS)
    cache = init_cache(decoder, encoder_tokens_BS, n)
    # Finished rows keep emitting eos: pre-filling with it lets the loop stop early.
    tokens_BN = jnp.full((b, n), eos_id if has_eos else 0, jnp.int32)
    logits_BNV = None
    if return_logits:
      logits_BNV = jnp.zeros((b, n, model.cfg.vocab_size), jnp.float32)

    def cond(state):
      i, _, _, done_B, _ = state
      return (i < n) & ~jnp.all(done_B)

    def body(state):
      i, cache, tokens_BN, done_B, logits_BNV = state
      prev_B1 = jnp.where(i == 0, DECODER_START_ID,
                          jax.lax.dynamic_slice_in_dim(tokens_BN, jnp.maximum(i - 1, 0), 1, 1))
      logits_BV, cache = _step(decoder, variables, cache, encoded_BSD, encoder_segment_ids_BS,
                               prev_B1)
      token_B = sample_logits(logits_BV, jax.random.fold_in(rng, i), temperature=temperature,
                              top_k=top_k, top_p=top_p)
      if has_eos:
        token_B = jnp.where(done_B, eos_id, token_B)
        done_B = done_B | (token_B == eos_id)
      tokens_BN = jax.lax.dynamic_update_slice_in_dim(tokens_BN, token_B[:, None], i, axis=1)
      if return_logits:
        logits_BNV = jax.lax.dynamic_update_slice_in_dim(logits_BNV, logits_BV[:, None], i, 1)
      return i + 1, cache, tokens_BN, done_B, logits_BNV

    state = (jnp.int32(0), cache, tokens_BN, jnp.zeros((b,), bool), logits_BNV)
    _, _, tokens_BN, _, logits_BNV = jax.lax.while_loop(cond, body, state)
    return tokens_BN, logits_BNV

  return jax.jit(run)


def _generate(model, params, encoder_tokens_BS, rng, *, max_new_tokens, temperature, top_k,
              top_p, eos_id, encoder_segment_ids_BS, return_logits, model_state=None):
  encoder_tokens_BS = _check_inputs(encoder_tokens_BS, max_new_tokens)
  check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
  segment_ids_BS = segment_ids_or_default(jnp.asarray(encoder_tokens_BS, jnp.int32),
                                          encoder_segment_ids_BS, pad_id=0)
  fn = _compiled_generate(model, int(max_new_tokens), float(temperature), int(top_k),
                          float(top_p), eos_id is not None, return_logits)
  return fn(params, model_state or {}, encoder_tokens_BS, segment_ids_BS, rng, _eos_arg(eos_id))


def generate(model, params, encoder_tokens_BS, rng, *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             eos_id: int | None = None, encoder_segment_ids_BS=None, model_state=None):
  """Decodes `max_new_tokens` target tokens per row: int32 tokens_BN (start token excluded).

  Args:
    model: an `EncoderDecoderLM` (e.g. `models.build_model(config)`); its decode-mode clone is
      built here.
    params: its parameters (unboxed).
    encoder_tokens_BS: int inputs, right-padded with 0.
    rng: PRNG key for sampling (unused when temperature is 0).
    max_new_tokens: N, the number of decoder steps.
    temperature, top_k, top_p: see `decoding.sample_logits`; temperature 0 is greedy.
    eos_id: a row that emits it emits only eos afterwards; decoding stops when all rows have.
    encoder_segment_ids_BS: optional encoder segment ids (0 = padding).
    model_state: the checkpoint's non-gradient collections (TrainState.model_state, e.g. the
      aux-free MoE selection bias); {} or None for models without any.
  """
  tokens_BN, _ = _generate(model, params, encoder_tokens_BS, rng, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                           encoder_segment_ids_BS=encoder_segment_ids_BS, return_logits=False,
                           model_state=model_state)
  return tokens_BN


def generate_with_logits(model, params, encoder_tokens_BS, rng, *, max_new_tokens: int,
                         temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                         eos_id: int | None = None, encoder_segment_ids_BS=None,
                         model_state=None):
  """`generate`, also returning the float32 logits_BNV each token was drawn from."""
  return _generate(model, params, encoder_tokens_BS, rng, max_new_tokens=max_new_tokens,
                   temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                   encoder_segment_ids_BS=encoder_segment_ids_BS, return_logits=True,
                   model_state=model_state)


# ----------------------------------------------------------------------------- beam search


def brevity_penalty(length, alpha: float):
  """GNMT's ((5 + length) / 6) ** alpha: divides a log-probability to compare lengths."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x_BK, index_BJ):
  """x[b, index[b, j]] for every row: picks (and reorders) beams along axis 1."""
  return jax.vmap(lambda x, i: x[i])(x_BK, index_BJ)


# Axes after the batch axis of each cached array, by name: attention's keys and values
# [B, S, G, K] and their slots' segment ids and token indices [B, S]; a recurrent mixer's state
# [B, H, K, V], last segment id [B], and convolution window [B, W - 1, ...] with its segment ids
# (research/layers/mixers.py). A scanned stack adds a leading layer axis.
_AFTER_BATCH = {'key': 3, 'value': 3, 'segment_ids': 1, 'token_index': 1, 'state': 3,
                'segment_id': 0, 'window': 3, 'window_segment_ids': 1}


def _gather_cache(cache, flat_index_R):
  """Reorders every cached row to the beams `flat_index_R` (rows of B x K). The cache index
  and slot positions have no batch axis and stay as they are."""
  def gather(path, x):
    after = _AFTER_BATCH.get(getattr(path[-1], 'key', None))
    return x if after is None else jnp.take(x, flat_index_R, axis=x.ndim - 1 - after)
  return jax.tree_util.tree_map_with_path(gather, cache)


@functools.lru_cache(maxsize=64)
def _compiled_beam_search(model, beam_size: int, max_new_tokens: int, has_eos: bool):
  """jit(params, model_state, encoder_tokens_BS, segment_ids_BS, eos_id, alpha) -> (tokens_BKN,
  scores_BK)."""
  model = model.clone(decode=False, deterministic=True)
  decoder = model.clone(decode=True)
  k, n = beam_size, max_new_tokens

  def run(params, model_state, encoder_tokens_BS, encoder_segment_ids_BS, eos_id, alpha):
    variables = model_variables(params, model_state)
    b = encoder_tokens_BS.shape[0]
    fill = eos_id if has_eos else DECODER_START_ID
    encoded_BSD = _encode(model, variables, encoder_tokens_BS, encoder_segment_ids_BS)
    # Every beam of a row reads the same encoder outputs: row r of B x K is beam r % K of r // K.
    encoded_RSD = jnp.repeat(encoded_BSD, k, axis=0)
    segment_ids_RS = jnp.repeat(encoder_segment_ids_BS, k, axis=0)
    cache = init_cache(decoder, jnp.repeat(encoder_tokens_BS, k, axis=0), n)
    # Column 0 holds the start token; generated token i goes to column i + 1.
    seqs_BKN1 = jnp.full((b, k, n + 1), fill, jnp.int32).at[:, :, 0].set(DECODER_START_ID)
    # Only beam 0 is live at first, so that step 0 does not expand K copies of one hypothesis.
    live_logprobs_BK = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
    state = dict(i=jnp.int32(0), cache=cache, live_seqs=seqs_BKN1,
                 live_logprobs=live_logprobs_BK, finished_seqs=seqs_BKN1,
                 finished_scores=jnp.full((b, k), NEG_INF, jnp.float32),
                 finished_flags=jnp.zeros((b, k), bool))

    def cond(s):
      # Stop early once no live hypothesis can beat the worst finished one (alpha >= 0: the
      # log-probability only falls, and the longest length divides it least).
      best_live_B = s['live_logprobs'][:, 0] / brevity_penalty(n, alpha)
      worst_finished_B = jnp.where(s['finished_flags'][:, -1], s['finished_scores'][:, -1],
                                   NEG_INF)
      return (s['i'] < n) & ~jnp.all(worst_finished_B > best_live_B)

    def body(s):
      i = s['i']
      prev_R1 = jax.lax.dynamic_slice_in_dim(s['live_seqs'], i, 1, axis=2).reshape(b * k, 1)
      logits_RV, cache = _step(decoder, variables, s['cache'], encoded_RSD, segment_ids_RS,
                               prev_R1)
      v = logits_RV.shape[-1]
      logprobs_BKV = jax.nn.log_softmax(logits_RV).reshape(b, k, v)
      candidates_BKV = s['live_logprobs'][:, :, None] + logprobs_BKV
      # 2K candidates: at most K of them (one per parent) end in eos, so K stay live.
      top_logprobs_BC, top_index_BC = jax.lax.top_k(candidates_BKV.reshape(b, k * v), 2 * k)
      parent_BC, token_BC = top_index_BC // v, (top_index_BC % v).astype(jnp.int32)
      top_seqs_BCN1 = _gather_beams(s['live_seqs'], parent_BC)
      top_seqs_BCN1 = jax.lax.dynamic_update_slice_in_dim(top_seqs_BCN1, token_BC[:, :, None],
                                                          i + 1, axis=2)
      ends_BC = (token_BC == eos_id) if has_eos else jnp.zeros_like(token_BC, bool)

      live_logprobs_BK, live_pick_BK = jax.lax.top_k(
          jnp.where(ends_BC, NEG_INF, top_logprobs_BC), k)
      live_seqs = _gather_beams(top_seqs_BCN1, live_pick_BK)
      live_parent_BK = _gather_beams(parent_BC, live_pick_BK)
      flat_parent_R = (jnp.arange(b)[:, None] * k + live_parent_BK).reshape(-1)
      cache = _gather_cache(cache, flat_parent_R)

      new_scores_BC = jnp.where(ends_BC, top_logprobs_BC / brevity_penalty(i + 1, alpha), NEG_INF)
      scores = jnp.concatenate([s['finished_scores'], new_scores_BC], axis=1)
      flags = jnp.concatenate([s['finished_flags'], ends_BC], axis=1)
      seqs = jnp.concatenate([s['finished_seqs'], top_seqs_BCN1], axis=1)
      # Finished hypotheses leave only when K better ones have finished.
      finished_scores, pick_BK = jax.lax.top_k(jnp.where(flags, scores, NEG_INF), k)
      return dict(i=i + 1, cache=cache, live_seqs=live_seqs, live_logprobs=live_logprobs_BK,
                  finished_seqs=_gather_beams(seqs, pick_BK), finished_scores=finished_scores,
                  finished_flags=_gather_beams(flags, pick_BK))

    s = jax.lax.while_loop(cond, body, state)
    # Hypotheses that reached max_new_tokens without eos compete with the finished ones.
    live_scores_BK = s['live_logprobs'] / brevity_penalty(s['i'], alpha)
    live_valid_BK = s['live_logprobs'] > NEG_INF / 2
    scores = jnp.concatenate([jnp.where(s['finished_flags'], s['finished_scores'], NEG_INF),
                              jnp.where(live_valid_BK, live_scores_BK, NEG_INF)], axis=1)
    # Prefer a finished hypothesis on a tie: the live ones are listed second.
    scores_BK, pick_BK = jax.lax.top_k(scores, k)
    seqs = jnp.concatenate([s['finished_seqs'], s['live_seqs']], axis=1)
    return _gather_beams(seqs, pick_BK)[:, :, 1:], scores_BK

  return jax.jit(run)


def beam_search(model, params, encoder_tokens_BS, *, beam_size: int, max_new_tokens: int,
                eos_id: int | None = None, length_penalty: float = 0.6,
                encoder_segment_ids_BS=None, model_state=None):
  """The `beam_size` best target sequences per row: (int32 tokens_BKN, float32 scores_BK).

  Beams are sorted best first. A score is the sequence's log-probability divided by
  ((5 + length) / 6) ** length_penalty, its length counting the eos; a sequence that ends with
  eos is padded with eos, and one that reaches `max_new_tokens` without it is scored at that
  length. With eos_id=None nothing finishes early and beam_size=1 is greedy decoding.
  `model_state`: the checkpoint's non-gradient collections (TrainState.model_state, e.g. the
  aux-free MoE selection bias); {} or None for models without any.

  Raises:
    UserError: beam_size < 1, max_new_tokens < 1, a negative length_penalty (early stopping
      assumes longer hypotheses are never penalised more), or malformed inputs.
  """
  encoder_tokens_BS = _check_inputs(encoder_tokens_BS, max_new_tokens)
  if beam_size < 1:
    raise UserError(f'beam_size={beam_size}: must be a positive integer')
  if length_penalty < 0:
    raise UserError(f'length_penalty={length_penalty}: must be >= 0 (GNMT uses 0.6 to 0.7)')
  if beam_size * 2 > model.cfg.vocab_size:
    raise UserError(f'beam_size={beam_size}: must be at most half the vocabulary')
  segment_ids_BS = segment_ids_or_default(jnp.asarray(encoder_tokens_BS, jnp.int32),
                                          encoder_segment_ids_BS, pad_id=0)
  fn = _compiled_beam_search(model, int(beam_size), int(max_new_tokens), eos_id is not None)
  return fn(params, model_state or {}, encoder_tokens_BS, segment_ids_BS, _eos_arg(eos_id),
            jnp.float32(length_penalty))
