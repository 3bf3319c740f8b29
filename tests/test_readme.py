"""The README's `bash` blocks run, in order, on a fresh directory: its examples chain.

Each command of each ```bash block is parsed from README.md itself (so the test cannot drift
from what a reader copies) and run with the same Python, in a fresh directory that holds links
to the checkout's configs/, experiments/ and benchmarks/ and an empty runs/, with a fresh LMFORGE_CACHE, as
on a new clone. To stay cheap, `substitute()` changes what the commands compute, never which
workdirs and files they read and write:

  research.train --config=FILE[:VARIANT]  ->  FILE:tiny / FILE:VARIANT,tiny, plus
                                             --config.train.steps=TRAIN_STEPS
  experiments.STUDY.run --config=FILE      ->  FILE:tiny (every study config has one)
  experiments.scaling_laws.fit            ->  plus --bootstrap=BOOTSTRAP

A command that none of the rules knows (anything but `python -m ...`) fails the test: add a
rule here, and say in the README what it means.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 3
BOOTSTRAP = 4


def bash_blocks(text: str) -> list[str]:
  """The bodies of the ```bash fenced blocks, in order."""
  return re.findall(r'^```bash\n(.*?)^```', text, flags=re.S | re.M)


def commands(block: str) -> list[list[str]]:
  """Each command of a block as argv: continuation lines joined, comments dropped."""
  joined = re.sub(r'\\\n\s*', ' ', block)
  return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def substitute(argv: list[str]) -> list[str]:
  """The README command, made cheap (see the module docstring); argv[0] is 'python'."""
  if argv[:2] != ['python', '-m'] or len(argv) < 3:
    raise AssertionError(f'tests/test_readme.py has no rule for {shlex.join(argv)}: add one')
  module, args = argv[2], list(argv[3:])
  if module == 'research.train' or re.fullmatch(r'experiments\.\w+\.run', module):
    for i, arg in enumerate(args):
      if arg.startswith('--config='):
        path, _, variant = arg[len('--config='):].partition(':')
        args[i] = f'--config={path}:{variant + "," if variant else ""}tiny'
  if module == 'research.train':
    args.append(f'--config.train.steps={TRAIN_STEPS}')
  elif module == 'experiments.scaling_laws.fit':
    args.append(f'--bootstrap={BOOTSTRAP}')
  return [sys.executable, '-m', module, *args]


def test_parser_reads_blocks_commands_and_continuations():
  text = ('intro\n```bash\npython -m a --x=1   # note\npython -m b \\\n    --y="two words"\n```\n'
          '```\npython -m not_run\n```\n')
  blocks = bash_blocks(text)
  assert len(blocks) == 1
  assert commands(blocks[0]) == [['python', '-m', 'a', '--x=1'],
                                 ['python', '-m', 'b', '--y=two words']]
  assert substitute(['python', '-m', 'research.train', '--config=c.py:lora'])[3:] == [
      '--config=c.py:lora,tiny', f'--config.train.steps={TRAIN_STEPS}']
  assert substitute(['python', '-m', 'experiments.rl.run', '--config=s.py'])[3:] == [
      '--config=s.py:tiny']
  with pytest.raises(AssertionError, match='no rule'):
    substitute(['make', 'train'])


@pytest.mark.docs
def test_readme_blocks_run_in_order_on_a_fresh_directory(tmp_path):
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    blocks = bash_blocks(f.read())
  assert len(blocks) >= 4, 'the README lost its runnable blocks'
  for name in ('configs', 'experiments', 'benchmarks'):
    os.symlink(os.path.join(REPO, name), tmp_path / name)
  env = helpers.subprocess_env(LMFORGE_CACHE=str(tmp_path / 'cache'),
                               PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
  outputs = {}
  for block in blocks:
    for argv in commands(block):
      result = subprocess.run(substitute(argv), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
      assert result.returncode == 0, (shlex.join(argv), result.stderr[-3000:])
      outputs[shlex.join(argv)] = result.stdout
  samples = {cmd: out for cmd, out in outputs.items() if 'research.sample' in cmd}
  # Beam search ran on the sentinel prompt (a 3-step model may well decode an empty target; the
  # README shows what the full config prints).
  t5 = next(out for cmd, out in samples.items() if 'runs/t5' in cmd)
  assert '<extra_id_0> window breaks? =>' in t5, t5
  mlm = next(out for cmd, out in samples.items() if 'runs/mlm' in cmd)
  assert '[MASK] at piece' in mlm, mlm
  mixed = next(out for cmd, out in outputs.items() if 'runs/mix' in cmd)
  assert '"eval/web/loss"' in mixed and '"eval/more/bpb"' in mixed, mixed[-2000:]
  dpo = next(out for cmd, out in outputs.items()
             if 'research.evaluate' in cmd and 'dpo' in cmd)
  assert '"dpo/reward_margin"' in dpo and 'perplexity' not in dpo, dpo
  rl = next(out for cmd, out in outputs.items() if 'shakespeare_grpo' in cmd)
  assert '"rl/reward_mean"' in rl and '"eval/accuracy"' in rl, rl[-2000:]
  rm = next(out for cmd, out in outputs.items()
            if 'research.evaluate' in cmd and 'shakespeare_reward' in cmd)
  assert '"reward/margin"' in rm and '"pairs"' in rm and 'perplexity' not in rm, rm
