"""Model families by name (`model.family`), imported when first asked for."""

from __future__ import annotations

import dataclasses
import importlib

import flax

from research.errors import ConfigError
from research.layers import attention, quantization
from research.parallel import pipeline
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
  if pipeline.stages_of(config) > 1:
    cfg = dataclasses.replace(cfg, pipeline_stages=pipeline.stages_of(config),
                              pipeline_repeats=pipeline.repeats_of(config),
                              pipeline_micro_batches=pipeline.micro_batches_of(config))
  # config.model.quantization (Qwix): here, so training, evaluation and decoding all see it.
  return quantization.build(cls(cfg, decode=decode, deterministic=deterministic), config.model)


def attention_maps(model, params, *args, model_state=None, **kwargs) -> dict:
  """Every attention layer's float32 probabilities for one forward pass of `model`.

  Returns {'stack/layer_0/attn': probs_BHTS, ...} keyed by module path (cross-attention too);
  a scanned stack gives one [L, B, H, T, S] entry. `args` and `kwargs` are the model's call
  arguments (tokens_BT, ...). For plots: each layer holds a dense [B, H, T, S] array.
  """
  _, variables = model.apply({'params': params, **(model_state or {})}, *args,
                             mutable=[attention.PROBS_COLLECTION], **kwargs)
  flat = flax.traverse_util.flatten_dict(variables[attention.PROBS_COLLECTION], sep='/')
  return {k.rsplit('/', 1)[0]: v[0] for k, v in flat.items()}
