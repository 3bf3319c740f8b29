"""The pieces behind the fault table, in process: the non-finite 'skip' mode, retention with
milestones, research.evaluate on a mismatched config.json, metrics rows, the lock, I/O errors."""

from __future__ import annotations

import errno
import json
import math
import os

import jax
import pytest

from research.errors import UserError
from research.training import (checkpointing, guards, integrity, metrics as metrics_lib,
                               resume_check, trainer, workdir_lock)
from tests import helpers

ONE_DEVICE = jax.devices()[:1]  # one compile for one device: these tests are about the loop


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def test_skip_drops_nonfinite_updates_then_stops_after_max_skips(tmp_path):
  # lr=1e6 diverges within a few steps; every skipped step keeps the old parameters, so the
  # checkpoints written are the finite ones, and the run stops after 3 skips in a row.
  config = helpers.tiny_config(**{'train.lr': 1e6, 'train.warmup_steps': 0, 'train.steps': 20,
                                  'train.on_nonfinite': 'skip', 'train.max_nonfinite_skips': 3,
                                  'train.checkpoint_every': 1, 'train.log_every': 1,
                                  'train.eval_every': 1000, 'train.keep_checkpoints': 50})
  workdir = str(tmp_path)
  with pytest.raises(guards.TrainingStopped, match='3 steps in a row skipped'):
    trainer.train(config, workdir, dataset=helpers.PatternDataset(), devices=ONE_DEVICE)
  rows = metrics_lib.read_metrics(workdir)
  assert any(r.get('train/nonfinite', 0) > 0 for r in rows)
  saved = _steps(workdir)
  assert saved
  for step in saved:  # every checkpoint is complete and finite
    path = integrity.step_dir(os.path.join(workdir, 'checkpoints'), step)
    assert integrity.problem(path) is None and integrity.has_manifest(path)
  run = trainer.build_run(config, devices=ONE_DEVICE)
  manager = checkpointing.make_manager(workdir)
  state = checkpointing.restore(manager, trainer.abstract_state(run))
  manager.close()
  assert guards.all_finite(state.params)


def test_retention_keeps_newest_good_and_milestones_and_evaluate_names_edited_field(tmp_path):
  from research.evaluation import validation  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_config(**{'train.steps': 10, 'train.checkpoint_every': 2,
                                  'train.keep_checkpoints': 2, 'train.keep_every': 4,
                                  'train.eval_every': 1000})
  trainer.train(config, str(tmp_path), dataset=helpers.PatternDataset(), devices=ONE_DEVICE)
  assert _steps(str(tmp_path)) == [4, 8, 10]
  # research.evaluate on a hand-edited config.json (the fault table's row; research.sample is
  # run as a command in test_faults.py): one line naming the field, before any compile.
  path = os.path.join(tmp_path, 'config.json')
  saved = json.load(open(path))
  saved['model']['num_layers'] = 3
  json.dump(saved, open(path, 'w'))
  with pytest.raises(resume_check.ConfigMismatch,
                     match=r'config.json does not match checkpoint step 10 \(model.num_layers: '
                           r'checkpoint 2, config.json 3\)'):
    validation.validation(str(tmp_path))


def test_resume_check_lists_each_changed_field_and_allows_the_resumable(tmp_path):
  config = helpers.tiny_config()
  os.makedirs(tmp_path / 'checkpoints' / '5')
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(resume_check.as_json(config), f)
  changed = helpers.tiny_config(**{'model.d_model': 128, 'objective.name': 'prefix_lm',
                                   'train.steps': 99, 'train.lr': 0.1, 'mesh.data': 2})
  with pytest.raises(resume_check.ConfigMismatch) as e:
    resume_check.check_resume(changed, str(tmp_path))
  lines = str(e.value).splitlines()
  assert '  model.d_model: saved 64, given 128' in lines
  assert '  objective.name: saved "causal_lm", given "prefix_lm"' in lines
  assert not any(field in str(e.value) for field in ('train.steps', 'train.lr', 'mesh.data'))
  resume_check.check_resume(helpers.tiny_config(**{'train.steps': 99}), str(tmp_path))


def test_metrics_rows_are_json_with_nonfinite_flagged_and_resume_drops_later_rows(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path), enabled=True)
  for step in (1, 2, 3):
    writer.write(step, {'train/loss': float('nan') if step == 2 else 1.0})
  writer.close()
  rows = metrics_lib.read_metrics(str(tmp_path))
  assert rows[1] == {'step': 2, 'train/loss': None, 'nonfinite': ['train/loss']}
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 4, "train/lo')  # a crash mid-line
  assert metrics_lib.drop_rows_after(str(tmp_path), 2) == 2
  assert [r['step'] for r in metrics_lib.read_metrics(str(tmp_path))] == [1, 2]


def test_lock_names_its_holder_and_is_released(tmp_path):
  held = workdir_lock.acquire(str(tmp_path))
  with pytest.raises(workdir_lock.WorkdirBusy, match=f'pid {os.getpid()}'):
    workdir_lock.acquire(str(tmp_path))
  held.close()
  workdir_lock.acquire(str(tmp_path)).close()


@pytest.mark.parametrize('exc, expected', [
    (PermissionError(errno.EACCES, 'Permission denied', '/w/x'), '/w/x: Permission denied'),
    (OSError(errno.ENOSPC, 'No space left on device'), '/w: No space left on device'),
    (ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/c/d/x"'),
     '/w: resource exhausted: the disk is full'),
])
def test_io_failures_become_one_line(exc, expected):
  error = guards.io_user_error(exc, '/w')
  assert isinstance(error, UserError) and str(error).startswith(expected)
  assert '\n' not in str(error)
  assert guards.io_user_error(KeyError('bug'), '/w') is None


def test_nonfinite_guard_message_names_step_and_last_good():
  class Saver:
    last_good, directory = 6, '/w/checkpoints'
  config = helpers.tiny_config()
  guard = guards.NonFiniteGuard(config.train, Saver())
  ok = {'loss': 1.0, 'grad_norm': 1.0, guards.NONFINITE: 0.0}
  bad = {'loss': math.inf, 'grad_norm': math.nan, guards.NONFINITE: 1.0}
  with pytest.raises(guards.TrainingStopped,
                     match=r'step 8: loss inf, grad_norm nan .*last good checkpoint is step 6 '
                           r'\(/w/checkpoints/6\)'):
    guard.check(7, [ok, bad])


def test_a_failed_background_save_surfaces_at_the_next_step_naming_it(tmp_path):
  # The write itself fails after save() returned (a disk that fills mid-write): the next
  # step boundary raises, naming the step lost and the last good one, instead of hanging.
  class Manager:
    directory = str(tmp_path / 'checkpoints')

    def all_steps(self):
      return []

    def save(self, step, args, force=False):
      del step, args, force
      return True

    def is_saving_in_progress(self):
      return False

    def wait_until_finished(self):
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file: No space left on device')

  os.makedirs(Manager.directory)
  saver = checkpointing.Saver(Manager(), str(tmp_path), keep=3)
  saver.last_good = 8
  saver.save(10, state=None)
  with pytest.raises(checkpointing.SaveFailed,
                     match=r'checkpoint step 10 was not saved .*No space left on device.*last '
                           r'good checkpoint is step 8'):
    saver.poll()
