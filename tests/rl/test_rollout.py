"""Rollouts: the completions are decoding.generate's, the training layout masks after eos, and
the log-probabilities are those of a separate full forward pass of each row alone."""

import functools

import jax
import numpy as np

from research.inference import decoding
from research.objectives import rl_policy
from research.rl import prompts as prompts_lib, rollout as rollout_lib
from research.training import restore, trainer
from tests.rl.conftest import ONE_DEVICE, rl_config, write_jsonl


def test_layout_positions_segments_and_mask():
  eos = 1
  prompt_BP = np.array([[0, 0, 7, 8], [5, 6, 7, 8]], np.int32)
  lengths_B = np.array([2, 4], np.int32)
  completion_BN = np.array([[9, 1, 1], [9, 10, 11]], np.int32)
  out = rollout_lib.layout(prompt_BP, lengths_B, completion_BN, eos)
  np.testing.assert_array_equal(out['tokens'], [[0, 0, 7, 8, 9, 1], [5, 6, 7, 8, 9, 10]])
  np.testing.assert_array_equal(out['positions'], [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
  np.testing.assert_array_equal(out['segment_ids'], [[0, 0, 1, 1, 1, 1], [1] * 6])
  np.testing.assert_array_equal(out['targets'], completion_BN)
  # The first eos is an action (the policy chose to stop); what follows it is not.
  np.testing.assert_array_equal(out['mask'], [[1, 1, 0], [1, 1, 1]])


def test_stop_string_ends_completions_and_their_mask():
  class Letters:  # id i -> chr(96 + i); id 10 -> a newline
    decode = staticmethod(lambda ids: ''.join('\n' if i == 10 else chr(96 + i) for i in ids))
  eos = 1
  completion_BN = np.array([[3, 10, 4, 1], [3, 4, 5, 6], [1, 10, 4, 4], [2, 3, 1, 10]])
  cut = rollout_lib.cut_completions(Letters, completion_BN, eos, stop='\n')
  assert cut == [([3, 10], 'stop'), ([3, 4, 5, 6], ''), ([], 'eos'), ([2, 3], 'eos')]
  assert rollout_lib.cut_completions(Letters, completion_BN, eos)[0] == ([3, 10, 4], 'eos')
  mask_BN = rollout_lib.layout(np.ones((4, 1), np.int32), np.ones(4, np.int32), completion_BN,
                               eos)['mask']
  # The stop token is the completion's last action; eos is one when it comes first.
  np.testing.assert_array_equal(rollout_lib.mask_after_stop(mask_BN, cut),
                                [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])


def test_prompts_held_out_and_ordered(tmp_path, copy_prompts, decoder_source, tokenizer):
  config = rl_config(decoder_source[0], copy_prompts, **{'rl.num_eval_prompts': 5,
                                                          'rl.max_prompt_len': 8})
  prompts = prompts_lib.load(config, tokenizer)
  assert len(prompts.train) + len(prompts.eval) == 40 and len(prompts.eval) == 5
  assert not {p.text for p in prompts.eval} & {p.text for p in prompts.train}
  assert all(p.row['answer'] and len(p.ids) <= 8 for p in prompts.train)
  # An epoch of 35 prompts is 35 iterations of 1, each prompt once; the order is a function of
  # (seed, iteration) only.
  epoch = [prompts.for_iteration(0, i, 1)[0].text for i in range(35)]
  assert sorted(epoch) == sorted(p.text for p in prompts.train)
  again = prompts_lib.load(config, tokenizer)
  assert prompts.for_iteration(0, 3, 4) == again.for_iteration(0, 3, 4)
  assert prompts.for_iteration(1, 3, 4) != prompts.for_iteration(0, 3, 4)
  # Bad rows and long prompts are counted, not silently dropped.
  path = write_jsonl(tmp_path / 'p.jsonl', [{'prompt': 'copy ab ='}, {'text': 'x'},
                                            {'prompt': 'copy ' + 'abcd ' * 20 + '='}])
  config = rl_config(decoder_source[0], path)
  loaded = prompts_lib.load(config, tokenizer)
  assert len(loaded.train) == 1 and loaded.stats['train'].bad_lines == 1
  assert loaded.stats['train'].too_long == 1


def test_rollout_is_generate_and_full_forward(copy_prompts, decoder_source, tokenizer):
  temperature = 2.0
  config = rl_config(decoder_source[0], copy_prompts, **{
      'rl.max_new_tokens': 6, 'rl.samples_per_prompt': 4, 'rl.prompts_per_iteration': 2,
      'rl.temperature': temperature})
  run = trainer.build_run(config, devices=ONE_DEVICE())
  state, _ = restore.init_from(run, trainer.init_state(run, 0), decoder_source[0])
  chosen = prompts_lib.load(config, tokenizer).for_iteration(config.seed, 0, 2)
  eos = tokenizer.eos_id
  # An untrained model emits eos about once in 96 tokens: take the first iteration key whose
  # rollout has a completion that stops early, so that the mask has something to stop at.
  for iteration in range(100):
    rng = rollout_lib.rollout_key(config.seed, iteration)
    rollout = rollout_lib.sample(run, state.params, state.model_state, chosen, rng,
                                 tokenizer=tokenizer)
    if (rollout.batch['targets'][:, :-1] == eos).any():
      break
  batch = rollout.batch
  b, n = batch['targets'].shape
  assert (b, n) == (8, 6) and batch['tokens'].shape == (8, config.data.seq_len)
  assert [p.text for p in rollout.prompts] == [p.text for p in chosen for _ in range(4)]

  # The same tokens as decoding.generate with the same key.
  ids = [p.ids for p in rollout.prompts]
  prompt_BP, lengths_B = decoding.left_pad(ids, width=config.rl.max_prompt_len)
  expected = decoding.generate(run.eval_model, state.params, prompt_BP, rng, max_new_tokens=n,
                               temperature=temperature, eos_id=eos, prompt_lengths_B=lengths_B)
  np.testing.assert_array_equal(batch['targets'], np.asarray(expected))

  # Mask: every token up to and including the first eos, none after; texts stop before it.
  assert rollout.ended.any() and not rollout.ended.all()
  for mask_N, row, text, ended in zip(batch['mask'], batch['targets'], rollout.completions,
                                      rollout.ended):
    assert ended == (eos in row)
    last = list(row).index(eos) if ended else n - 1
    np.testing.assert_array_equal(mask_N, np.arange(n) <= last)
    assert text == tokenizer.decode([int(t) for t in row[:last + (not ended)]])
  np.testing.assert_array_equal(rollout.lengths, batch['mask'].sum(1))

  # Log-probabilities: a separate full forward of the rows starting at column 0 (no left
  # padding; zeros after a row's text change nothing before them), log_softmax(logits / T).
  width = max(len(i) for i in ids) + n
  rows_BS = np.zeros((b, width), np.int32)
  for r in range(b):
    rows_BS[r, :len(ids[r]) + n] = list(ids[r]) + list(batch['targets'][r])
  logits = jax.jit(run.eval_model.apply)({'params': state.params}, rows_BS)
  logp_BSV = np.asarray(jax.nn.log_softmax(logits.astype(np.float32) / temperature, axis=-1))
  for r in range(b):
    p = len(ids[r])
    want = [logp_BSV[r, p - 1 + j, batch['targets'][r, j]] for j in range(n)]
    np.testing.assert_allclose(batch['old_logp'][r], want, atol=2e-5, rtol=0)
  # The reference starts as the policy: the same numbers, to the bit.
  np.testing.assert_array_equal(batch['ref_logp'], batch['old_logp'])

  # The train step's log-probabilities of the same batch (rl_policy.response_logprobs): before
  # any update the ratio is 1 up to float rounding.
  score = jax.jit(functools.partial(rl_policy.response_logprobs, run.eval_model,
                                    temperature=temperature))
  logp, _ = score(state.params, batch)
  np.testing.assert_allclose(np.asarray(logp), batch['old_logp'], atol=1e-6, rtol=0)
