"""The commands a researcher types, end to end on the real corpus (a tiny config)."""

import json
import pytest
import os
import re
import subprocess
import sys

from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs/decoder/shakespeare.py:tiny')


# What `make train` must not print: absl/glog-format log lines, TFDS preparing a dataset,
# cursor-up codes that nested progress bars leave, libtpu's probing for a TPU.
NOISE = (re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d', re.M), re.compile(re.escape('\x1b[A')),
         re.compile(r'has no dataset_info\.json|Downloading and preparing dataset|'
                    r'downloaded and prepared to'),
         re.compile(r'TPU accelerator type|TPU_WORKER_HOSTNAMES|libtpu'))


def noisy_lines(output: str) -> list[str]:
  return [l for l in re.split(r'[\r\n]', output) if any(p.search(l) for p in NOISE)]


def _run(module, *args, cache, with_stderr=False, platforms_unset=False):
  env = helpers.subprocess_env(LMFORGE_CACHE=cache)
  if platforms_unset:  # as a user's shell: JAX picks its platforms (libtpu probes, if installed)
    env.pop('JAX_PLATFORMS', None)
  result = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return (result.stdout, result.stderr) if with_stderr else result.stdout


@pytest.mark.slow
def test_train_evaluate_sample_benchmark(tmp_path):
  cache, workdir = str(tmp_path / 'cache'), str(tmp_path / 'run')
  out, err = _run('research.train', f'--config={TINY}', f'--workdir={workdir}', cache=cache,
                  with_stderr=True)
  assert not noisy_lines(out + err), noisy_lines(out + err)  # a fresh cache, as on a new clone
  assert 'research.evaluate scores all' in out  # the eval lines say what they cover
  final = json.loads(out.strip().splitlines()[-1])
  assert final['step'] == 20 and final['eval/loss'] < 6.0  # ln(512) = 6.24 at initialisation
  assert sorted(os.listdir(workdir)) == ['.lock', 'checkpoints', 'config.json', 'metrics.jsonl',
                                         'tensorboard', 'tokenizer.model']

  ev = json.loads(_run('research.evaluate', f'--workdir={workdir}', cache=cache).splitlines()[-1])
  assert ev['step'] == 20 and ev['tokens'] > 10_000  # the whole validation split
  assert ev['covers'] == 'the whole validation split' and ev['batches'] == ev['split_batches']
  assert abs(ev['perplexity'] - 2.718281828 ** ev['loss']) < 1e-3 * ev['perplexity']

  text, err = _run('research.sample', f'--workdir={workdir}', '--prompt=ROMEO:',
                   '--max_new_tokens=20', '--temperature=0.8', '--top_p=0.95', '--seed=0',
                   cache=cache, with_stderr=True, platforms_unset=True)
  assert not noisy_lines(text + err), noisy_lines(text + err)  # make test installs libtpu
  assert 'ROMEO:' in text and len(text.strip()) > len('ROMEO:')

  bench = json.loads(_run('research.benchmark', f'--config={TINY}', '--steps=2',
                          cache=cache).splitlines()[-1])
  for key in ('tokens_per_sec', 'mfu', 'step_ms', 'peak_memory'):
    assert bench[key] > 0, key


# The encoder (fill-mask) and encoder-decoder (beam search) commands run end to end in
# tests/test_readme.py, as the README gives them.
