"""The fault table of issue 16, one test per row, through the real command line.

Each test starts from a copy of a run with good checkpoints at steps 2, 4, 6 and 8, injects
the fault for real (a diverging learning rate, flipped or missing bytes, a second trainer,
signals, a read-only directory, a full disk), and checks the outcome and that no good
checkpoint was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from research.training import integrity
from tests.reliability.conftest import (assert_each_step_once, error_lines, files_snapshot,
                                        metric_rows, steps)


def _data_files(step_dir: str) -> list[str]:
  """The checkpoint's array data files, largest first."""
  found = []
  for root, _, names in os.walk(os.path.join(step_dir, 'default')):
    if os.path.basename(root) == 'd':
      found += [os.path.join(root, n) for n in names]
  return sorted(found, key=os.path.getsize, reverse=True)


def _intact(workdir: str, step: int) -> bool:
  path = integrity.step_dir(os.path.join(workdir, 'checkpoints'), step)
  return integrity.has_manifest(path) and integrity.problem(path) is None


def _logged_steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return [0]
  with open(path) as f:
    return [json.loads(l)['step'] for l in f if l.strip().endswith('}')] or [0]


def _wait_for_row(workdir: str, min_step: int, proc, timeout: float = 240, *,
                  after_drop: int | None = None) -> None:
  """Until the trainer has logged `min_step` (it is then inside its loop); with `after_drop`,
  only once a resume has dropped the rows after that step (older rows do not count)."""
  deadline = time.monotonic() + timeout
  dropped = after_drop is None
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    top = max(_logged_steps(workdir))
    dropped = dropped or top <= after_drop
    if dropped and top >= min_step:
      return
    time.sleep(0.05)
  raise AssertionError(f'no metrics row for step {min_step} within {timeout} s')


@pytest.mark.slow
def test_divergence_stops_with_last_good_checkpoint_then_resumes(runner, workdir):
  # Row: loss diverges (lr=1e6) -> stop, exit 2, one line; no NaN checkpoint; valid JSON.
  result = runner.run(runner.train_args(workdir, '--config.train.steps=16',
                                        '--config.train.lr=1e6'))
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result.stderr)
  assert 'train.on_nonfinite=stop' in line and 'last good checkpoint is step 8' in line, line
  assert steps(workdir) == [2, 4, 6, 8] and all(_intact(workdir, s) for s in (2, 4, 6, 8))
  rows = metric_rows(workdir)  # strict JSON: no bare NaN
  bad = [r for r in rows if 'nonfinite' in r]
  assert bad and all(r[k] is None for r in bad for k in r['nonfinite'])
  # A healthy resume from step 8: the stopped run's rows after 8 are dropped, and retention
  # (keep 4) deletes only good checkpoints older than the newest four.
  result = runner.run(runner.train_args(workdir, '--config.train.steps=10'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert steps(workdir) == [4, 6, 8, 10] and all(_intact(workdir, s) for s in (4, 6, 8, 10))
  assert_each_step_once(workdir)
  assert not any('nonfinite' in r for r in metric_rows(workdir))


def test_flipped_bytes_fall_back_to_previous_step(runner, workdir):
  # Row: 64 bytes flipped in a data file of the latest checkpoint.
  path = _data_files(os.path.join(workdir, 'checkpoints', '8'))[0]
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(64)
    f.seek(-len(chunk), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in chunk))
  result = runner.run(runner.train_args(workdir, '--config.train.steps=8'))
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [l for l in result.stderr.splitlines() if l.startswith('warning: ')]
  assert len(warnings) == 1 and 'step 8 is damaged' in warnings[0] and 'corrupted' in warnings[0]
  assert 'using step 6' in warnings[0]
  assert steps(workdir, 'checkpoints_damaged') == [8]  # moved aside, not deleted
  assert steps(workdir) == [2, 4, 6, 8] and _intact(workdir, 8)  # step 8 trained again
  assert not any('nonfinite' in r for r in metric_rows(workdir))
  assert_each_step_once(workdir)


def test_truncated_deleted_and_missing_metadata_fall_back(runner, workdir):
  # Row: latest checkpoint truncated / a file deleted / _METADATA deleted.
  ckpt = os.path.join(workdir, 'checkpoints')
  with open(_data_files(os.path.join(ckpt, '8'))[0], 'r+b') as f:
    f.truncate(100)
  os.remove(_data_files(os.path.join(ckpt, '6'))[0])
  os.remove(os.path.join(ckpt, '4', 'default', '_METADATA'))
  result = runner.run(runner.train_args(workdir, '--config.train.steps=4'))
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [l for l in result.stderr.splitlines() if l.startswith('warning: ')]
  assert len(warnings) == 3, result.stderr[-3000:]
  assert 'truncated' in warnings[0] and 'missing' in warnings[1] and '_METADATA' in warnings[2]
  assert all('using step 2' in w for w in warnings)
  assert steps(workdir, 'checkpoints_damaged') == [4, 6, 8]
  assert steps(workdir) == [2, 4] and _intact(workdir, 4)


@pytest.mark.slow
def test_second_trainer_exits_2_and_sigterm_saves_then_exits_143(runner, workdir):
  # Rows: two trainers on one workdir; SIGTERM (preemption).
  args = runner.train_args(workdir, '--config.train.steps=100000',
                           '--config.train.checkpoint_every=100000')
  first = runner.start(args)
  try:
    _wait_for_row(workdir, 10, first)
    config_before = open(os.path.join(workdir, 'config.json')).read()
    second = runner.run(args)
    assert second.returncode == 2, second.stderr[-3000:]
    [line] = error_lines(second.stderr)
    assert 'in use by another trainer' in line and f'pid {first.pid}' in line, line
    assert open(os.path.join(workdir, 'config.json')).read() == config_before
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 143, err[-3000:]
  final = json.loads(out.strip().splitlines()[-1])
  assert final['preempted_by'] == 'SIGTERM'
  stopped = final['preempted_at']
  assert steps(workdir) == [4, 6, 8, stopped] and _intact(workdir, stopped)  # keep 4
  assert_each_step_once(workdir)  # the second trainer logged nothing


def test_resume_with_another_model_changes_nothing(runner, workdir):
  # Row: resume with --config.model.d_model=128 on a d_model=64 run.
  before = files_snapshot(workdir)
  result = runner.run(runner.train_args(workdir, '--config.train.steps=10',
                                        '--config.model.d_model=128'))
  assert result.returncode == 2, result.stderr[-3000:]
  assert '  model.d_model: saved 64, given 128' in result.stderr.splitlines()
  assert 'Traceback' not in result.stderr
  after = files_snapshot(workdir)
  after.pop('.lock')  # the lock file records its holder
  before.pop('.lock')
  assert after == before


def test_hand_edited_config_json_is_named_by_sample(runner, workdir):
  # Row: hand-edited config.json; research.sample says so in one line (research.evaluate goes
  # through the same restore: tests/reliability/test_units.py).
  path = os.path.join(workdir, 'config.json')
  config = json.load(open(path))
  config['model']['d_model'] = 128
  json.dump(config, open(path, 'w'))
  result = runner.module('research.sample', f'--workdir={workdir}', '--prompt=The king',
                         '--max_new_tokens=4')
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result.stderr)
  assert 'config.json does not match checkpoint step 8' in line
  assert 'model.d_model: checkpoint 64, config.json 128' in line


