"""research.load: a workdir's checkpoint as a LanguageModel whose logits, scores and generations
are the model's own (tiny decoder and encoder-decoder workdirs, restored on 8 devices)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import research
from research import config_lib
from research.errors import UserError
from research.training import checkpointing, trainer
from tests.helpers import tiny_config

TEXT = ('ROMEO: But soft, what light through yonder window breaks?\n'
        'JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n') * 20
NEW_TOKENS = 5


def _write_run(path, config, steps):
  """config.json and one checkpoint per step, each with its own initialisation; returns the
  host parameters by step."""
  config_lib.save_config(config, os.path.join(path, 'config.json'))
  run = trainer.build_run(config, devices=jax.devices()[:1])
  manager = checkpointing.make_manager(path, async_save=False)
  params = {}
  for step in steps:
    state = trainer.init_state(run, seed=step).replace(step=jnp.int32(step))
    checkpointing.save(manager, step, state, force=True)
    params[step] = jax.device_get(state.params)
  manager.wait_until_finished()
  manager.close()
  return params


@pytest.fixture(scope='module')
def decoder(tmp_path_factory):
  """(workdir, params by step) of a decoder with a tokenizer and checkpoints at steps 1 and 2."""
  from research.data import pipeline, tokenizer as tokenizer_lib
  path = str(tmp_path_factory.mktemp('decoder'))
  tokenizer = tokenizer_lib.train_tokenizer(
      [TEXT], 80, os.path.join(path, pipeline.WORKDIR_TOKENIZER), num_sentinels=0,
      byte_fallback=False)
  # A wide initialisation: peaked logits, so that greedy choices are not near-ties.
  config = tiny_config(**{'data.vocab_size': tokenizer.vocab_size, 'model.position': 'learned',
                          'model.init_std': 0.3, 'train.batch_size': 8})
  return path, _write_run(path, config, steps=(1, 2))


@pytest.fixture(scope='module')
def lm(decoder):
  return research.load(decoder[0], overrides=[('model.dtype', 'float32')])


def _greedy_by_full_forwards(lm, prompts, eos_id):
  """Greedy continuations, each step a full forward pass (no cache) over one right-padded
  buffer: causal attention keeps the padding after a row's text invisible to it."""
  width = max(len(p) for p in prompts) + NEW_TOKENS
  rows = [list(p) for p in prompts]
  done = [False] * len(rows)
  for _ in range(NEW_TOKENS):
    buffer_BL = np.zeros((len(rows), width), np.int32)
    for b, row in enumerate(rows):
      buffer_BL[b, :len(row)] = row
    logits_BLV = np.asarray(lm(buffer_BL))
    for b, row in enumerate(rows):
      token = int(np.argmax(logits_BLV[b, len(row) - 1]))
      done[b] = done[b] or token == eos_id
      if not done[b]:
        row.append(token)
  return [row[len(p):] for row, p in zip(rows, prompts)]


def test_logits_and_scores_are_the_model_s(lm, decoder):
  assert lm.step == 2 and lm.config.model.dtype == 'float32' and lm.tokenizer is not None
  tokens_BT = np.random.default_rng(0).integers(3, lm.config.model.vocab_size, (2, 12))
  logits_BTV = np.asarray(lm(tokens_BT))
  assert logits_BTV.dtype == np.float32
  expected_BTV = lm.model.apply({'params': decoder[1][2]}, tokens_BT)  # unsharded, step 2
  np.testing.assert_allclose(logits_BTV, expected_BTV, atol=1e-5, rtol=1e-5)
  logp_BT = np.asarray(lm.score(tokens_BT))
  manual_BSV = jax.nn.log_softmax(logits_BTV[:, :-1], axis=-1)
  manual_BS = np.take_along_axis(manual_BSV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  assert logp_BT.shape == tokens_BT.shape and np.all(logp_BT[:, 0] == 0)
  np.testing.assert_allclose(logp_BT[:, 1:], manual_BS, atol=1e-5)


def test_greedy_generate_is_an_argmax_loop_over_full_forwards(lm):
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14, 15]]  # two lengths: two cached batches
  eos = lm.tokenizer.eos_id
  got = lm.generate(prompts, max_new_tokens=NEW_TOKENS, temperature=0.0)
  assert got == _greedy_by_full_forwards(lm, prompts, eos)
  assert lm.generate(np.asarray(prompts[1]), max_new_tokens=NEW_TOKENS) == got[1]  # one row
  # Text in, text out: the same tokens, decoded.
  ids = lm.tokenizer.encode('ROMEO:')
  text = lm.generate('ROMEO:', max_new_tokens=NEW_TOKENS)
  assert text == lm.tokenizer.decode(lm.generate(ids, max_new_tokens=NEW_TOKENS))
  assert lm.generate(['ROMEO:'], max_new_tokens=NEW_TOKENS) == [text]
  with pytest.raises(UserError, match='beam search is for encoder_decoder'):
    lm.generate(prompts, beam_size=2)


