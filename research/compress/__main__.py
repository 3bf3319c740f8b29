"""`python -m research.compress SUBCOMMAND ...`: see research/compress/__init__.py."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {'quantize': 'research.compress.quantize', 'prune': 'research.compress.prune'}


def main(argv: list[str]) -> int:
  if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
    given = argv[1] if len(argv) > 1 else '(none)'
    print(f'error: subcommand {given!r}: choose one of {sorted(SUBCOMMANDS)}, e.g. '
          '`python -m research.compress quantize --workdir=W --out=W2 --bits=8`',
          file=sys.stderr)
    return 2
  module = importlib.import_module(SUBCOMMANDS[argv[1]])
  # The subcommand parses its own flags, with the subcommand's name as the program name.
  return module.main([f'{argv[0]} {argv[1]}'] + argv[2:])


if __name__ == '__main__':
  sys.exit(main(sys.argv))
