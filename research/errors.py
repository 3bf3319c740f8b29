"""User-facing errors: one line naming the field, the bad value and the fix.

Library code raises `UserError` (or its subclass `ConfigError`); entry points wrap their main in
`exit_on_user_error`, which prints the message and exits with status 2, without a traceback.
Anything else is a bug in lmforge and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable


class UserError(Exception):
  """An error the user can fix; its message is the whole story."""


class ConfigError(UserError):
  """A config field holds a value that cannot work."""

  def __init__(self, field: str, value: Any, fix: str):
    self.field, self.value, self.fix = field, value, fix
    super().__init__(f"{field}={value!r}: {fix}")


def exit_on_user_error(main: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates an entry point so a `UserError` exits 2 with one line on stderr."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped
