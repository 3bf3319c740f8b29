"""Fault tests through the real command line: one small run trained once per session, copied
into each test's workdir, then damaged, signalled or contended for as the issue's table says.

Every command runs in a subprocess with one CPU device, a local text corpus (no corpus build)
and a persistent JAX compilation cache shared by the session, so each run costs mostly its
start-up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, 'configs/decoder/shakespeare.py:tiny')
# The base run: checkpoints at steps 2, 4, 6 and 8, all kept.
BASE_STEPS = 8


class Runner:
  """Runs lmforge commands on the session's corpus and caches."""

  def __init__(self, root: str):
    self.root = root
    self.corpus = os.path.join(root, 'corpus')
    self.env = helpers.subprocess_env(
        LMFORGE_CACHE=os.path.join(root, 'cache'),
        JAX_COMPILATION_CACHE_DIR=os.path.join(root, 'jax_cache'),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')

  def train_args(self, workdir: str, *overrides: str) -> list[str]:
    return [sys.executable, '-m', 'research.train', f'--config={TINY}', f'--workdir={workdir}',
            f'--config.data.source=text:{self.corpus}/*.txt',
            '--config.train.log_every=1', '--config.train.eval_every=1000',
            '--config.train.eval_batches=1', '--config.train.checkpoint_every=2',
            '--config.train.keep_checkpoints=4', *overrides]

  def run(self, args: list[str], *, prefix: tuple[str, ...] = (), timeout: int = 300):
    return subprocess.run([*prefix, *args], cwd=REPO, env=self.env, capture_output=True,
                          text=True, timeout=timeout)

  def start(self, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

  def module(self, module: str, *args: str, **kwargs):
    return self.run([sys.executable, '-m', module, *args], **kwargs)


def _write_corpus(directory: str) -> None:
  """Twelve small documents of English-like lines: enough for a 512-piece tokenizer."""
  os.makedirs(directory)
  rng = random.Random(0)
  words = ('the king and queen of a land far away said that all men must go to war for love '
           'and honour while the fool sang songs of night day sun moon star river sea fire').split()
  for i in range(12):
    with open(os.path.join(directory, f'doc{i:02d}.txt'), 'w') as f:
      for _ in range(300):
        line = ' '.join(rng.choice(words) for _ in range(rng.randint(5, 12)))
        f.write(line.capitalize() + '.\n')


@pytest.fixture(scope='session')
def runner(tmp_path_factory) -> Runner:
  root = str(tmp_path_factory.mktemp('reliability'))
  r = Runner(root)
  _write_corpus(r.corpus)
  return r


@pytest.fixture(scope='session')
def base_run(runner) -> str:
  workdir = os.path.join(runner.root, 'base')
  result = runner.run(runner.train_args(workdir, f'--config.train.steps={BASE_STEPS}'))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture
def workdir(base_run, tmp_path) -> str:
  """A private copy of the base run (checkpoints 2, 4, 6, 8)."""
  path = str(tmp_path / 'run')
  shutil.copytree(base_run, path, symlinks=True)
  return path


def steps(workdir: str, directory: str = 'checkpoints') -> list[int]:
  path = os.path.join(workdir, directory)
  if not os.path.isdir(path):
    return []
  return sorted(int(name.split('.')[0]) for name in os.listdir(path)
                if name.split('.')[0].isdigit() and not name.endswith('tmp'))


def _no_constants(name):
  raise ValueError(f'not JSON: {name}')


def metric_rows(workdir: str) -> list[dict]:
  """metrics.jsonl parsed strictly (NaN or Infinity are not JSON)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line, parse_constant=_no_constants) for line in f if line.strip()]


def assert_each_step_once(workdir: str) -> None:
  """Training rows (train/loss) and eval rows each appear once per step, in order."""
  rows = metric_rows(workdir)
  for key in ('train/loss', 'eval/loss'):
    logged = [r['step'] for r in rows if key in r]
    assert logged == sorted(set(logged)), (key, logged)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.replace('\r', '\n').splitlines() if 'error: ' in line]


def files_snapshot(workdir: str) -> dict[str, tuple[int, int]]:
  """Every file's (size, mtime in ns): what a command that must change nothing compares."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      st = os.lstat(path)
      out[os.path.relpath(path, workdir)] = (st.st_size, st.st_mtime_ns)
  return out
