"""Import a checkpoint: python -m research.convert --from=hf --hf_dir=DIR --workdir=runs/imported.

Reads a local Hugging Face directory (config.json + model.safetensors or pytorch_model.bin) of
GPT-2, BERT or T5 and writes a workdir that research.train / evaluate / sample accept: the
resolved config.json and an Orbax checkpoint at step 0 (the converted parameters with a fresh
optimizer state). A sentencepiece model in the directory (spiece.model, tokenizer.model) is
copied as the workdir's tokenizer; HF's BPE/WordPiece tokenizers are not converted, so text
commands on such a workdir need `--config.data.tokenizer=PATH` to a sentencepiece model with the
same vocabulary.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
from absl import flags

from research import cli, config_lib
from research.errors import UserError
from research.models import hf
from research.training import checkpointing, trainer

_FROM = flags.DEFINE_enum('from', 'hf', ['hf'], 'checkpoint format to read')
_HF_DIR = flags.DEFINE_string('hf_dir', None, 'local Hugging Face model directory')
_WORKDIR = flags.DEFINE_string('workdir', None, 'workdir to create')

SENTENCEPIECE_FILES = ('spiece.model', 'tokenizer.model')


def _check_shapes(expected, params) -> None:
  """Every converted array has the shape the lmforge model expects, and nothing is missing."""
  flat_expected = {jax.tree_util.keystr(p): x.shape
                   for p, x in jax.tree_util.tree_leaves_with_path(expected)}
  flat_got = {jax.tree_util.keystr(p): np.shape(x)
              for p, x in jax.tree_util.tree_leaves_with_path(params)}
  missing = sorted(set(flat_expected) - set(flat_got))
  extra = sorted(set(flat_got) - set(flat_expected))
  wrong = [f'{k}: {flat_got[k]} != {flat_expected[k]}' for k in flat_expected
           if k in flat_got and tuple(flat_got[k]) != tuple(flat_expected[k])]
  if missing or extra or wrong:
    raise UserError(f'converted parameters do not fit the model: missing {missing[:5]}, '
                    f'unexpected {extra[:5]}, wrong shapes {wrong[:5]}')


def convert_hf(hf_dir: str, workdir: str) -> str:
  """Writes `workdir` from the HF model in `hf_dir`; returns the config's family."""
  config, params = hf.convert(hf_dir)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor, config.mesh.expert = -1, 1, 1, 1
  config.train.batch_size = max(config.train.batch_size, jax.device_count())
  config = config_lib.finalize(config)
  run = trainer.build_run(config)
  abstract = trainer.abstract_state(run)
  _check_shapes(abstract.params, params)
  params = jax.device_put(jax.tree.map(lambda x, a: np.asarray(x, a.dtype), params,
                                       abstract.params), run.state_shardings.params)
  with run.context():
    opt_state = jax.jit(run.tx.init, out_shardings=run.state_shardings.opt_state)(params)
  state = trainer.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                             opt_state=opt_state)
  os.makedirs(workdir, exist_ok=True)
  config_lib.save_config(config, os.path.join(workdir, 'config.json'))
  manager = checkpointing.make_manager(workdir, keep=config.train.keep_checkpoints,
                                       async_save=False)
  checkpointing.save(manager, 0, state, force=True)
  manager.wait_until_finished()
  manager.close()
  for name in SENTENCEPIECE_FILES:
    if os.path.isfile(os.path.join(hf_dir, name)):
      shutil.copy(os.path.join(hf_dir, name), os.path.join(workdir, 'tokenizer.model'))
      break
  return config.model.family


def main(config, argv):
  del config, argv
  if not _HF_DIR.value or not _WORKDIR.value:
    raise UserError('--hf_dir and --workdir are required, e.g. --from=hf --hf_dir=gpt2/ '
                    '--workdir=runs/imported')
  family = convert_hf(_HF_DIR.value, _WORKDIR.value)
  print(json.dumps({'workdir': _WORKDIR.value, 'family': family}))


if __name__ == '__main__':
  cli.run_with_config(main, config_required=False)