def _without_root_override() -> tuple[str, ...]:
  """A prefix under which permission bits bind (root ignores them): drop root's capability to
  override them, or nothing for other users."""
  if os.geteuid() != 0:
    return ()
  setpriv = shutil.which('setpriv')
  probe = subprocess.run([setpriv, '--bounding-set=-dac_override,-dac_read_search', 'true'],
                         capture_output=True) if setpriv else None
  if probe is None or probe.returncode != 0:
    pytest.skip('running as root without setpriv: permission bits cannot be enforced')
  return (setpriv, '--bounding-set=-dac_override,-dac_read_search', '--')


@pytest.mark.slow
def test_read_only_checkpoints_fail_at_once_naming_the_step_lost(runner, workdir):
  # Row: the checkpoints directory becomes read-only mid-run (here from the first new save).
  prefix = _without_root_override()
  ckpt = os.path.join(workdir, 'checkpoints')
  os.chmod(ckpt, 0o555)
  try:
    result = runner.run(runner.train_args(workdir, '--config.train.steps=12'), prefix=prefix,
                        timeout=200)  # a hang (Orbax's 300 s timeout) fails here
  finally:
    os.chmod(ckpt, 0o755)
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result.stderr)
  assert 'checkpoint step 10 was not saved' in line and 'Permission denied' in line, line
  assert 'last good checkpoint is step 8' in line
  assert steps(workdir) == [2, 4, 6, 8] and all(_intact(workdir, s) for s in (2, 4, 6, 8))


def test_read_only_workdir_is_one_line(runner, workdir):
  # Row: read-only workdir.
  prefix = _without_root_override()
  subprocess.run(['chmod', '-R', 'a-w', workdir], check=True)
  try:
    result = runner.run(runner.train_args(workdir, '--config.train.steps=12'), prefix=prefix)
  finally:
    subprocess.run(['chmod', '-R', 'u+w', workdir], check=True)
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result.stderr)
  assert 'Permission denied' in line and workdir in line and 'writable' in line, line
  assert 'Traceback' not in result.stderr


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_disk_full_is_one_line(runner, workdir):
  # Row: disk full. /dev/full answers every write with ENOSPC, as a full disk does.
  path = os.path.join(workdir, 'metrics.jsonl')
  os.remove(path)
  os.symlink('/dev/full', path)
  result = runner.run(runner.train_args(workdir, '--config.train.steps=10'))
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result.stderr)
  assert 'No space left on device' in line and 'free space' in line, line
  assert 'Traceback' not in result.stderr
  assert steps(workdir) == [2, 4, 6, 8]


@pytest.mark.slow
def test_crash_then_resume_then_sigint(runner, workdir):
  # Rows: crash (kill -9) and resume; SIGINT.
  args = runner.train_args(workdir, '--config.train.steps=100000',
                           '--config.train.checkpoint_every=10')
  crashed = runner.start(args)
  try:
    _wait_for_row(workdir, 13, crashed)  # rows logged after checkpoint 10
  finally:
    crashed.kill()  # SIGKILL: no handler runs
    crashed.communicate()
  restored = max(steps(workdir))
  assert max(r['step'] for r in metric_rows(workdir)) > restored
  resumed = runner.start(args)
  try:
    _wait_for_row(workdir, restored + 2, resumed, after_drop=restored)
    resumed.send_signal(signal.SIGINT)
    out, err = resumed.communicate(timeout=120)
  finally:
    if resumed.poll() is None:
      resumed.kill()
  assert resumed.returncode == 130, err[-3000:]
  final = json.loads(out.strip().splitlines()[-1])
  assert final['preempted_by'] == 'SIGINT' and _intact(workdir, final['preempted_at'])
  leftovers = [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]
  assert not leftovers
  assert_each_step_once(workdir)
