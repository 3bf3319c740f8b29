"""SFT from an init_from workdir: the response loss falls for a decoder and an encoder-decoder,
through the trainer (decoder) and through the command line with LoRA and export (decoder)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

import research
from research import config_lib, loading
from research.evaluation import validation
from research.training import peft, trainer
from tests.finetune.conftest import (ONE_DEVICE, make_source_workdir, sft_config,
                                     source_config)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [r['train/loss'] for r in rows if 'train/loss' in r], rows


def test_decoder_sft_loss_falls(tmp_path, decoder_source, copy_data):
  config = sft_config(decoder_source[0], *copy_data, **{'train.steps': 25})
  final = trainer.train(config, str(tmp_path / 'sft'), devices=ONE_DEVICE())
  losses, rows = _losses(str(tmp_path / 'sft'))
  assert losses[-1] < losses[0] - 0.5, losses
  assert final['eval/loss'] < losses[0] - 0.5
  counts = rows[0]
  assert counts['train/trainable_params'] == counts['train/total_params'] > 0
  assert os.path.isfile(tmp_path / 'sft' / 'tokenizer.model')  # the source's, for sampling
  # research.evaluate scores the run on its own held-out examples, not the pre-training text.
  again = validation.validation(str(tmp_path / 'sft'), batches=config.train.eval_batches)
  np.testing.assert_allclose(again['loss'], final['eval/loss'], rtol=1e-5)


def test_encoder_decoder_sft_loss_falls(tmp_path, tokenizer_path, copy_data):
  # A T5-style source (its objective only shapes the initialisation).
  source, _ = make_source_workdir(
      tmp_path / 'src', source_config('encoder_decoder', **{'objective.name': 'sft'}),
      tokenizer_path)
  config = sft_config(source, *copy_data, **{'model.family': 'encoder_decoder',
                                             'train.steps': 25})
  assert config.model.position == 'relative'  # inherited
  final = trainer.train(config, str(tmp_path / 'sft'), devices=ONE_DEVICE())
  losses, _ = _losses(str(tmp_path / 'sft'))
  assert losses[-1] < losses[0] - 0.3, losses
  assert np.isfinite(final['eval/loss'])


def test_command_line_lora_then_export(tmp_path, decoder_source, copy_data):
  """research.train with configs/finetune/sft.py:lora,tiny (LoRA trains, the base stays
  bit-identical, no optimizer state for it), then research.export: the merged plain workdir
  evaluates to the LoRA run's eval loss."""
  train, valid = copy_data
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  run = lambda *args: subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env,
                                     capture_output=True, text=True, timeout=600)
  workdir, out = str(tmp_path / 'lora'), str(tmp_path / 'merged')
  result = run('research.train', f'--config={REPO}/configs/finetune/sft.py:lora,tiny',
               f'--config.init_from={decoder_source[0]}', f'--config.finetune.train_data={train}',
               f'--config.finetune.eval_data={valid}', '--config.data.seq_len=32',
               '--config.train.lr=1e-2',
               f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads(result.stdout.strip().splitlines()[-1])
  assert 'trainable of' in result.stdout and '(lora)' in result.stdout
  assert '2 bad lines' in result.stdout  # the fixture's two broken lines, reported
  # LoRA trained: the loss fell, the base weights are bit-identical to the source's, and the
  # optimizer holds state (Adam's mu and nu) for the LoRA parameters only.
  losses, rows = _losses(workdir)
  assert losses[-1] < losses[0] - 0.05, losses
  lora = research.load(workdir)
  trained = jax.device_get(lora.params)
  source_params = decoder_source[1]
  flat = {peft.path_of(kp): x for kp, x in jax.tree_util.tree_leaves_with_path(trained)}
  for kp, x in jax.tree_util.tree_leaves_with_path(source_params):
    np.testing.assert_array_equal(flat[peft.path_of(kp)], x)
  lora_b = [x for path, x in flat.items() if path.endswith('_lora_b')]
  assert lora_b and all(float(np.abs(x).max()) > 0 for x in lora_b)  # the deltas moved
  counts = peft.count_params(trained, lora.config.peft)
  assert rows[0]['train/trainable_params'] == counts['trainable_params'] == sum(
      x.size for path, x in flat.items() if '_lora_' in path)
  opt_state = loading.restore_state(workdir, lora.run).opt_state  # research.load drops it
  assert sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim) == (
      2 * counts['trainable_params'])
  result = run('research.export', f'--workdir={workdir}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])['merged']
  # The merged workdir is a plain model: no LoRA parameters, the same eval loss.
  merged_lm = research.load(out)
  config, params = merged_lm.config, merged_lm.params
  assert config.peft.method == 'none'
  paths = [str(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert not any('lora' in p for p in paths)
  config.train.batch_size = 8
  config = config_lib.finalize(config)
  run_ = trainer.build_run(config, devices=ONE_DEVICE())
  from research.objectives import sft as sft_objective  # pylint: disable=g-import-not-at-top
  dataset = sft_objective.load_dataset(config, out)
  merged = trainer.evaluate(run_, jax.device_put(params), dataset)
  np.testing.assert_allclose(merged['eval/loss'], final['eval/loss'], rtol=1e-4)
