"""Shared command-line plumbing: `--config=path[:arg]` plus `--config.a.b=value` overrides.

absl parses the other flags; the config flags are taken out first so that a bad override fails
with one clear line (research.errors) rather than an absl traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from absl import app

from research import config_lib
from research.parallel import distributed
from research.errors import UserError, exit_on_user_error


def quiet_logs() -> None:
  """Keep the console to our progress lines: JAX/absl INFO chatter goes away."""
  logging.getLogger('absl').setLevel(logging.WARNING)
  logging.getLogger('jax').setLevel(logging.WARNING)


def run_with_config(main: Callable, *, config_required: bool = True,
                    pass_overrides: bool = False) -> None:
  """Runs main(config, argv) as an absl app; `config` is None when no --config was given.

  With `pass_overrides`, a command that reads a saved run's config (research.evaluate) gets the
  `--config.a.b=value` overrides themselves, as main(config, argv, overrides) with overrides a
  list of (key, text), and applies them to that config; they then need no --config file.
  Multi-host flags (--coordinator_address, --num_processes, --process_id) are honoured first.
  """
  try:
    spec, overrides, rest = config_lib.split_config_args(sys.argv[1:])
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)

  @exit_on_user_error
  def absl_main(argv):
    quiet_logs()
    distributed.initialize_from_flags()  # before anything touches a JAX backend
    if spec is None and config_required:
      raise UserError('--config is required, e.g. --config=configs/decoder/shakespeare.py')
    if pass_overrides:
      return main(config_lib.load_config(spec) if spec else None, argv, overrides)
    if spec is None and overrides:
      raise UserError('--config.* overrides need a --config file')
    config = config_lib.load_config(spec, overrides) if spec else None
    return main(config, argv)

  app.run(absl_main, argv=[sys.argv[0]] + rest)
