"""Guards around the training loop: non-finite steps, signals, and I/O failures as one line.

Non-finite values are detected on device inside the jitted step (a 0/1 `nonfinite` metric
beside the loss) and read on the host only where the loop already syncs: at log steps and
before a checkpoint. 'stop' ends the run there; 'skip' drops the update on device (parameters,
optimizer and model state stay those before the step) and the host counts consecutive skips.
"""

from __future__ import annotations

import errno
import math
import signal
from typing import Any

import jax
import jax.numpy as jnp

from research.errors import UserError

NONFINITE = 'nonfinite'  # the per-step metric: 1.0 when loss or gradient norm is not finite
SIGINT_EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C


class TrainingStopped(UserError):
  """The run stopped on purpose (a non-finite step, a lost save); the message says why."""


class Diverged(TrainingStopped):
  """The run stopped on non-finite losses, gradients or parameters: a sweep over learning
  rates records it as a result rather than a failure."""


def guard_step(train_config, state, new_state, metrics: dict):
  """In the jitted step: flags a non-finite loss or gradient norm and, with
  on_nonfinite='skip', keeps the old state (but the new step count) for such a step."""
  ok = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
  metrics = {**metrics, NONFINITE: 1.0 - ok.astype(jnp.float32)}
  if train_config.on_nonfinite == 'skip':
    kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    new_state = kept.replace(step=new_state.step)
  return new_state, metrics


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def all_finite(tree) -> bool:
  return bool(_all_finite(tree))


class NonFiniteGuard:
  """Host side: reads the per-step flags the loop has fetched anyway."""

  def __init__(self, train_config, saver):
    self.mode = train_config.on_nonfinite
    self.max_skips = train_config.max_nonfinite_skips
    self.saver = saver  # its last_good: the newest checkpoint known good, for the message
    self.consecutive = 0
    self.skipped = 0
    self.checked_through = -1  # steps up to this one were read already (save, then log)

  def _last_good(self) -> str:
    step = self.saver.last_good
    if step is None:
      return 'there is no good checkpoint yet'
    return f'the last good checkpoint is step {step} ({self.saver.directory}/{step})'

  def check(self, first_step: int, host_metrics: list[dict]) -> int:
    """`host_metrics[i]` is step first_step + i. Returns the number of newly skipped steps;
    raises TrainingStopped when the run must stop."""
    skipped = 0
    for i, m in enumerate(host_metrics):
      step = first_step + i
      if step <= self.checked_through:
        continue
      self.checked_through = step
      if not float(m[NONFINITE]):
        self.consecutive = 0
        continue
      what = ', '.join(f'{k} {float(m[k])}' for k in ('loss', 'grad_norm')
                       if not math.isfinite(float(m[k])))
      if self.mode == 'stop':
        raise Diverged(
            f'step {step}: {what} (train.on_nonfinite=stop): stopped without saving; '
            f'{self._last_good()}. Rerun to resume from it, with a lower train.lr or '
            "train.on_nonfinite=skip")
      skipped += 1
      self.consecutive += 1
      if self.consecutive >= self.max_skips:
        raise Diverged(
            f'step {step}: {what}, {self.consecutive} steps in a row skipped '
            f'(train.max_nonfinite_skips={self.max_skips}): stopped; {self._last_good()}. '
            'Lower train.lr or raise train.max_nonfinite_skips')
    self.skipped += skipped
    return skipped

  def check_params(self, step: int, state) -> None:
    """Before a checkpoint: no checkpoint with non-finite parameters is ever written."""
    if not all_finite(state.params):
      raise Diverged(
          f'step {step}: the parameters are not finite; not saved. {self._last_good()}. '
          'Rerun to resume from it, with a lower train.lr')


class Interrupts:
  """SIGTERM (preemption) and SIGINT (Ctrl-C) become a flag the loop checks after each step:
  it saves a checkpoint, then the command exits non-zero. A second Ctrl-C aborts at once (the
  default handler is back after the first)."""

  def __init__(self):
    self.requested = None  # the signal's name once one arrived
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.SIG_DFL)  # the second Ctrl-C kills the process

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


# I/O failures that the user fixes outside lmforge.
_FIXES = {
    errno.EACCES: 'make it writable (or choose another --workdir)',
    errno.EPERM: 'make it writable (or choose another --workdir)',
    errno.EROFS: 'the file system is read-only: choose a --workdir on a writable one',
    errno.ENOSPC: 'the disk is full: free space (old runs, caches) or choose another --workdir',
    errno.EDQUOT: 'the disk quota is exhausted: free space or choose another --workdir',
}
# The same failures as TensorStore / Orbax report them (a ValueError with a status text).
_TEXT = (('No space left on device', errno.ENOSPC), ('RESOURCE_EXHAUSTED', errno.ENOSPC),
         ('Read-only file system', errno.EROFS), ('Permission denied', errno.EACCES),
         ('PERMISSION_DENIED', errno.EACCES))


def _chain(exc: BaseException):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def io_user_error(exc: BaseException, default_path: str) -> UserError | None:
  """One line (path, reason, fix) for a permission or disk-full failure anywhere in `exc`'s
  chain; None for anything else (a bug keeps its traceback)."""
  for e in _chain(exc):
    if isinstance(e, OSError) and e.errno in _FIXES:
      path = e.filename or default_path
      return UserError(f'{path}: {e.strerror}: {_FIXES[e.errno]}')
    text = str(e)
    for needle, code in _TEXT:
      if needle in text:
        return UserError(f'{default_path}: {needle.replace("_", " ").lower()}: {_FIXES[code]}')
  return None

