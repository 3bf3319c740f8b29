"""Batched generation for evaluation: many prompts of different lengths, one program per shape.

Decoders: `research.inference.decoding` needs every prompt of a batch to have one length (its
KV cache has no padding mask), and evaluation prompts differ. Here prompts are right-padded into
one [B, L] buffer (L: the longest prompt plus max_new_tokens, for the whole call) and each step
runs the whole buffer through the model without a cache and reads row b's next token at its own
position: causal attention keeps the padding to the right of a row's text invisible to it. That
costs max_new_tokens full forward passes per batch instead of one each with a cache, which is
fine for evaluation-sized sets and keeps one compiled program for every batch. (In MoE layers
with a per-sequence expert capacity the padding also takes part in routing, so a row's output
can depend slightly on the buffer length there.)

Encoder-decoders: `research.inference.seq2seq` (right-padded encoder inputs are masked), greedy
or, with beam_size > 1, beam search.

The last batch is filled to the batch size with copies of its first prompt, whose outputs are
dropped, and buffers are rounded up to a multiple of 32 tokens, so a call compiles once and
files of similar lengths share the program.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import UserError
from research.inference import decoding


@dataclasses.dataclass
class Generated:
  """The decoded continuation of each prompt (eos and what follows it removed) and whether it
  ended by itself (eos) rather than by running out of max_new_tokens."""
  texts: list[str]
  finished: list[bool]


def context_length(config) -> int:
  """Tokens a decoder prompt plus continuation, or an encoder input, may hold: the trained
  sequence length (the position table of learned/sinusoidal positions; RoPE models were never
  trained beyond it either)."""
  return config.data.seq_len


@functools.lru_cache(maxsize=16)
def _compiled_greedy(model, max_new_tokens: int, eos_id: int):
  """jit(params, model_state, tokens_BL, lengths_B) -> tokens_BL with each row's continuation
  written after its prompt (rows that emitted eos continue with eos)."""
  n = max_new_tokens

  def run(params, model_state, tokens_BL, lengths_B):
    variables = decoding.model_variables(params, model_state)
    b = tokens_BL.shape[0]
    rows_B = jnp.arange(b)

    def cond(state):
      i, _, done_B = state
      return (i < n) & ~jnp.all(done_B)

    def body(state):
      i, tokens_BL, done_B = state
      last_B = lengths_B + i - 1  # the position whose logits predict the next token
      x_BLD = model.apply(variables, tokens_BL, method='hidden')
      logits_BV = model.apply(variables, x_BLD[rows_B, last_B][:, None], method='logits')[:, 0]
      token_B = jnp.where(done_B, eos_id, jnp.argmax(logits_BV, axis=-1).astype(jnp.int32))
      tokens_BL = tokens_BL.at[rows_B, last_B + 1].set(token_B)
      return i + 1, tokens_BL, done_B | (token_B == eos_id)

    _, tokens_BL, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens_BL,
                                                      jnp.zeros((b,), bool)))
    return tokens_BL

  return jax.jit(run)


def _width(needed: int, context: int) -> int:
  """Buffer length for prompts of up to `needed` tokens: rounded up to a multiple of 32 (within
  the context), so that files of similar lengths share one compiled program."""
  return max(needed, min(-(-needed // 32) * 32, context))


def _cut_at_eos(ids: list[int], eos_id: int) -> tuple[list[int], bool]:
  return (ids[:ids.index(eos_id)], True) if eos_id in ids else (ids, False)


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield list(range(start, min(start + batch_size, n)))


def generate_decoder(lm, prompts_ids: list[list[int]], *, max_new_tokens: int,
                     batch_size: int) -> Generated:
  """Greedy continuations of token prompts (each non-empty, each fitting the context with
  max_new_tokens more)."""
  tok = lm.require_tokenizer()
  width = _width(max(len(p) for p in prompts_ids) + max_new_tokens,
                 context_length(lm.config))
  fn = _compiled_greedy(lm.model, int(max_new_tokens), int(tok.eos_id))
  texts, finished = [''] * len(prompts_ids), [False] * len(prompts_ids)
  for rows in _batches(len(prompts_ids), batch_size):
    filled = rows + [rows[0]] * (batch_size - len(rows))
    tokens_BL = np.full((batch_size, width), tok.pad_id, np.int32)
    lengths_B = np.zeros((batch_size,), np.int32)
    for b, i in enumerate(filled):
      tokens_BL[b, :len(prompts_ids[i])] = prompts_ids[i]
      lengths_B[b] = len(prompts_ids[i])
    out_BL = np.asarray(jax.device_get(fn(lm.params, lm.model_state or {},
                                          tokens_BL, lengths_B)))
    for b, i in enumerate(rows):
      start = lengths_B[b]
      ids, done = _cut_at_eos(out_BL[b, start:start + max_new_tokens].tolist(), tok.eos_id)
      texts[i], finished[i] = tok.decode(ids), done
  return Generated(texts, finished)


def generate_seq2seq(lm, inputs_ids: list[list[int]], *, max_new_tokens: int,
                     batch_size: int, beam_size: int = 1, length_penalty: float = 0.6
                     ) -> Generated:
  """Greedy (or beam search) targets of encoder inputs; each input gets eos appended, as in
  training and `research.sample`."""
  from research.inference import seq2seq  # pylint: disable=g-import-not-at-top
  tok = lm.require_tokenizer()
  width = _width(max(len(p) for p in inputs_ids) + 1, context_length(lm.config))
  texts, finished = [''] * len(inputs_ids), [False] * len(inputs_ids)
  for rows in _batches(len(inputs_ids), batch_size):
    filled = rows + [rows[0]] * (batch_size - len(rows))
    encoder_BS = np.zeros((batch_size, width), np.int32)  # 0 is padding, which the encoder masks
    for b, i in enumerate(filled):
      encoder_BS[b, :len(inputs_ids[i]) + 1] = inputs_ids[i] + [tok.eos_id]
    if beam_size > 1:
      tokens_BKN, _ = seq2seq.beam_search(lm.model, lm.params, encoder_BS,
                                          beam_size=beam_size, max_new_tokens=max_new_tokens,
                                          eos_id=tok.eos_id, length_penalty=length_penalty,
                                          model_state=lm.model_state)
      tokens_BN = np.asarray(jax.device_get(tokens_BKN))[:, 0]  # the best hypothesis
    else:
      tokens_BN = np.asarray(jax.device_get(seq2seq.generate(
          lm.model, lm.params, encoder_BS, jax.random.key(0),
          max_new_tokens=max_new_tokens, temperature=0.0, eos_id=tok.eos_id,
          model_state=lm.model_state)))
    for b, i in enumerate(rows):
      ids, done = _cut_at_eos(tokens_BN[b].tolist(), tok.eos_id)
      texts[i], finished[i] = tok.decode(ids), done
  return Generated(texts, finished)


def generate(lm, prompts: list[str], *, lines: list[int], path: str) -> Generated:
  """Generates for each text prompt of `lm` (a research.LanguageModel) with the run's `eval`
  settings (batch_size, max_new_tokens, beam_size, length_penalty).

  Raises:
    UserError: an encoder-only run, an empty prompt, or prompts that do not fit the context;
      the message names `path` and the first offending line (`lines[i]` for prompt i).
  """
  config, e = lm.config, lm.config.eval
  family = config.model.family
  if jax.process_count() > 1:
    # Prompts are host arrays given whole to one program; splitting them over hosts (and
    # gathering the outputs) is not written yet.
    raise UserError('generation and few_shot run in one process: start research.evaluate '
                    'without --num_processes (one host still uses all its devices)')
  if family not in ('decoder', 'encoder_decoder'):
    raise UserError(f'{family} runs do not generate text: generation and few_shot need a decoder '
                    'or encoder_decoder run (use --task=validation or --task=perplexity)')
  ids = lm.require_tokenizer().encode_batch(prompts)
  empty = [lines[i] for i, p in enumerate(ids) if not p]
  if empty:
    raise UserError(f'{path}:{empty[0]}: the input is empty after tokenization ({len(empty)} such '
                    'lines): give every example some input text')
  context = context_length(config)
  extra = e.max_new_tokens if family == 'decoder' else 1  # decoder continuation / encoder eos
  long = [i for i, p in enumerate(ids) if len(p) + extra > context]
  if long:
    i = long[0]
    what = (f'plus eval.max_new_tokens={e.max_new_tokens}' if family == 'decoder'
            else 'plus eos')
    raise UserError(
        f'{path}:{lines[i]}: the prompt has {len(ids[i])} tokens, {what} exceeds the model '
        f'context of {context} tokens (data.seq_len); {len(long)} of {len(ids)} prompts are too '
        'long: shorten them, or lower --config.eval.max_new_tokens (or --config.eval.k for '
        'few_shot)')
  if family == 'decoder':
    return generate_decoder(lm, ids, max_new_tokens=e.max_new_tokens,
                            batch_size=e.batch_size)
  return generate_seq2seq(lm, ids, max_new_tokens=e.max_new_tokens,
                          batch_size=e.batch_size, beam_size=e.beam_size,
                          length_penalty=e.length_penalty)
