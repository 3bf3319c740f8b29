"""Autoregressive decoding with a KV cache: greedy, temperature, top-k and nucleus (top-p).

`generate` prefills the prompt in one call, then emits one token per step from the cache; prefill
and token loop are one compiled program (`jax.jit`, cached per model and static settings).

All prompts in a batch share one length P (no left padding), so row b's token t sits at position
t for every row and one cache index serves the batch. To draw several samples of one prompt,
replicate it over the batch (`research.sample --num_samples` does).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError

_ABSOLUTE_POSITIONS = ('learned', 'sinusoidal')


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


def init_cache(decoder, batch: int, length: int):
  """A zero cache of `length` slots; its shapes come from `eval_shape`, so nothing is computed."""
  tokens_BS = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  shapes = jax.eval_shape(lambda t: decoder.init(jax.random.key(0), t), tokens_BS)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


def model_variables(params, model_state=None) -> dict:
  """{'params': params, **model_state}: what `apply` reads. `model_state` holds the non-gradient
  collections a checkpoint's TrainState.model_state carries (the aux-free MoE selection bias,
  {'moe_state': ...}); without it such a model routes with a bias of 0, not the trained one."""
  return {'params': params, **(model_state or {})}


def _forward(decoder, variables, cache, tokens_BL, start):
  """Runs L tokens at positions start.. through the cache: (float32 logits_BLV, new cache)."""
  b, l = tokens_BL.shape
  positions_BL = jnp.broadcast_to(start + jnp.arange(l, dtype=jnp.int32), (b, l))
  logits_BLV, variables = decoder.apply({**variables, 'cache': cache}, tokens_BL,
                                        positions_BL, mutable=['cache'])
  return logits_BLV, variables['cache']


@functools.lru_cache(maxsize=64)
def _compiled_decode(model, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                     eos_id: int | None, return_logits: bool):
  """jit(params, model_state, prompt_BP, rng) -> (tokens_BN, logits_BNV or None), one program
  per setting."""
  decoder = model.clone(decode=True, deterministic=True)
  n = max_new_tokens

  def choose(logits_BV, rng, step, done_B):
    token_B = sample_logits(logits_BV, jax.random.fold_in(rng, step), temperature=temperature,
                            top_k=top_k, top_p=top_p)
    if eos_id is not None:
      token_B = jnp.where(done_B, eos_id, token_B)
      done_B = done_B | (token_B == eos_id)
    return token_B, done_B

  def decode(params, model_state, prompt_BP, rng):
    variables = model_variables(params, model_state)
    b, p = prompt_BP.shape
    prompt_BP = prompt_BP.astype(jnp.int32)
    cache = init_cache(decoder, b, p + n)
    prompt_logits_BPV, cache = _forward(decoder, variables, cache, prompt_BP, 0)
    logits_BV = prompt_logits_BPV[:, -1]
    token_B, done_B = choose(logits_BV, rng, 0, jnp.zeros((b,), bool))
    # Rows that finish keep emitting eos: pre-filling with it lets the loop stop early.
    tokens_BN = jnp.full((b, n), 0 if eos_id is None else eos_id, jnp.int32).at[:, 0].set(token_B)
    logits_BNV = None
    if return_logits:
      logits_BNV = jnp.zeros((b, n, logits_BV.shape[-1]), jnp.float32).at[:, 0].set(logits_BV)

    def cond(state):
      i, _, _, done_B, _ = state
      return (i < n) & ~jnp.all(done_B)

    def body(state):
      i, cache, tokens_BN, done_B, logits_BNV = state
      prev_B1 = jax.lax.dynamic_slice_in_dim(tokens_BN, i - 1, 1, axis=1)
      step_logits_B1V, cache = _forward(decoder, variables, cache, prev_B1, p + i - 1)
      logits_BV = step_logits_B1V[:, 0]
      token_B, done_B = choose(logits_BV, rng, i, done_B)
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
                         eos_id: int | None = None, model_state=None):
  """`generate`, also returning the model's float32 logits_BNV at every step: (tokens, logits).

  Row b's token n was drawn from logits_BNV[b, n] (before temperature, top-k and top-p). Steps
  skipped because every row had emitted eos keep zero logits. For tests and analysis: the
  [B, N, V] buffer is large for real vocabularies.
  """
  return _decode(model, params, prompt_BP, rng, max_new_tokens=max_new_tokens,
                 temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                 return_logits=True, model_state=model_state)


def generate(model, params, prompt_BP, rng, *, max_new_tokens: int, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None, model_state=None):
  """Continues each prompt by `max_new_tokens` tokens: int32 tokens_BN (prompt not included).

  Args:
    model: a decoder-only LM module (e.g. `models.build_model(config)`); its decode-mode clone
      is built here.
    params: its parameters (the 'params' collection, unboxed).
    prompt_BP: int tokens; every row has the same length P (see the module docstring).
    rng: PRNG key for sampling (unused when temperature is 0).
    max_new_tokens: N, the number of tokens generated.
    temperature, top_k, top_p: see `sample_logits`.
    eos_id: once a row emits it, the row emits only eos after it; when every row has, decoding
      stops early.
    model_state: the checkpoint's non-gradient collections (TrainState.model_state, e.g. the
      aux-free MoE selection bias); {} or None for models without any.

  Raises:
    UserError: empty prompt, N <= 0, a prompt plus continuation longer than a learned or
      sinusoidal position table, or invalid sampling settings.
  """
  tokens_BN, _ = _decode(model, params, prompt_BP, rng, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                         return_logits=False, model_state=model_state)
  return tokens_BN


def _decode(model, params, prompt_BP, rng, *, max_new_tokens, temperature, top_k, top_p, eos_id,
            return_logits, model_state=None):
  if not isinstance(prompt_BP, jax.Array):
    prompt_BP = np.asarray(prompt_BP, np.int32)  # host data: jit places it (on every process)
  if prompt_BP.ndim != 2:
    raise UserError(f'prompt_BP has shape {prompt_BP.shape}: expected [batch, prompt_len]')
  check_length(model, prompt_BP.shape[1], max_new_tokens)
  check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
  fn = _compiled_decode(model, int(max_new_tokens), float(temperature), int(top_k), float(top_p),
                        None if eos_id is None else int(eos_id), return_logits)
  return fn(params, model_state or {}, prompt_BP, rng)
