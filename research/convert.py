"""Hugging Face checkpoints in and out of lmforge workdirs.

  python -m research.convert --from=hf --hf_dir=DIR --workdir=runs/imported
  python -m research.convert --to=hf --workdir=runs/shakespeare --hf_dir=OUT [--max_shard_size=5GB]

Import (--from=hf) reads a local HF directory (config.json with model.safetensors, a sharded
model.safetensors.index.json, or pytorch_model.bin) of any family in research/models/hf (GPT-2,
Llama, Mistral, Qwen2, Qwen3, Gemma 2/3, Mixtral, Qwen3-MoE, BERT, T5) and
writes a workdir that research.train / evaluate / sample accept: the resolved config.json and an
Orbax checkpoint at step 0 (the converted parameters with a fresh optimizer state), and the
checkpoint's tokenizer files (tokenizer.json or a sentencepiece model, with its special tokens
and chat template: research/data/hf_tokenizer.py), so that sample, evaluate and fine-tuning use
the model's own tokenizer. Each tensor goes straight into its device shards, so the host never
holds the model; --config.FIELD=VALUE overrides the imported config first (a mesh that shards a
large model, --config.mesh.fsdp=8; a scanned stack, --config.model.scan_layers=true).

Export (--to=hf) restores the workdir's latest parameters (LoRA folded in), picks the HF family
that expresses its architecture (GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM, ...,
BertForMaskedLM, T5ForConditionalGeneration; research/models/hf) and writes config.json,
float32 safetensors (sharded with model.safetensors.index.json above --max_shard_size) and the
workdir's tokenizer as files AutoTokenizer reads (its special token ids go into config.json),
for transformers' from_pretrained. Both directions walk one table per
family, so a round trip is bit-identical.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
from absl import flags, logging

from research import cli, config_lib, loading
from research.data import chat_template as chat_template_lib
from research.data import hf_tokenizer
from research.data import tokenizer as tokenizer_lib
from research.errors import UserError
from research.models import hf
from research.models.hf import streaming
from research.models.hf.checkpoint import Checkpoint
from research.training import peft, trainer

FLAGS = flags.FLAGS
FORMATS = ('hf',)


def define_flags() -> None:
  """The command's flags, defined only when run as a command (other entry points that a process
  imports also define --workdir)."""
  flags.DEFINE_enum('from', None, list(FORMATS), 'import: the format of --hf_dir, read into a '
                    'new --workdir')
  flags.DEFINE_enum('to', None, list(FORMATS), 'export: the format --workdir is written as, '
                    'into a new --hf_dir')
  flags.DEFINE_string('hf_dir', None, 'local Hugging Face model directory (import: read; '
                      'export: written)')
  flags.DEFINE_string('workdir', None, 'lmforge workdir (import: written; export: read)')
  flags.DEFINE_string('max_shard_size', '5GB', 'export: the largest safetensors file; larger '
                      'models are sharded with model.safetensors.index.json')


# ------------------------------------------------------------------------------------------------
# Import.


def _import_config(config, overrides: Sequence[tuple[str, str]]):
  """The imported config on this process's devices (data parallel unless overridden)."""
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor, config.mesh.expert = -1, 1, 1, 1
  for key, text in overrides:
    config_lib.apply_override(config, key, text)
  config.train.batch_size = max(config.train.batch_size, jax.device_count())
  return config_lib.finalize(config)


def load_hf(hf_dir: str, overrides: Sequence[tuple[str, str]] = ()):
  """(config, run, params) of the HF model in `hf_dir`: each parameter read straight into its
  shards on the run's mesh. `overrides` are (key, text) pairs as on the command line
  (('model.scan_layers', 'true'), ('mesh.fsdp', '2'))."""
  with Checkpoint(hf_dir) as checkpoint:
    family = hf.family_of(checkpoint.config, os.path.join(hf_dir, 'config.json'))
    config = _import_config(family.lmforge_config(checkpoint.config), overrides)
    run = trainer.build_run(config)
    abstract = trainer.abstract_state(run).params
    sources = streaming.plan(checkpoint, family, config, abstract)
    params = streaming.place(checkpoint, sources, abstract)
  return config, run, params


