"""Hugging Face checkpoints <-> lmforge, one bidirectional table per family.

Families (each a `mapping.Family`; mapping.py explains the table):

  gpt2     GPT2LMHeadModel              decoder: learned positions, LayerNorm, tanh GELU, tied
  llama    LlamaForCausalLM             decoder: RoPE (linear or llama3 scaling), RMSNorm,
                                        SwiGLU, GQA, tied or untied
  mistral  MistralForCausalLM           llama with one sliding window on every layer
  qwen2    Qwen2ForCausalLM             llama with q/k/v biases
  qwen3    Qwen3ForCausalLM             llama with QK-norm
  gemma2   Gemma2ForCausalLM            decoder: (1 + w) RMSNorm before and after each sublayer,
                                        GeGLU, embedding scale, soft-capping, local:global
                                        layers ('sliding,full'), GQA, tied
  gemma3_text  Gemma3ForCausalLM        gemma2 with QK-norm, its own local RoPE base and no
                                        attention soft-cap ('sliding*5,full')
  bert     BertForMaskedLM              encoder (MLM)
  t5       T5ForConditionalGeneration   encoder-decoder (T5 1.0 and v1.1)
  mixtral  MixtralForCausalLM           mistral with MoE on every layer (model.moe; moe.py)
  qwen3_moe  Qwen3MoeForCausalLM        qwen3 with MoE on every k-th layer, dense between

Import picks the family by config.json's model_type; export by architecture (`export_family`):
the first family whose `unsupported(config)` is empty. research/convert.py has the commands;
streaming.py moves the tensors. Nothing is downloaded.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from research import models, objectives
from research.errors import UserError
from research.models.hf import bert, gemma, gpt2, llama, mapping, moe, streaming, t5
from research.models.hf.checkpoint import Checkpoint

FAMILIES: dict[str, mapping.Family] = {
    'gpt2': gpt2.FAMILY, **llama.FAMILIES, **gemma.FAMILIES, 'bert': bert.FAMILY,
    't5': t5.FAMILY, **moe.FAMILIES}


def family_of(hf_config: dict, where: str) -> mapping.Family:
  """The family of an HF config.json (read from `where`), by its model_type."""
  model_type = hf_config.get('model_type')
  if model_type not in FAMILIES:
    raise UserError(f'{where}: model_type {model_type!r} is not supported: lmforge converts '
                    f'{sorted(FAMILIES)}')
  return FAMILIES[model_type]


def export_family(config) -> mapping.Family:
  """The first family that expresses `config`, else a UserError giving each family's reasons."""
  reasons = {}
  for family in FAMILIES.values():
    why = family.unsupported(config)
    if not why:
      return family
    if not why[0].startswith('model.family='):  # a family of another kind says nothing useful
      reasons[family.model_type] = why
  if not reasons:
    raise UserError(f'model.family={config.model.family!r}: no Hugging Face family here '
                    f'exports it (lmforge exports {sorted(FAMILIES)})')
  listed = '; '.join(f"{name}: {', '.join(why)}" for name, why in reasons.items())
  raise UserError(f'no Hugging Face family expresses this model: {listed}')


def abstract_params(config):
  """The lmforge parameters' shapes and dtypes for `config` (no mesh, nothing computed)."""
  model = models.build_model(config)
  init_args = objectives.get_objective(config.objective.name).init_args(1, config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_args))
  return nn.meta.unbox(shapes['params'])


def convert(hf_dir: str):
  """(lmforge config, params as host numpy arrays) of the HF model in `hf_dir`.

  For small models (tests, notebooks): every parameter is read into host memory. Imports of any
  size go through research.convert.import_hf, which places each tensor straight into its device
  shards.
  """
  with Checkpoint(hf_dir) as checkpoint:
    family = family_of(checkpoint.config, f'{hf_dir}/config.json')
    config = family.lmforge_config(checkpoint.config)
    shapes = abstract_params(config)
    sources = streaming.plan(checkpoint, family, config, shapes)
    return config, streaming.read_host(checkpoint, sources, shapes)
