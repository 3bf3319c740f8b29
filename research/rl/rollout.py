"""Rollouts: completions sampled from the policy with the KV cache, laid out for training and
scored under the policy and the frozen reference.

`sample(run, params, model_state, prompts, rng)`:
1. Each prompt is repeated rl.samples_per_prompt = G times (rows g G .. (g + 1) G - 1 are
   prompt g's samples, as research.rl.advantages.group_advantages reads them), left-padded to
   P = rl.max_prompt_len columns (decoding.left_pad), and continued by
   research.inference.decoding.generate: one jitted prefill + token loop with the KV cache,
   N = rl.max_new_tokens tokens at rl.temperature / top_k / top_p, rows that emit eos emit
   only eos after it.
2. The training layout (research/objectives/rl_policy.py): inputs [prompt | completion[:-1]]
   of L = P + N - 1 columns with positions counted from each row's first real token and
   segment ids 0 on the padding (what the decoder saw while sampling), targets = the
   completion, mask = 1 on its tokens up to and including the first eos.
3. One jitted teacher-forced pass, sharded over the mesh's batch axes (run.batch_sharding),
   gives each target's log-probability under the policy (old_logp, for the ratio's clipping)
   and under the frozen reference (ref_logp, model_state['rl_reference']), both of
   softmax(logits / rl.temperature), and PPO's values. The same function computes the train
   step's log-probabilities, so before the first update the ratio is 1 up to float rounding.
4. The completions' texts (decoded, cut before eos) for the reward, on the host.

Randomness: `rollout_key(seed, iteration)` = fold_in(key(seed), iteration), so a resumed run
samples exactly the completions the uninterrupted run did (given the same parameters).
Every process computes the same whole rollout (the decoder's output is gathered to each
host; rewards are computed on every host), so the minibatches are global arrays built from
identical host copies.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from research.inference import decoding
from research.layers import moe as moe_lib
from research.objectives import rl_policy
from research.training import trainer

_ROLLOUT_STREAM = 0x0A11  # fold_in tags of the rollout and evaluation streams
_EVAL_STREAM = 0x0E7A1


def rollout_key(seed: int, iteration: int):
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ROLLOUT_STREAM), iteration)


def eval_key(seed: int, iteration: int):
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _EVAL_STREAM), iteration)


@dataclasses.dataclass
class Rollout:
  """batch: host arrays in rl_policy's layout (tokens, positions, segment_ids [B, L]; targets,
  mask, old_logp, ref_logp and, for PPO, old_values [B, N]); prompts: the B prompts (each G
  times in a row); completions: their texts; ended: whether each emitted eos."""
  batch: dict[str, np.ndarray]
  prompts: list
  completions: list[str]
  ended: np.ndarray

  @property
  def lengths(self) -> np.ndarray:
    return self.batch['mask'].sum(axis=1)


def generation_state(model_state) -> dict:
  """The collections a forward pass reads (the aux-free MoE bias), not the reference."""
  return {k: v for k, v in (model_state or {}).items() if k == moe_lib.STATE_COLLECTION}


def layout(prompt_BP: np.ndarray, lengths_B: np.ndarray, completion_BN: np.ndarray,
           eos_id: int) -> dict[str, np.ndarray]:
  """The training layout of left-padded prompts and their completions (host arrays)."""
  b, p = prompt_BP.shape
  n = completion_BN.shape[1]
  sequence_BS = np.concatenate([prompt_BP, completion_BN], axis=1).astype(np.int32)
  tokens_BL = sequence_BS[:, :p + n - 1]
  pad_B1 = (p - lengths_B.astype(np.int32))[:, None]
  column_L = np.arange(p + n - 1, dtype=np.int32)
  positions_BL = np.maximum(column_L - pad_B1, 0).astype(np.int32)
  segment_ids_BL = (column_L >= pad_B1).astype(np.int32)
  tokens_BL = np.where(segment_ids_BL > 0, tokens_BL, 0).astype(np.int32)
  is_eos_BN = completion_BN == eos_id
  eos_before_BN = np.cumsum(is_eos_BN, axis=1) - is_eos_BN  # eos strictly before column j
  mask_BN = (eos_before_BN == 0).astype(np.float32)
  return dict(tokens=tokens_BL, positions=positions_BL, segment_ids=segment_ids_BL,
              targets=completion_BN.astype(np.int32), mask=mask_BN)


def to_device(run, host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Global arrays sharded over the batch axes, from the same host arrays on every process."""
  return {k: jax.make_array_from_callback(v.shape, run.batch_sharding, lambda i, v=v: v[i])
          for k, v in host.items()}


