"""Hugging Face checkpoints -> lmforge: read a local HF directory, map its weights by model type.

Each converter module has `convert(hf_config: dict, weights: dict[str, np.ndarray]) ->
(config, params)` with an lmforge ConfigDict and a parameter tree for `build_model(config)`.
Nothing is downloaded: the directory must hold config.json and model.safetensors (or
pytorch_model.bin, read with torch).
"""

from __future__ import annotations

import importlib
import json
import os

import numpy as np

from research.errors import UserError

CONVERTERS = {
    'gpt2': 'research.models.hf.gpt2',
    'bert': 'research.models.hf.bert',
    't5': 'research.models.hf.t5',
}


def read_hf_dir(hf_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
  """config.json and every weight as a float32 numpy array, keyed by the HF name."""
  config_path = os.path.join(hf_dir, 'config.json')
  if not os.path.isfile(config_path):
    raise UserError(f'--hf_dir={hf_dir} has no config.json: point it at a saved HF model '
                    'directory (save_pretrained output)')
  with open(config_path) as f:
    hf_config = json.load(f)
  safetensors_path = os.path.join(hf_dir, 'model.safetensors')
  torch_path = os.path.join(hf_dir, 'pytorch_model.bin')
  if os.path.isfile(safetensors_path):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    weights = load_file(safetensors_path)
  elif os.path.isfile(torch_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError(f'{torch_path} needs torch to read: pip install torch, or save the model '
                      'with safe_serialization=True') from None
    weights = {k: v.float().numpy() for k, v in torch.load(torch_path, map_location='cpu',
                                                             weights_only=True).items()}
  else:
    raise UserError(f'--hf_dir={hf_dir} has neither model.safetensors nor pytorch_model.bin')
  return hf_config, {k: np.asarray(v, np.float32) for k, v in weights.items()}


def convert(hf_dir: str):
  """(lmforge config, params) for the HF model in `hf_dir`, by its config's model_type."""
  hf_config, weights = read_hf_dir(hf_dir)
  model_type = hf_config.get('model_type')
  if model_type not in CONVERTERS:
    raise UserError(f"--hf_dir={hf_dir}: model_type {model_type!r} is not supported: lmforge "
                    f'converts {sorted(CONVERTERS)}')
  return importlib.import_module(CONVERTERS[model_type]).convert(hf_config, weights)
