"""Model families by name (`model.family`)."""

from __future__ import annotations

from research.errors import ConfigError
from research.models.decoder import DecoderLM
from research.models.transformer import TransformerConfig, transformer_config

FAMILIES = {'decoder': DecoderLM}


def build_model(config, *, decode: bool = False, deterministic: bool = True):
  """The flax module for `config.model.family`, with hyper-parameters resolved from `config`."""
  family = config.model.family
  if family not in FAMILIES:
    raise ConfigError('model.family', family, f'choose one of {sorted(FAMILIES)}')
  cfg = transformer_config(config.model, seq_len=config.data.seq_len)
  return FAMILIES[family](cfg, decode=decode, deterministic=deterministic)
