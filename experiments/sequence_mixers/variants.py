"""Study variants: a model.mixer cycle, optionally a depth, or attention in a sliding window.

  'gated_deltanet'               every layer Gated DeltaNet (the config's num_layers)
  'gated_deltanet*3,attention'   a 3:1 hybrid (model.mixer.pattern, cyclic over the layers)
  'gated_deltanet*7,attention/8' the same with 8 layers (a 7:1 hybrid needs 8)
  'sliding@256'                  attention in every layer, a causal window of 256 keys
                                 (model.attention.pattern='sliding'; decoding keeps a rolling
                                 cache of 256 slots)
"""

from __future__ import annotations

import dataclasses

from research.errors import ConfigError
from research.layers import mixers


@dataclasses.dataclass(frozen=True)
class Variant:
  pattern: str  # model.mixer.pattern
  num_layers: int = 0  # 0: the config's
  window: int = 0  # > 0: attention is a sliding window of this many keys

  @property
  def name(self) -> str:
    base = f'sliding@{self.window}' if self.window else self.pattern
    return base + (f'/{self.num_layers}' if self.num_layers else '')

  @property
  def slug(self) -> str:
    return (self.name.replace('*', 'x').replace(',', '_').replace('@', '_w')
            .replace('/', '_L'))

  @property
  def kinds(self) -> tuple[str, ...]:
    return mixers.parse_pattern(self.pattern)


def parse(text: str, field: str = 'sequence_mixers.variants') -> Variant:
  """'PATTERN[/LAYERS]' or 'sliding@WINDOW[/LAYERS]' -> Variant (ConfigError naming `field`)."""
  body, slash, layers = str(text).strip().partition('/')
  try:
    num_layers = int(layers) if slash else 0
  except ValueError:
    num_layers = -1
  if num_layers < 0 or (slash and num_layers == 0):
    raise ConfigError(field, text, "write PATTERN or PATTERN/LAYERS, e.g. "
                      "'gated_deltanet*7,attention/8'")
  if body.startswith('sliding'):
    _, at, window = body.partition('@')
    if not at or not window.isdigit() or int(window) < 1:
      raise ConfigError(field, text, "write 'sliding@WINDOW', e.g. 'sliding@256'")
    return Variant('attention', num_layers, int(window))
  try:
    mixers.parse_pattern(body)
  except ConfigError as e:
    raise ConfigError(field, text, str(e).split(': ', 1)[-1]) from None
  return Variant(body, num_layers)


def overrides(variant: Variant) -> dict:
  """Config overrides ('a.b' -> value) that build the variant."""
  out = {'model.mixer.pattern': variant.pattern,
         # Interleaving layer kinds needs unscanned layers.
         'model.scan_layers': False}
  if variant.num_layers:
    out['model.num_layers'] = variant.num_layers
  if variant.window:
    out['model.attention.pattern'] = 'sliding'
    out['model.attention.window'] = variant.window
  return out
