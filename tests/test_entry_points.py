"""The commands a researcher types, end to end on the real corpus (a tiny config)."""

import json
import pytest
import os
import subprocess
import sys

from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs/decoder/shakespeare.py:tiny')


def _run(module, *args, cache):
  env = helpers.subprocess_env(LMFORGE_CACHE=cache)
  result = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_train_evaluate_sample_benchmark(tmp_path):
  cache, workdir = str(tmp_path / 'cache'), str(tmp_path / 'run')
  out = _run('research.train', f'--config={TINY}', f'--workdir={workdir}', cache=cache)
  final = json.loads(out.strip().splitlines()[-1])
  assert final['step'] == 20 and final['eval/loss'] < 6.0  # ln(512) = 6.24 at initialisation
  assert sorted(os.listdir(workdir)) == ['.lock', 'checkpoints', 'config.json', 'metrics.jsonl',
                                         'tensorboard', 'tokenizer.model']

  ev = json.loads(_run('research.evaluate', f'--workdir={workdir}', cache=cache).splitlines()[-1])
  assert ev['step'] == 20 and ev['tokens'] > 10_000  # the whole validation split
  assert abs(ev['perplexity'] - 2.718281828 ** ev['loss']) < 1e-3 * ev['perplexity']

  text = _run('research.sample', f'--workdir={workdir}', '--prompt=ROMEO:',
              '--max_new_tokens=20', '--temperature=0.8', '--top_p=0.95', '--seed=0', cache=cache)
  assert 'ROMEO:' in text and len(text.strip()) > len('ROMEO:')

  bench = json.loads(_run('research.benchmark', f'--config={TINY}', '--steps=2',
                          cache=cache).splitlines()[-1])
  for key in ('tokens_per_sec', 'mfu', 'step_ms', 'peak_memory'):
    assert bench[key] > 0, key


@pytest.mark.slow
def test_encoder_train_then_fill_mask(tmp_path):
  cache, workdir = str(tmp_path / 'cache'), str(tmp_path / 'mlm')
  config = os.path.join(REPO, 'configs/encoder/shakespeare.py:tiny')
  _run('research.train', f'--config={config}', f'--workdir={workdir}', cache=cache)
  out = _run('research.sample', f'--workdir={workdir}',
             '--prompt=To be, or not to [MASK], that is the question', '--top_k=3', cache=cache)
  lines = [l for l in out.splitlines() if l.startswith('[MASK] at piece')]
  assert len(lines) == 1 and lines[0].count(',') >= 2  # three candidates with probabilities


@pytest.mark.slow
def test_encoder_decoder_train_then_beam_search(tmp_path):
  cache, workdir = str(tmp_path / 'cache'), str(tmp_path / 't5')
  config = os.path.join(REPO, 'configs/encoder_decoder/shakespeare.py:tiny')
  _run('research.train', f'--config={config}', f'--workdir={workdir}', cache=cache)
  out = _run('research.sample', f'--workdir={workdir}', '--prompt=Good night, sweet prince',
             '--beam_size=4', '--num_samples=2', '--max_new_tokens=8', cache=cache)
  assert sum(l.startswith('Good night, sweet prince =>') for l in out.splitlines()) == 2