def test_step_selection_and_one_line_errors(lm, decoder, tmp_path):
  workdir, params = decoder
  first = research.load(workdir, step=1)
  assert first.step == 1
  for got, want in zip(jax.tree.leaves(jax.device_get(first.params)), jax.tree.leaves(params[1])):
    np.testing.assert_array_equal(got, want)
  cases = [
      (lambda: research.load(str(tmp_path / 'missing')), 'no such directory'),
      (lambda: research.load(str(tmp_path)), 'has no config.json: run research.train'),
      (lambda: research.load(workdir, step=7), r'step=7: no such checkpoint .* \[1, 2\]'),
      (lambda: research.load(workdir, overrides=[('model.num_layers', '3')]),
       'can only change'),
      (lambda: lm(np.arange(5)), r'expected integer token ids \[batch, length\]'),
      (lambda: lm(np.ones((1, 40), np.int32)), 'more than the model context'),
  ]
  for call, message in cases:
    with pytest.raises(UserError, match=message) as raised:
      call()
    assert '\n' not in str(raised.value), str(raised.value)


def test_import_research_starts_no_jax():
  code = 'import research, sys; assert "jax" not in sys.modules; print("load" in dir(research))'
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == 'True'
  assert research.load.__module__ == 'research.loading'


def test_encoder_decoder_without_tokenizer(tmp_path):
  config = tiny_config(**{
      'model.family': 'encoder_decoder', 'objective.name': 'span_corruption',
      'data.num_sentinels': 8, 'model.position': 'relative', 'model.activation': 'gelu',
      'model.num_kv_heads': 0, 'model.num_layers': 1, 'model.d_model': 32, 'model.num_heads': 2,
      'model.init_std': 0.3, 'model.dtype': 'float32', 'data.vocab_size': 64,
      'train.batch_size': 8, 'mesh.data': 1})  # a one-device mesh: does not fit the 8 here
  _write_run(str(tmp_path), config, steps=(0,))
  t5 = research.load(str(tmp_path))
  assert t5.run.mesh.size == 1 and t5.config.mesh.data == 1  # restored on one device
  assert t5.tokenizer is None and t5.step == 0
  inputs_BS = np.asarray([[5, 6, 7], [8, 9, 0]], np.int32)  # 0: padding, masked
  got = t5.generate(inputs_BS, max_new_tokens=4)  # no tokenizer, no eos: all 4 tokens
  # The same by teacher forcing: each step reads the logits after the targets so far.
  targets_BT = np.zeros((2, 4), np.int32)
  for t in range(4):
    targets_BT[:, t] = np.argmax(np.asarray(t5(inputs_BS, targets_BT))[:, t], axis=-1)
  assert got == targets_BT.tolist()
  logp_BT = np.asarray(t5.score(inputs_BS, targets_BT))
  manual_BTV = jax.nn.log_softmax(np.asarray(t5(inputs_BS, targets_BT)), axis=-1)
  np.testing.assert_allclose(
      logp_BT, np.take_along_axis(manual_BTV, targets_BT[..., None], -1)[..., 0], atol=1e-5)
  with pytest.raises(UserError, match='has no tokenizer') as raised:
    t5.generate('To be, or not to <extra_id_0>')
  assert '\n' not in str(raised.value) and 'pass token ids' in str(raised.value)
  with pytest.raises(UserError, match=r'lm\(inputs, targets\)'):
    t5(inputs_BS)