def make_scorer(run):
  """jit(params, reference, batch) -> {old_logp, ref_logp[, old_values]} on the batch's
  sharding, one program per run (run.programs['rl_score'])."""
  if 'rl_score' in run.programs:
    return run.programs['rl_score']
  model = run.eval_model
  temperature = float(run.config.rl.temperature)
  with_values = run.config.objective.name == 'ppo'

  def score(params, reference, batch):
    logp_BN, _, values_BN = rl_policy.response_outputs(model, params, batch,
                                                       temperature=temperature,
                                                       values=with_values)
    ref_logp_BN, _ = rl_policy.response_logprobs(model, reference, batch,
                                                 temperature=temperature)
    out = {'old_logp': logp_BN, 'ref_logp': ref_logp_BN}
    if with_values:
      out['old_values'] = values_BN
    return out

  with run.context():
    jitted = jax.jit(score, in_shardings=(run.state_shardings.params,
                                          run.state_shardings.model_state[rl_policy.REFERENCE],
                                          run.batch_sharding),
                     out_shardings=run.batch_sharding)
  run.programs['rl_score'] = jitted
  return jitted


def generate(run, params, model_state, prompt_ids: Sequence[Sequence[int]], rng, *,
             temperature: float, eos_id: int):
  """(prompt_BP, lengths_B, completion_BN) host arrays: rl.max_new_tokens tokens per prompt."""
  rl = run.config.rl
  prompt_BP, lengths_B = decoding.left_pad(prompt_ids, width=rl.max_prompt_len)
  completion_BN = decoding.generate(
      run.eval_model, params, prompt_BP, rng, max_new_tokens=rl.max_new_tokens,
      temperature=temperature, top_k=rl.top_k, top_p=rl.top_p, eos_id=eos_id,
      model_state=generation_state(model_state), prompt_lengths_B=lengths_B)
  return prompt_BP, lengths_B, decoding.to_host(completion_BN)


def cut_completions(tokenizer, completion_BN: np.ndarray, eos_id: int, stop: str = ''):
  """Per completion (token ids up to its end, how it ended: 'eos', 'stop' or ''): the end is
  its first eos (left out of the ids) or, with `stop` (rl.stop), the first token whose text
  completes the stop string (kept, as decoding.cut_ids_at_stop), whichever comes first."""
  out = []
  for ids in completion_BN.tolist():
    kept, ended = decoding.cut_at_eos(ids, eos_id)
    how = 'eos' if ended else ''
    if stop:
      kept, stopped = decoding.cut_ids_at_stop(kept, tokenizer.decode, (stop,))
      how = 'stop' if stopped else how
    out.append((kept, how))
  return out


def mask_after_stop(mask_BN: np.ndarray, cut) -> np.ndarray:
  """`mask_BN` without the tokens sampled after a stop string (`cut_completions`' rows): a
  completion cut there ends with the token that completed it, and what follows gets no loss."""
  n = mask_BN.shape[1]
  end_B1 = np.asarray([len(ids) if how == 'stop' else n for ids, how in cut])[:, None]
  return mask_BN * (np.arange(n) < end_B1)


def sample(run, params, model_state, prompts, rng, *, tokenizer) -> Rollout:
  """A rollout of `prompts` (research.rl.prompts.Prompt or anything with .ids): see the module
  docstring. `params` and `model_state` are the train state's (the reference is read from
  model_state['rl_reference'])."""
  rl = run.config.rl
  eos_id = tokenizer.eos_id
  repeated = [p for p in prompts for _ in range(rl.samples_per_prompt)]
  params = trainer.device_params(run, params)
  prompt_BP, lengths_B, completion_BN = generate(
      run, params, model_state, [p.ids for p in repeated], rng, temperature=rl.temperature,
      eos_id=eos_id)
  host = layout(prompt_BP, lengths_B, completion_BN, eos_id)
  cut = cut_completions(tokenizer, completion_BN, eos_id, rl.stop)
  host['mask'] = mask_after_stop(host['mask'], cut)
  scored = make_scorer(run)(params, model_state[rl_policy.REFERENCE], to_device(run, host))
  host.update({k: np.asarray(decoding.to_host(v), np.float32) for k, v in scored.items()})
  return Rollout(batch=host, prompts=repeated,
                 completions=[tokenizer.decode(ids) for ids, _ in cut],
                 ended=np.asarray([how != '' for _, how in cut]))
