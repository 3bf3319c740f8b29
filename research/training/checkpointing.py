"""Orbax checkpoints: asynchronous saves that are checked, kept safely and restored intact.

- A save starts only with finite parameters (research.training.guards checks them first), and
  counts as good once Orbax has finished it; then process 0 writes its checksum manifest
  (research.training.integrity).
- Retention is ours, not Orbax's: Orbax chooses what to delete when a save *starts*, before it
  is known to succeed. Here the newest `keep` good steps (and `keep_every` milestones, by Orbax's
  own preservation policies) are kept, and older ones are deleted only after a newer one is
  known good.
- A failed background save is raised at the next step boundary, naming the step lost.
- A restore takes the newest intact step: a damaged one (checksums, missing files, a failed
  restore, non-finite parameters) is reported in one warning and, for the trainer, moved aside.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from research.errors import UserError
from research.training import integrity, resume_check


def make_manager(workdir: str, *, keep: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """A manager that never deletes by itself (see `Saver.prune`); `keep` is accepted for the
  callers that only restore."""
  del keep
  options = ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=async_save,
      preservation_policy=policies.LatestN(n=None),
      # The step directory is made before save() returns: a permission error is raised there,
      # in the loop, instead of timing out in a background thread.
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
  # The handler named up front lets item_metadata() read a checkpoint's shapes before any
  # restore (without it Orbax warns that it cannot restore the item 'default').
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')),
                               options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(manager: ocp.CheckpointManager, step: int, state, *, force: bool = False) -> bool:
  """Starts an (asynchronous) save; every process writes its own shards."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


class SaveFailed(UserError):
  """A checkpoint could not be written; the message names the step lost and the fix."""


@dataclasses.dataclass
class _Info:  # what Orbax's preservation policies read
  step: int
  time: datetime.datetime
  metrics: dict | None = None


