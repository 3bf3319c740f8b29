"""Model families by name (`model.family`), imported when first asked for."""

from __future__ import annotations

import importlib

from research.errors import ConfigError
from research.models.transformer import TransformerConfig, transformer_config

FAMILIES = {
    'decoder': 'research.models.decoder:DecoderLM',
    'encoder': 'research.models.encoder:EncoderLM',
    'encoder_decoder': 'research.models.encoder_decoder:EncoderDecoderLM',
}


def model_class(family: str):
  if family not in FAMILIES:
    raise ConfigError('model.family', family, f'choose one of {sorted(FAMILIES)}')
  module, _, name = FAMILIES[family].partition(':')
  return getattr(importlib.import_module(module), name)


def build_model(config, *, decode: bool = False, deterministic: bool = True):
  """The flax module for `config.model.family`, with hyper-parameters resolved from `config`."""
  cls = model_class(config.model.family)
  cfg = transformer_config(config.model, seq_len=config.data.seq_len,
                           peft_cfg=config.get('peft', None))
  return cls(cfg, decode=decode, deterministic=deterministic)
