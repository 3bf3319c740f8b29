"""One trainer per workdir: an exclusive `fcntl` lock on WORKDIR/.lock for the run's lifetime.

The kernel releases the lock when the process exits, however it exits, so a crash never leaves
a stale lock behind; the file itself stays and only records who held it last. Multi-host runs
take it on process 0 alone (the workdir is shared storage) and every process learns the result,
so that all of them stop together.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

import jax
import numpy as np

from research.errors import UserError

LOCK_FILE = '.lock'


class WorkdirBusy(UserError):
  """Another trainer holds the workdir."""


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    text = ''
  return text or 'an unknown process'


def acquire(workdir: str):
  """Takes the lock; returns the open file that holds it (close it to release).

  Raises:
    WorkdirBusy: another process holds it; the message names its host and pid.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  f = open(path, 'a+')  # never truncates: a holder's record stays readable until we own it
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.close()
    raise WorkdirBusy(f'{workdir} is in use by another trainer ({_holder(path)}): wait for it '
                      'to finish or stop it, or choose another --workdir') from None
  f.seek(0)
  f.truncate()
  f.write(f'host {socket.gethostname()} pid {os.getpid()}\n')
  f.flush()
  return f


def _all_agree(ok: bool) -> bool:
  """Process 0's answer, on every process (multi-host only)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(ok)))


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir's lock for the body (process 0 in multi-host runs)."""
  handle, error = None, None
  if jax.process_index() == 0:
    try:
      handle = acquire(workdir)
    except WorkdirBusy as e:
      error = e
  if jax.process_count() > 1 and not _all_agree(error is None):
    error = error or WorkdirBusy(f'{workdir} is in use by another trainer (see process 0)')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if handle is not None:
      handle.close()
