"""Quality of attention patterns: small decoders on Shakespeare, and a long-range retrieval probe.

Variants are written 'PATTERN@WINDOW' with a `model.attention.pattern` (interleaves allowed):
'full', 'sliding@16' (every layer a causal window of 16 keys), 'sliding*3,full@16' (three local
layers : one global). Each variant trains with research.training.trainer.train (so it logs,
evaluates and checkpoints like any run, resumes when rerun, and counts its FLOPs by pattern).

The retrieval probe is experiments/sparse_attention/retrieval.py.
"""

from __future__ import annotations

import dataclasses
import math

from research.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Variant:
  pattern: str
  window: int

  @property
  def name(self) -> str:
    return self.pattern if self.pattern == 'full' else f'{self.pattern}@{self.window}'

  @property
  def slug(self) -> str:
    return self.name.replace('*', 'x').replace(',', '_').replace('@', '_w')


def parse_variant(text: str) -> Variant:
  pattern, at, window = str(text).partition('@')
  try:
    w = int(window) if at else 0
  except ValueError:
    w = -1
  if w < 0 or not pattern or (pattern.strip() != 'full' and w == 0):
    raise ConfigError('sparse_attention.variants', text,
                      "write 'full' or 'PATTERN@WINDOW', e.g. 'sliding*3,full@16'")
  return Variant(pattern.strip(), w)


def variant_overrides(variant: Variant) -> dict:
  return {'model.attention.pattern': variant.pattern,
          'model.attention.window': variant.window}


def receptive_field(variant: Variant, num_layers: int) -> float:
  """How far back information can come from through the stack (inf with any full layer)."""
  from research.layers import patterns as patterns_lib  # pylint: disable=g-import-not-at-top
  kinds = patterns_lib.parse_pattern(variant.pattern)
  layers = [kinds[i % len(kinds)] for i in range(num_layers)]
  if any(k != 'sliding' for k in layers):
    return math.inf
  return num_layers * (variant.window - 1)
