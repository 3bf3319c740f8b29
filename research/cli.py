"""Shared command-line plumbing: `--config=path[:arg]` plus `--config.a.b=value` overrides.

absl parses the other flags; the config flags are taken out first so that a bad override fails
with one clear line (research.errors) rather than an absl traceback. Two things absl does not do
are done here, before absl sees the command line: `--help` lists the command's flags and every
config field with its documentation (research.config_docs), and an unknown flag exits 2 with a
suggestion (`--steps=60` -> `--config.train.steps=60`).
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from typing import Callable, Sequence

from absl import app, flags

from research import config_docs, config_lib
from research.parallel import distributed
from research.errors import UserError, exit_on_user_error


def quiet_backends(environ=os.environ) -> str | None:
  """Keeps JAX from probing for a TPU on a machine that has none; returns what it set.

  With libtpu installed (`make test` installs it for the ahead-of-time compile tests) JAX tries
  the TPU backend first, and libtpu logs "could not determine TPU accelerator type" warnings
  before JAX falls back to the CPU. When no TPU chip is present, no GPU plugin is installed and
  the user has not chosen platforms, the CPU is the only backend that can start: say so
  (JAX_PLATFORMS=cpu). Call before anything starts a JAX backend.
  """
  if environ.get('JAX_PLATFORMS') or environ.get('JAX_PLATFORM_NAME'):
    return None
  from research import xla_flags  # pylint: disable=g-import-not-at-top
  has_libtpu = xla_flags._find_spec('libtpu') is not None  # pylint: disable=protected-access
  if xla_flags.gpu_expected(environ) or not has_libtpu:
    return None
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except Exception:  # pylint: disable=broad-except  # private API: leave JAX to decide
    return None
  if chips:
    return None
  environ['JAX_PLATFORMS'] = 'cpu'
  if environ is os.environ and 'jax' in sys.modules:  # imported already: the env var was read
    sys.modules['jax'].config.update('jax_platforms', 'cpu')
  return 'cpu'


def quiet_logs() -> None:
  """Keep the console to our progress lines: JAX/absl INFO chatter goes away."""
  logging.getLogger('absl').setLevel(logging.WARNING)
  logging.getLogger('jax').setLevel(logging.WARNING)
  # TFDS draws nested progress bars while it prepares a dataset (the Shakespeare corpus on the
  # first run); nested bars leave cursor-up escape codes ("[A") in any log. The training bar is
  # the only progress shown.
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tfds.disable_progress_bar()


HELP_ARGS = ('--help', '-h', '-help', '--helpshort', '--helpfull', '-?')

# Flags absl and JAX define in every process that a user may still pass on purpose.
_ALWAYS_ACCEPTED = frozenset({'help', 'helpshort', 'helpfull', 'helpxml', 'flagfile', 'undefok',
                              'logtostderr', 'alsologtostderr', 'verbosity', 'v', 'log_dir',
                              'stderrthreshold', 'showprefixforinfo', 'only_check_args',
                              'run_with_pdb', 'pdb_post_mortem', 'pdb', 'run_with_profiling',
                              'profile_file', 'use_cprofile_for_profiling'})


def _command_name() -> str:
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  if not (spec and spec.name):
    return os.path.basename(sys.argv[0])
  name = spec.name.removesuffix('.__main__')  # a package run as a command: research.compress
  subcommand = sys.argv[1:2] if name != spec.name and sys.argv[1:2] else []
  return ' '.join([f'python -m {name}'] + subcommand)


def command_help(*, uses_config: bool, config_spec: str | None = None) -> str:
  """The command's docstring, its own flags with their help, and (for commands that read a
  config) every config section and field with its documentation."""
  main = sys.modules.get('__main__')
  parts = [(main.__doc__ or '').strip() if main else '', '', 'flags:']
  for flag in flags.FLAGS.get_key_flags_for_module(main) if main else []:
    default = '' if flag.default is None else f' (default {flag.default!r})'
    parts.append(f'  --{flag.name}: {flag.help}{default}')
  parts.append('  --coordinator_address, --num_processes, --process_id: multi-host start-up '
               "(JAX's jax.distributed)")
  if uses_config:
    parts.append('  --config=FILE[:VARIANT]: a config file (configs/...); --config.SECTION.FIELD'
                 '=VALUE overrides a field')
    config = None
    if config_spec:
      config = config_lib.load_config_file(config_spec)  # its values, before validation
    parts += ['', config_docs.config_help(config)]
  return '\n'.join(_wrap(line) for part in parts for line in (part.splitlines() or [''])) + '\n'


def _wrap(line: str, width: int = 100) -> str:
  if len(line) <= width:
    return line
  indent = line[:len(line) - len(line.lstrip())]
  return textwrap.fill(line, width, subsequent_indent=indent + '    ', break_long_words=False,
                       break_on_hyphens=False)


def _flag_name(arg: str) -> str | None:
  """'--steps=60' -> 'steps'; '--nofoo' -> 'nofoo'; None for a positional argument."""
  if not arg.startswith('-') or arg in ('-', '--'):
    return None
  return arg.lstrip('-').split('=', 1)[0]


def check_flags(argv: Sequence[str], *, uses_config: bool, config=None,
                flag_values: flags.FlagValues | None = None) -> None:
  """Raises UserError naming the first flag this command does not define, with what was
  probably meant: a config field of that name (--steps -> --config.train.steps) or a flag
  spelt alike. Called before absl parses, whose own message offers no hint. `flag_values`: a
  subcommand's own flags (research.compress), instead of the process's."""
  registry = flags.FLAGS if flag_values is None else flag_values
  known = set(registry) | _ALWAYS_ACCEPTED
  for arg in argv:
    name = _flag_name(arg)
    if name is None or name in known:
      continue
    if name.startswith('no') and name[2:] in known and isinstance(
        registry[name[2:]].value, bool):
      continue  # absl's --noflag form of a boolean
    if flag_values is not None:
      own = [registry[f] for f in registry]
    else:
      own = sorted(f for f in flags.FLAGS.get_key_flags_for_module(sys.modules.get('__main__'))
                   ) if sys.modules.get('__main__') else []
    candidates = config_docs.suggest(name, [f.name for f in own] + [
        'coordinator_address', 'num_processes', 'process_id'],
                                     config if uses_config else None)
    if not uses_config:
      candidates = [c for c in candidates if not c.startswith('--config.')]
    value = arg.split('=', 1)[1] if '=' in arg else None
    hint = ''
    if candidates:
      shown = [c + (f'={value}' if value is not None else '') for c in candidates[:3]]
      hint = f'; did you mean {" or ".join(shown)}?'
    raise UserError(f'unknown flag --{name}{hint} ({_command_name()} --help lists the flags'
                    + (' and config fields)' if uses_config else ')'))


def handle_help(argv: Sequence[str], *, uses_config: bool,
                config_spec: str | None = None) -> None:
  """Prints the command's help and exits 0 when argv asks for it."""
  if any(arg in HELP_ARGS or arg.startswith('--help=') for arg in argv):
    try:
      text = command_help(uses_config=uses_config, config_spec=config_spec)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    sys.stdout.write(text)
    sys.exit(0)


def run_plain(main: Callable) -> None:
  """Runs an absl main that reads no config, with --help and the unknown-flag check."""
  try:
    handle_help(sys.argv[1:], uses_config=False)
    check_flags(sys.argv[1:], uses_config=False)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  app.run(main)


def run_with_config(main: Callable, *, config_required: bool = True,
                    pass_overrides: bool = False) -> None:
  """Runs main(config, argv) as an absl app; `config` is None when no --config was given.

  With `pass_overrides`, a command that reads a saved run's config (research.evaluate) gets the
  `--config.a.b=value` overrides themselves, as main(config, argv, overrides) with overrides a
  list of (key, text), and applies them to that config; they then need no --config file.
  Multi-host flags (--coordinator_address, --num_processes, --process_id) are honoured first.
  """
  quiet_backends()
  try:
    spec, overrides, rest = config_lib.split_config_args(sys.argv[1:])
    handle_help(rest, uses_config=True, config_spec=spec)
    check_flags(rest, uses_config=True)
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