class Saver:
  """The trainer's checkpoints: saves, their completion and retention."""

  def __init__(self, manager: ocp.CheckpointManager, workdir: str, *, keep: int,
               keep_every: int = 0, config_json: dict | None = None):
    self.manager, self.workdir = manager, workdir
    self.directory = str(manager.directory)
    policy = policies.LatestN(n=keep)
    if keep_every:
      policy = policies.AnyPreservationPolicy(
          [policy, policies.EveryNSteps(interval_steps=keep_every)])
    self.policy = policy
    self.config_json = config_json
    self.pending = None  # the step being saved in the background
    self.last_good = None  # the newest step known good

  def _check_writable(self, step: int) -> None:
    """A cheap probe before each save: a read-only or full disk is reported here, in one
    line, rather than as a background failure."""
    probe = os.path.join(self.directory, f'.write-probe-{os.getpid()}')
    try:
      with open(probe, 'w') as f:
        f.write('x')
      os.remove(probe)
    except OSError as e:
      raise self._failed(step, e.strerror or str(e)) from None

  def _failed(self, step: int, why: str) -> SaveFailed:
    last = (f'the last good checkpoint is step {self.last_good}' if self.last_good is not None
            else 'no checkpoint was saved yet')
    return SaveFailed(f'checkpoint step {step} was not saved ({self.directory}: {why}); {last}. '
                      f'Make {self.directory} writable (or free space) and rerun to resume')

  def save(self, step: int, state, *, force: bool = False) -> None:
    self.wait()  # the previous save completes (or fails) before the next begins
    if jax.process_count() > 1:  # process 0's manifests are written before anyone prunes
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'lmforge:saved_before_{step}')
    self.prune()
    if jax.process_index() == 0:
      self._check_writable(step)
    try:
      save(self.manager, step, state, force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(step, _first_line(e)) from e
    self.pending = step

  def poll(self) -> None:
    """At each step boundary, without blocking: completes a finished background save, or
    raises the failure of one."""
    if self.pending is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until the background save is done; raises SaveFailed if it failed."""
    if self.pending is None:
      return
    step, self.pending = self.pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(step, _first_line(e)) from e
    directory = integrity.step_dir(self.directory, step)
    if not os.path.isdir(directory):
      raise self._failed(step, 'the save did not complete')
    if jax.process_index() == 0:
      try:
        integrity.write_manifest(directory, self.config_json)
      except OSError as e:
        raise self._failed(step, f'writing its checksums: {e.strerror}') from e
    self.last_good = step

  def prune(self) -> None:
    """Deletes good steps beyond the newest `keep` (milestones stay). Steps without a manifest
    (not known good) are never deleted here."""
    steps = sorted(s for s in self.manager.all_steps()
                   if integrity.has_manifest(integrity.step_dir(self.directory, s)))
    infos = [_Info(s, datetime.datetime.now()) for s in steps]
    keep = self.policy.should_preserve(infos, context=policies.PreservationContext())
    for info, kept in zip(infos, keep):
      if not kept and info.step != self.last_good:
        self.manager.delete(info.step)

  def finish(self) -> None:
    self.wait()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('lmforge:saved_at_finish')
    self.prune()

  def close(self) -> None:
    """On the way out after an error: good saves in flight still complete."""
    try:
      self.wait()
      self.manager.close()
    except Exception:  # pylint: disable=broad-except
      pass  # the error being raised already says what went wrong


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else type(e).__name__)[:300]


def _restore_step(manager, abstract_state, step: int):
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except ValueError:
    # Written before TrainState had `model_state` (always {} for dense models): restore the
    # other fields.
    if getattr(abstract_state, 'model_state', None) != {}:
      raise
    fields = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
              if f.name != 'model_state'}
    restored = manager.restore(step, args=ocp.args.StandardRestore(fields))
    return abstract_state.replace(**restored)


def _finite_params(state) -> bool:
  from research.training import guards  # pylint: disable=g-import-not-at-top
  return guards.all_finite(state.params)


def restore_good(manager: ocp.CheckpointManager, abstract_state, workdir: str, *,
                 move_damaged: bool, config_json: dict | None = None):
  """The newest intact checkpoint (or None when there is none), restored onto the shardings of
  `abstract_state`. Each damaged step on the way gets one warning and, with `move_damaged`
  (the trainer, process 0), is moved to WORKDIR/checkpoints_damaged/."""
  directory = str(manager.directory)
  damaged = []
  state = None
  for step in sorted(manager.all_steps(), reverse=True):
    path = integrity.step_dir(directory, step)
    verified = integrity.has_manifest(path)
    why = integrity.problem(path)
    if why is None:
      try:
        state = _restore_step(manager, abstract_state, step)
      except Exception as e:  # pylint: disable=broad-except
        if verified:  # intact files that do not restore: not damage, a real error
          raise
        why = f'it does not restore ({_first_line(e)})'
    if why is None and not _finite_params(state):
      why, state = 'its parameters are not finite', None
    if why is None:
      if not verified and move_damaged:  # complete but written before its manifest was
        integrity.write_manifest(path, config_json)
      break
    state = None
    damaged.append((step, why))
  restored_step = None if state is None else int(state.step)
  for step, why in damaged:
    where = ''
    if move_damaged:
      where = f'; moved to {integrity.move_aside(workdir, integrity.step_dir(directory, step), step)}'
    then = (f'using step {restored_step}' if restored_step is not None
            else 'no intact checkpoint is left')
    integrity.warn(f'checkpoint step {step} is damaged: {why}{where}; {then}')
  if damaged:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('lmforge:damaged_checkpoints_moved')
    manager.reload()
  return state


def _check_shapes(manager, abstract_state, step: int, workdir: str) -> None:
  """Parameter shapes against the checkpoint's metadata: one line instead of Orbax's errors."""
  try:
    saved = manager.item_metadata(step)
  except Exception:  # pylint: disable=broad-except
    return  # unreadable metadata: the restore reports it
  saved_params = saved.get('params') if isinstance(saved, dict) else getattr(saved, 'params',
                                                                            None)
  if saved_params is None:
    return
  flat_saved = {jax.tree_util.keystr(k): v for k, v in
                jax.tree_util.tree_flatten_with_path(saved_params)[0]}
  flat_given = {jax.tree_util.keystr(k): v for k, v in
                jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]}
  config = os.path.join(workdir, 'config.json')
  for key, given in flat_given.items():
    if key not in flat_saved:
      raise resume_check.ConfigMismatch(
          f'{config} does not match checkpoint step {step}: params{key} is not in the '
          'checkpoint (model.num_layers or another model field changed?); put back the '
          'values it was trained with')
    shape = tuple(getattr(flat_saved[key], 'shape', ()) or ())
    if shape and shape != tuple(given.shape):
      raise resume_check.ConfigMismatch(
          f'{config} does not match checkpoint step {step}: params{key} is {shape} in the '
          f'checkpoint, {tuple(given.shape)} from config.json; put back the model values it '
          'was trained with')
  if len(flat_saved) != len(flat_given):
    raise resume_check.ConfigMismatch(
        f'{config} does not match checkpoint step {step}: the checkpoint has '
        f'{len(flat_saved)} parameter arrays, config.json {len(flat_given)}; put back the model '
        'values it was trained with')


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the latest intact (or `step`) checkpoint onto the shardings in `abstract_state`,
  for readers (research.sample, research.evaluate): nothing in the workdir is changed.

  `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings for the *current* mesh, so a
  checkpoint written on one mesh (or number of processes) restores on another.

  Raises:
    UserError: the workdir's config.json does not describe the checkpoint, or `step` is damaged.
  """
  directory = str(manager.directory)
  workdir = os.path.dirname(directory)
  steps = sorted(manager.all_steps(), reverse=True)
  if step is None:
    for candidate in steps:
      why = integrity.problem(integrity.step_dir(directory, candidate))
      if why is None:
        step = candidate
        break
      integrity.warn(f'checkpoint step {candidate} is damaged: {why}; trying an older one')
    if step is None:
      if steps:
        raise UserError(f'{directory} holds no intact checkpoint (steps {sorted(steps)} are all '
                        'damaged): rerun research.train to train one')
      return None
  else:
    why = integrity.problem(integrity.step_dir(directory, step))
    if why is not None:
      raise UserError(f'checkpoint step {step} in {directory} is damaged: {why}; choose another '
                      f'--step (available: {sorted(steps)})')
  manifest = integrity.read_manifest(integrity.step_dir(directory, step)) or {}
  resume_check.check_checkpoint_config(workdir, step, manifest.get('config'))
  _check_shapes(manager, abstract_state, step, workdir)
  return _restore_step(manager, abstract_state, step)


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