def import_hf(hf_dir: str, workdir: str, overrides: Sequence[tuple[str, str]] = ()) -> dict:
  """Writes `workdir` from the HF model in `hf_dir`; returns a summary."""
  config, run, params = load_hf(hf_dir, overrides)
  loading.save_workdir(workdir, config, run, params)
  tokenizer = []
  if tokenizer_lib.find_tokenizer(hf_dir) is not None:
    tokenizer = hf_tokenizer.copy_tokenizer_files(hf_dir, workdir)
  else:
    logging.warning('%s has no tokenizer files: give the workdir token ids, or copy a tokenizer '
                    'into it', hf_dir)
  return {'workdir': workdir, 'family': config.model.family, 'name': config.name,
          'tokenizer': tokenizer}


# ------------------------------------------------------------------------------------------------
# Export.


def _write_tokenizer(config, tokenizer, out_dir: str) -> list[str]:
  """The run's tokenizer as HF files, and its special token ids in config.json; the names
  written. A fine-tuned run without a chat template of its own ships lmforge's SFT format."""
  if tokenizer is None:
    return []
  chat_template = None
  if config.objective.name in ('sft', 'dpo') and not tokenizer.chat_template:
    chat_template = chat_template_lib.LMFORGE_TEMPLATE
  written = hf_tokenizer.write_hf_tokenizer(tokenizer, out_dir, family=config.model.family,
                                            chat_template=chat_template)
  path = os.path.join(out_dir, 'config.json')
  with open(path) as f:
    hf_config = json.load(f)
  for name in ('bos', 'eos', 'pad'):
    token_id = getattr(tokenizer, f'{name}_id')
    if token_id is not None:
      hf_config[f'{name}_token_id'] = int(token_id)
  with open(path, 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
    f.write('\n')
  return written


def export_params(config, params, hf_dir: str, *, max_shard_size: int | str = '5GB') -> dict:
  """Writes `params` of `config` as an HF model directory (config.json and safetensors)."""
  streaming.check_empty(hf_dir)
  family = hf.export_family(config)
  specs = streaming.hf_specs(family, config, params)
  files = streaming.write_safetensors(hf_dir, specs,
                                      streaming.hf_tensor_fn(family, config, params),
                                      max_shard_size)
  with open(os.path.join(hf_dir, 'config.json'), 'w') as f:
    json.dump(family.hf_config(config), f, indent=2, sort_keys=True)
    f.write('\n')
  return {'hf_dir': hf_dir, 'model_type': family.model_type,
          'architecture': family.architecture, 'tensors': len(specs), 'files': files}


def export_hf(workdir: str, hf_dir: str, *, max_shard_size: int | str = '5GB') -> dict:
  """Writes `hf_dir` from the latest checkpoint of `workdir`; returns a summary."""
  if jax.process_count() > 1:
    raise UserError('--to=hf runs in one process: export on one host, where every parameter '
                    'is addressable')
  streaming.check_empty(hf_dir)
  lm = loading.load(workdir)
  config, params = peft.merged_model(lm.config, lm.params)
  hf.export_family(config)  # before anything is written: the model must be expressible
  summary = export_params(config, params, hf_dir, max_shard_size=max_shard_size)
  summary['tokenizer'] = _write_tokenizer(config, lm.tokenizer, hf_dir)
  return summary


# ------------------------------------------------------------------------------------------------
# Command.


def _direction() -> str:
  if bool(FLAGS['from'].value) == bool(FLAGS['to'].value):
    raise UserError('give one of --from=hf (import --hf_dir into a new --workdir) or --to=hf '
                    '(export --workdir into a new --hf_dir)')
  if not FLAGS.hf_dir or not FLAGS.workdir:
    raise UserError('--hf_dir and --workdir are required, e.g. --from=hf --hf_dir=gpt2/ '
                    '--workdir=runs/imported')
  return 'import' if FLAGS['from'].value else 'export'


def main(config, argv, overrides):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {argv[1:]}: flags are written --name=value')
  if config is not None:
    raise UserError('--config: research.convert reads config.json from --hf_dir (import) or '
                    '--workdir (export); change imported fields with --config.FIELD=VALUE alone')
  if _direction() == 'import':
    if FLAGS.max_shard_size != FLAGS['max_shard_size'].default:
      raise UserError('--max_shard_size applies to --to=hf (export) only')
    result = import_hf(FLAGS.hf_dir, FLAGS.workdir, overrides)
  else:
    if overrides:
      raise UserError('--to=hf exports the workdir as it was trained: --config.* overrides do '
                      'not apply')
    result = export_hf(FLAGS.workdir, FLAGS.hf_dir, max_shard_size=FLAGS.max_shard_size)
  if jax.process_index() == 0:
    print(json.dumps(result))


if __name__ == '__main__':
  define_flags()
  cli.run_with_config(main, config_required=False, pass_overrides=True)
