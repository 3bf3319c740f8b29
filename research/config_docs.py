"""The documentation of every config field, read from `base_config()`'s own comments.

`base_config()` documents each field where it is set: a comment at the end of the line, or
comment lines just above it. Reading those comments (rather than keeping a second copy of the
text) means `--help` can never disagree with the code. Used by research.cli for `--help` and
for suggesting `--config.train.steps` when someone types `--steps`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from typing import Any

from research import config_lib

_ASSIGN = re.compile(r'^\s*c\.([A-Za-z_][\w.]*)\s*=\s*(.*?)\s*(?:#\s*(.*))?$')
_COMMENT = re.compile(r'^\s*#\s?(.*)$')


@dataclasses.dataclass(frozen=True)
class Field:
  path: str  # 'train.steps'
  default: Any
  doc: str  # '' when base_config() says nothing about it
  is_section: bool = False


def base_fields() -> list[Field]:
  """Every section and field of base_config(), in its order, with its comments."""
  base = config_lib.base_config()
  lines = inspect.getsource(config_lib.base_config).splitlines()
  fields, pending = [], []
  for line in lines:
    comment = _COMMENT.match(line)
    if comment:
      pending.append(comment.group(1).strip())
      continue
    match = _ASSIGN.match(line)
    if not match:
      pending = []  # a blank line or other code ends a comment block
      continue
    path, value, trailing = match.group(1), match.group(2), match.group(3)
    doc = ' '.join(pending + ([trailing.strip()] if trailing else []))
    pending = []
    is_section = value.startswith('ml_collections.ConfigDict(')
    fields.append(Field(path, None if is_section else _get(base, path), doc, is_section))
  return fields


def _get(config, path: str):
  node = config
  for name in path.split('.'):
    node = node[name]
  return node


def all_paths(config) -> list[str]:
  """The dotted path of every leaf field of `config`."""
  out = []
  for key in config.keys():
    value = config[key]
    if hasattr(value, 'keys') and not isinstance(value, dict):
      out += [f'{key}.{sub}' for sub in all_paths(value)]
    else:
      out.append(key)
  return out


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + '...'


def config_help(config=None) -> str:
  """Sections and fields with their documentation; values from `config` when given (a loaded
  config file), else base_config()'s defaults. Fields the file adds (an experiment's section)
  are listed after, with their values."""
  lines = ['config fields: override any with --config.SECTION.FIELD=VALUE '
           '(documented in research/config_lib.py base_config())']
  documented = set()
  for field in base_fields():
    documented.add(field.path)
    depth = field.path.count('.')
    indent = '  ' * (depth + 1)
    if field.is_section:
      lines.append('')
      lines.append(f'{indent}{field.path}:' + (f'  {field.doc}' if field.doc else ''))
      continue
    value = field.default
    if config is not None:
      try:
        value = _get(config, field.path)
      except (KeyError, AttributeError):
        pass
    lines.append(f'{indent}--config.{field.path}={_short(value)}'
                 + (f'\n{indent}    {field.doc}' if field.doc else ''))
  if config is not None:
    extra = [p for p in all_paths(config) if p not in documented]
    if extra:
      lines += ['', '  fields this config file adds:']
      lines += [f'    --config.{p}={_short(_get(config, p))}' for p in extra]
  return '\n'.join(lines)


def suggest(name: str, flag_names, config=None) -> list[str]:
  """Flags a mistyped `--name` probably meant: config fields whose last part is `name` (so
  --steps -> --config.train.steps), then close spellings among the flags and fields."""
  paths = all_paths(config if config is not None else config_lib.base_config())
  exact = [f'--config.{p}' for p in paths if p.split('.')[-1] == name or p == name]
  if exact:
    return exact
  flag_names = list(flag_names)
  close_flags = [f for f in flag_names if f.startswith(name) or name.startswith(f)]
  close_flags += [f for f in difflib.get_close_matches(name, flag_names, n=2, cutoff=0.75)
                  if f not in close_flags]
  leaves = {p.split('.')[-1]: p for p in paths}
  close_fields = difflib.get_close_matches(name, list(leaves), n=2, cutoff=0.75)
  return [f'--{f}' for f in close_flags] + [f'--config.{leaves[f]}' for f in close_fields]
