"""Batched generation for evaluation: many prompts of different lengths, one program per shape.

Decoders: greedy continuations with the KV-cache decoder (`research.inference.decoding.
generate_rows`): prompts are sorted by length, left-padded into batches of eval.batch_size
rows, each batch's buffer rounded up to a multiple of 32 tokens (decoding.prompt_bucket), so
a call compiles one program per bucket and files of similar lengths share it. Every row decodes
as it would alone (its padding is masked in the cache). Stop strings (eval.stop) are applied
by the tasks to the decoded text.

Encoder-decoders: `research.inference.seq2seq` (right-padded encoder inputs are masked), greedy
or, with beam_size > 1, beam search. The last batch is filled to the batch size with copies of
its first input, whose outputs are dropped, and buffers are rounded up to a multiple of 32
tokens.
"""

from __future__ import annotations

import dataclasses

import jax
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


def _width(needed: int, context: int) -> int:
  """Buffer length for encoder inputs of up to `needed` tokens: the decoder's prompt bucket
  (within the context), so that files of similar lengths share one compiled program."""
  return max(needed, min(decoding.prompt_bucket(needed), context))


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield list(range(start, min(start + batch_size, n)))


def generate_decoder(lm, prompts_ids: list[list[int]], *, max_new_tokens: int,
                     batch_size: int) -> Generated:
  """Greedy continuations of token prompts (each non-empty, each fitting the context with
  max_new_tokens more)."""
  tok = lm.require_tokenizer()
  outputs = decoding.generate_rows(lm.model, lm.params, prompts_ids, jax.random.key(0),
                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   temperature=0.0, eos_id=tok.eos_id,
                                   model_state=lm.model_state)
  cut = [decoding.cut_at_eos(ids, tok.eos_id) for ids in outputs]
  return Generated([tok.decode(ids) for ids, _ in cut], [done for _, done in cut])


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
      ids, done = decoding.cut_at_eos(tokens_BN[b].tolist(), tok.eos_id)
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
