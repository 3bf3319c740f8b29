"""Autoregressive decoding with a KV cache: greedy, temperature, top-k and nucleus (top-p).

`generate` prefills the prompts in one call, then emits one token per step from the cache;
prefill and token loop are one compiled program (`jax.jit`, cached per model and settings).

Prompts of different lengths share a batch left-padded: row b's prompt fills the last L_b of
the P columns of prompt_BP (`prompt_lengths_B`; None: every row is P tokens long). Each row
counts its positions from its own first token (position = column - (P - L_b)), and the
attention cache keeps every slot's segment id (0 on the padding) and token index, so the
padding is invisible to every later query and causality, windows, chunks and rolling caches
apply per row: a row decodes as it would alone. Left padding puts every row's next token in
one column, so each step feeds one [B, 1] column, and the prefill unembeds only the last one.

One program per (batch size, prompt bucket, max_new_tokens, sampling settings): prompts are
padded on the left up to `prompt_bucket(P)` (a multiple of BUCKET), so calls and files whose
longest prompts fall in one bucket share the program. `generate_rows` decodes a list of
prompts of any lengths in such batches (LanguageModel.generate's and research.evaluate's path).

The device loop ends early only when every row has emitted eos. Stop strings are text, which
the host cuts after decoding (`cut_at_stop`, `cut_ids_at_stop`; LanguageModel.generate's
`stop=`). To draw several samples of one prompt, replicate it over the batch
(`research.sample --num_samples` does).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError

_ABSOLUTE_POSITIONS = ('learned', 'sinusoidal')
# Prompt buffers are rounded up to a multiple of this many tokens (see prompt_bucket).
BUCKET = 32


def check_sampling_args(*, temperature: float, top_k: int, top_p: float) -> None:
  """Raises UserError for settings that cannot define a distribution."""
  if temperature < 0:
    raise UserError(f'temperature={temperature}: must be >= 0 (0 is greedy decoding)')
  if top_k < 0:
    raise UserError(f'top_k={top_k}: must be >= 0 (0 keeps every token)')
  if not 0 < top_p <= 1:
    raise UserError(f'top_p={top_p}: must be in (0, 1] (1 keeps every token)')


def _top_k_mask(logits_BV, top_k: int):
  """Keeps the `top_k` largest logits of each row (ties with the k-th are kept too)."""
  kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
  return jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)


def _top_p_mask(logits_BV, top_p: float):
  """Keeps the smallest set of most likely tokens whose probability reaches `top_p`.

  A token is kept when the mass of the tokens strictly more likely than it is below `top_p`, so
  the most likely token always survives and a tiny `top_p` is greedy.
  """
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  # The kept set is a prefix of the sorted row; its last logit is the threshold.
  num_kept_B1 = jnp.maximum(jnp.sum(mass_before_BV < top_p, axis=-1, keepdims=True), 1)
  threshold_B1 = jnp.take_along_axis(sorted_BV, num_kept_B1 - 1, axis=-1)
  return jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)


def sample_logits(logits_BV, rng, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """Draws one token per row: int32 tokens_B.

  Args:
    logits_BV: unnormalised log-probabilities.
    rng: a PRNG key; rows draw independently from it.
    temperature: Python float; 0 is greedy (argmax), else logits are divided by it.
    top_k: Python int; keep only the k most likely tokens (0 = off).
    top_p: Python float; nucleus sampling, keep the most likely tokens up to this mass (1 = off).
      Applied after top-k, on the temperature-scaled distribution.

  The settings are static (Python numbers): they choose the program, so it stays jit-able with
  static shapes.
  """
  check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
  if temperature == 0:
    return jnp.argmax(logits_BV.astype(jnp.float32), axis=-1).astype(jnp.int32)
  logits_BV = filter_logits(logits_BV, temperature=temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def filter_logits(logits_BV, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """The float32 logits `sample_logits` draws from (temperature > 0): divided by the
  temperature, then top-k, then top-p; removed tokens are -inf. softmax of it is the
  distribution sampled (for plots of how each setting reshapes it)."""
  check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
  if temperature == 0:
    raise UserError('temperature=0 is greedy decoding: there is no distribution to filter')
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  if 0 < top_k < logits_BV.shape[-1]:
    logits_BV = _top_k_mask(logits_BV, top_k)
  if top_p < 1:
    logits_BV = _top_p_mask(logits_BV, top_p)
  return logits_BV


def check_length(model, prompt_len: int, max_new_tokens: int) -> None:
  """Raises UserError when the prompt, or prompt plus continuation, cannot fit the model."""
  if prompt_len <= 0:
    raise UserError('the prompt is empty: give at least one token')
  if max_new_tokens <= 0:
    raise UserError(f'max_new_tokens={max_new_tokens}: must be a positive integer')
  cfg = getattr(model, 'cfg', None)
  if cfg is None or cfg.position not in _ABSOLUTE_POSITIONS:
    return  # RoPE and no positions have no table to run off
  if prompt_len > cfg.max_len:
    raise UserError(f'the prompt has {prompt_len} tokens, more than the model context '
                    f'(model.max_len={cfg.max_len}, {cfg.position} positions): shorten it')
  if prompt_len + max_new_tokens > cfg.max_len:
    raise UserError(f'max_new_tokens={max_new_tokens}: the prompt ({prompt_len} tokens) plus '
                    f'the continuation exceeds the model context (model.max_len={cfg.max_len}, '
                    f'{cfg.position} positions): use at most {cfg.max_len - prompt_len}')


def prompt_bucket(prompt_len: int) -> int:
  """Columns of the left-padded prompt buffer for prompts of up to `prompt_len` tokens: the next
  multiple of BUCKET. Padding costs prefill work on at most BUCKET - 1 columns and buys one
  compiled program for every longest prompt in the bucket."""
  return -(-prompt_len // BUCKET) * BUCKET


def init_cache(decoder, batch: int, length: int):
  """A zero cache of `length` slots; its shapes come from `eval_shape`, so nothing is computed.
  Zero segment ids mark every slot empty."""
  tokens_BS = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  shapes = jax.eval_shape(lambda t: decoder.init(jax.random.key(0), t), tokens_BS)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


def model_variables(params, model_state=None) -> dict:
  """{'params': params, **model_state}: what `apply` reads. `model_state` holds the non-gradient
  collections a checkpoint's TrainState.model_state carries (the aux-free MoE selection bias,
  {'moe_state': ...}); without it such a model routes with a bias of 0, not the trained one."""
  return {'params': params, **(model_state or {})}


def _last_logits(decoder, tokens_BL, positions_BL, segment_ids_BL):
  """float32 logits_BV of the last column only: left padding puts every row's next-token
  prediction there, so the [B, L, V] logits of a prefill are never built."""
  x_BLD = decoder.hidden(tokens_BL, positions_BL, segment_ids_BL)
  return decoder.logits(x_BLD[:, -1:])[:, 0]


def _forward(decoder, variables, cache, tokens_BL, positions_BL, segment_ids_BL):
  """Runs L columns through the cache: (float32 logits_BV of the last one, new cache)."""
  logits_BV, variables = decoder.apply({**variables, 'cache': cache}, tokens_BL, positions_BL,
                                       segment_ids_BL, method=_last_logits, mutable=['cache'])
  return logits_BV, variables['cache']


@functools.lru_cache(maxsize=64)
def _compiled_decode(model, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                     has_eos: bool, return_logits: bool):
  """jit(params, model_state, prompt_BP, lengths_B, rng, eos_id) -> (tokens_BN, logits_BNV or
  None). One program per setting and input shape; the eos id is an argument (a new one
  compiles nothing)."""
  decoder = model.clone(decode=True, deterministic=True)
  n = max_new_tokens

  def choose(logits_BV, rng, step, done_B, eos_id):
    token_B = sample_logits(logits_BV, jax.random.fold_in(rng, step), temperature=temperature,
                            top_k=top_k, top_p=top_p)
    if has_eos:
      token_B = jnp.where(done_B, eos_id, token_B)
      done_B = done_B | (token_B == eos_id)
    return token_B, done_B

  def decode(params, model_state, prompt_BP, lengths_B, rng, eos_id):
    variables = model_variables(params, model_state)
    b, p = prompt_BP.shape
    pad_B1 = (p - lengths_B.astype(jnp.int32))[:, None]
    column_P = jnp.arange(p, dtype=jnp.int32)
    real_BP = column_P >= pad_B1
    prompt_BP = jnp.where(real_BP, prompt_BP.astype(jnp.int32), 0)  # any padding value works
    positions_BP = jnp.maximum(column_P - pad_B1, 0)
    cache = init_cache(decoder, b, p + n - 1)  # the last token is never fed back
    logits_BV, cache = _forward(decoder, variables, cache, prompt_BP, positions_BP,
                                real_BP.astype(jnp.int32))
    token_B, done_B = choose(logits_BV, rng, 0, jnp.zeros((b,), bool), eos_id)
    # Rows that finish keep emitting eos: pre-filling with it lets the loop stop early.
    tokens_BN = jnp.full((b, n), eos_id if has_eos else 0, jnp.int32).at[:, 0].set(token_B)
    logits_BNV = None
    if return_logits:
      logits_BNV = jnp.zeros((b, n, logits_BV.shape[-1]), jnp.float32).at[:, 0].set(logits_BV)
    ones_B1 = jnp.ones((b, 1), jnp.int32)

    def cond(state):
      i, _, _, done_B, _ = state
      return (i < n) & ~jnp.all(done_B)

    def body(state):
      i, cache, tokens_BN, done_B, logits_BNV = state
      prev_B1 = jax.lax.dynamic_slice_in_dim(tokens_BN, i - 1, 1, axis=1)
      positions_B1 = lengths_B.astype(jnp.int32)[:, None] + i - 1
      logits_BV, cache = _forward(decoder, variables, cache, prev_B1, positions_B1, ones_B1)
      token_B, done_B = choose(logits_BV, rng, i, done_B, eos_id)
      tokens_BN = jax.lax.dynamic_update_slice_in_dim(tokens_BN, token_B[:, None], i, axis=1)
      if return_logits:
        logits_BNV = jax.lax.dynamic_update_slice_in_dim(logits_BNV, logits_BV[:, None], i, axis=1)
      return i + 1, cache, tokens_BN, done_B, logits_BNV

    state = (jnp.int32(1), cache, tokens_BN, done_B, logits_BNV)
    _, _, tokens_BN, _, logits_BNV = jax.lax.while_loop(cond, body, state)
    return tokens_BN, logits_BNV

  return jax.jit(decode)


def generate_with_logits(model, params, prompt_BP, rng, *, max_new_tokens: int,
                         temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                         eos_id: int | None = None, model_state=None, prompt_lengths_B=None):
  """`generate`, also returning the model's float32 logits_BNV at every step: (tokens, logits).

  Row b's token n was drawn from logits_BNV[b, n] (before temperature, top-k and top-p). Steps
  skipped because every row had emitted eos keep zero logits. For tests and analysis: the
  [B, N, V] buffer is large for real vocabularies.
  """
  return _decode(model, params, prompt_BP, rng, max_new_tokens=max_new_tokens,
                 temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                 return_logits=True, model_state=model_state, prompt_lengths_B=prompt_lengths_B)


def generate(model, params, prompt_BP, rng, *, max_new_tokens: int, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None, model_state=None,
             prompt_lengths_B=None):
  """Continues each prompt by `max_new_tokens` tokens: int32 tokens_BN (prompt not included).

  Args:
    model: a decoder-only LM module (e.g. `models.build_model(config)`); its decode-mode clone
      is built here.
    params: its parameters (the 'params' collection, unboxed).
    prompt_BP: int tokens, one prompt per row, left-padded: row b's prompt is
      prompt_BP[b, P - prompt_lengths_B[b]:]; the padding's values are never read.
    rng: PRNG key for sampling (unused when temperature is 0).
    max_new_tokens: N, the number of tokens generated.
    temperature, top_k, top_p: see `sample_logits`.
    eos_id: once a row emits it, the row emits only eos after it; when every row has, decoding
      stops early.
    model_state: the checkpoint's non-gradient collections (TrainState.model_state, e.g. the
      aux-free MoE selection bias); {} or None for models without any.
    prompt_lengths_B: each row's prompt length L_b, 1 <= L_b <= P; None: every row is P long.

  Row b decodes as it would alone (the same tokens greedily; the same logits up to float
  rounding). P is padded on the left up to `prompt_bucket(P)` before compiling.

  Raises:
    UserError: an empty prompt, N <= 0, a prompt plus continuation longer than a learned or
      sinusoidal position table, prompt lengths outside 1..P, or invalid sampling settings.
  """
  tokens_BN, _ = _decode(model, params, prompt_BP, rng, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                         return_logits=False, model_state=model_state,
                         prompt_lengths_B=prompt_lengths_B)
  return tokens_BN


def _lengths(prompt_lengths_B, b: int, p: int) -> np.ndarray:
  if prompt_lengths_B is None:
    return np.full((b,), p, np.int32)
  lengths_B = np.asarray(prompt_lengths_B)
  if lengths_B.shape != (b,) or not np.issubdtype(lengths_B.dtype, np.integer):
    raise UserError(f'prompt_lengths_B has shape {lengths_B.shape} and dtype {lengths_B.dtype}: '
                    f'expected {b} integer lengths, one per row of prompt_BP')
  if lengths_B.min() < 1 or lengths_B.max() > p:
    raise UserError(f'prompt_lengths_B holds {lengths_B.min()}..{lengths_B.max()}: each prompt '
                    f'length must be in 1..{p} (the columns of prompt_BP); an empty prompt has '
                    'nothing to continue')
  return lengths_B.astype(np.int32)


def _left_pad(prompt_BP, width: int):
  """prompt_BP with zero columns added on the left up to `width` (host or device array)."""
  pad = ((0, 0), (width - prompt_BP.shape[1], 0))
  if isinstance(prompt_BP, jax.Array):
    return jnp.pad(prompt_BP.astype(jnp.int32), pad)
  return np.pad(prompt_BP.astype(np.int32), pad)


def _decode(model, params, prompt_BP, rng, *, max_new_tokens, temperature, top_k, top_p, eos_id,
            return_logits, model_state=None, prompt_lengths_B=None):
  if not isinstance(prompt_BP, jax.Array):
    prompt_BP = np.asarray(prompt_BP, np.int32)  # host data: jit places it (on every process)
  if prompt_BP.ndim != 2:
    raise UserError(f'prompt_BP has shape {prompt_BP.shape}: expected [batch, prompt_len]')
  b, p = prompt_BP.shape
  if not b or not p:
    check_length(model, 0, max_new_tokens)  # the prompt is empty
  lengths_B = _lengths(prompt_lengths_B, b, p)
  check_length(model, int(lengths_B.max()), max_new_tokens)
  check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
  width = prompt_bucket(p)
  fn = _compiled_decode(model, int(max_new_tokens), float(temperature), int(top_k), float(top_p),
                        eos_id is not None, return_logits)
  eos = jnp.int32(-1 if eos_id is None else eos_id)
  return fn(params, model_state or {}, _left_pad(prompt_BP, width), lengths_B, rng, eos)


# ----------------------------------------------------------------------------- lists of prompts


def left_pad(prompts: Sequence[Sequence[int]], width: int | None = None):
  """(prompt_BP, lengths_B) of token lists: each row right-aligned in `width` columns (default:
  the longest prompt), zeros on the left."""
  lengths_B = np.asarray([len(p) for p in prompts], np.int32)
  width = int(lengths_B.max()) if width is None else width
  prompt_BP = np.zeros((len(prompts), width), np.int32)
  for b, prompt in enumerate(prompts):
    if len(prompt):
      prompt_BP[b, width - len(prompt):] = prompt
  return prompt_BP, lengths_B


def generate_rows(model, params, prompts: Sequence[Sequence[int]], rng, *, max_new_tokens: int,
                  batch_size: int = 64, temperature: float = 0.8, top_k: int = 0,
                  top_p: float = 1.0, eos_id: int | None = None,
                  model_state=None) -> list[list[int]]:
  """`generate` for a list of token prompts of any lengths: each prompt's `max_new_tokens`
  tokens, in the order given (not cut at eos: see `cut_at_eos`).

  Prompts are decoded in batches of min(batch_size, len(prompts)) rows, each left-padded to
  its bucket; when they need several batches they are sorted by length first (so that a batch
  holds similar lengths and little padding), and the last batch is filled up with copies of
  its first prompt, whose outputs are dropped, so that a call compiles one program per bucket.
  Batch k samples with rng for k = 0, else fold_in(rng, k); greedy results do not depend on
  the batching.
  """
  if batch_size <= 0:
    raise UserError(f'batch_size={batch_size}: must be a positive integer')
  empty = [i for i, p in enumerate(prompts) if not len(p)]
  if empty:
    raise UserError(f'prompt {empty[0]} is empty ({len(empty)} such prompts): give every '
                    'prompt at least one token')
  if not len(prompts):
    return []
  rows = min(batch_size, len(prompts))
  order = list(range(len(prompts)))
  if len(prompts) > rows:
    order.sort(key=lambda i: len(prompts[i]))
  outputs: list[list[int]] = [[] for _ in prompts]
  for k, first in enumerate(range(0, len(order), rows)):
    index = order[first:first + rows]
    filled = index + [index[0]] * (rows - len(index))
    prompt_BP, lengths_B = left_pad([prompts[i] for i in filled])
    tokens_BN = generate(model, params, prompt_BP, jax.random.fold_in(rng, k) if k else rng,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, eos_id=eos_id, model_state=model_state,
                         prompt_lengths_B=lengths_B)
    for i, ids in zip(index, to_host(tokens_BN).tolist()):
      outputs[i] = ids
  return outputs


def to_host(tokens):
  """A device array as numpy on every process (multi-host outputs are gathered first): what
  research.loading and the decoders hand back to Python."""
  if isinstance(tokens, jax.Array) and not tokens.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    tokens = multihost_utils.process_allgather(tokens, tiled=True)
  return np.asarray(tokens)


# ----------------------------------------------------------------------------- cutting outputs


def cut_at_eos(ids: Sequence[int], eos_id: int | None) -> tuple[list[int], bool]:
  """(the ids before the first eos, whether there was one)."""
  ids = list(ids)
  if eos_id is not None and eos_id in ids:
    return ids[:ids.index(eos_id)], True
  return ids, False


def check_stop(stop) -> tuple[str, ...]:
  """`stop` as a tuple of strings (one string is one stop string); UserError for anything else
  or an empty string (it would stop every row before its first token)."""
  stop = (stop,) if isinstance(stop, str) else stop
  if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
    raise UserError(f"stop={stop!r}: give a string or a tuple of non-empty strings, e.g. "
                    "stop=('\\n',)")
  return tuple(stop)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
  """(text before the earliest occurrence of any stop string, whether one occurred)."""
  cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
  return (text, False) if cut < 0 else (text[:cut], True)


def cut_ids_at_stop(ids: Sequence[int], decode, stop: Sequence[str]) -> tuple[list[int], bool]:
  """(the shortest prefix of `ids` whose text, `decode(prefix)`, contains a stop string, or all
  of `ids`; whether one occurred). The stop string stays in: the token that completes it may
  also carry text before it (as transformers' `stop_strings`). A binary search: a prefix that
  contains a stop string stays containing it as tokens are added."""
  ids = list(ids)
  if not stop or not cut_at_stop(decode(ids), stop)[1]:
    return ids, False
  lo, hi = 1, len(ids)  # the answer lies in lo..hi
  while lo < hi:
    mid = (lo + hi) // 2
    if cut_at_stop(decode(ids[:mid]), stop)[1]:
      hi = mid
    else:
      lo = mid + 1
  return ids[:lo], True
