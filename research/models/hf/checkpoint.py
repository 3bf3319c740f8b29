"""A local Hugging Face model directory, its tensors read lazily, one at a time, by name.

Layouts: model.safetensors; a sharded model.safetensors.index.json and its shard files; or
pytorch_model.bin (and its sharded index), read with torch. Safetensors files are opened with
`safe_open` (memory-mapped: a tensor is read when asked for, and only its bytes); torch files
are loaded with mmap=True, so they too are paged in per tensor. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os

import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, so bf16 safetensors read
import numpy as np

from research.errors import UserError

SAFETENSORS = 'model.safetensors'
SAFETENSORS_INDEX = 'model.safetensors.index.json'
TORCH = 'pytorch_model.bin'
TORCH_INDEX = 'pytorch_model.bin.index.json'


def read_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, 'config.json')
  if not os.path.isfile(path):
    raise UserError(f'{path} not found: point --hf_dir at a saved HF model directory '
                    '(save_pretrained output)')
  with open(path) as f:
    return json.load(f)


class Checkpoint:
  """config.json and the tensors of `hf_dir`. Use as a context manager (closes the files)."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    self.config = read_config(hf_dir)
    self._open: dict[str, object] = {}  # shard file -> safe_open handle or torch state dict
    self.weight_map = self._weight_map()  # tensor name -> shard file

  def _path(self, name: str) -> str:
    return os.path.join(self.hf_dir, name)

  def _weight_map(self) -> dict[str, str]:
    for index in (SAFETENSORS_INDEX, TORCH_INDEX):
      if os.path.isfile(self._path(index)):
        return self._read_index(index)
    for single in (SAFETENSORS, TORCH):
      if os.path.isfile(self._path(single)):
        return {name: single for name in self._handle(single).keys()}
    raise UserError(f'{self.hf_dir} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} '
                    f'with its shards, or {TORCH}')

  def _read_index(self, index: str) -> dict[str, str]:
    with open(self._path(index)) as f:
      weight_map = json.load(f)['weight_map']
    for name, shard in sorted(weight_map.items()):
      if not os.path.isfile(self._path(shard)):
        raise UserError(f'{self._path(index)} puts tensor {name} in {shard}, which is not in '
                        f'{self.hf_dir}: copy every shard the index lists into the directory')
    return weight_map

  def _handle(self, shard: str):
    if shard not in self._open:
      path = self._path(shard)
      if shard.endswith('.safetensors'):
        from safetensors import safe_open  # pylint: disable=g-import-not-at-top
        self._open[shard] = safe_open(path, framework='np')
      else:
        self._open[shard] = _torch_load(path)
    return self._open[shard]

  def names(self) -> list[str]:
    return list(self.weight_map)

  def file_of(self, name: str) -> str:
    return self._path(self.weight_map[name])

  def shape(self, name: str) -> tuple[int, ...]:
    """The tensor's shape, from the file header: no tensor data is read."""
    handle = self._handle(self.weight_map[name])
    if isinstance(handle, dict):
      return tuple(handle[name].shape)
    return tuple(handle.get_slice(name).get_shape())

  def read(self, name: str) -> np.ndarray:
    """The whole tensor, in its stored dtype (torch bfloat16 as float32)."""
    handle = self._handle(self.weight_map[name])
    if isinstance(handle, dict):
      tensor = handle[name]
      return (tensor.float() if str(tensor.dtype) == 'torch.bfloat16' else tensor).numpy()
    return handle.get_tensor(name)

  def close(self) -> None:
    for handle in self._open.values():
      if hasattr(handle, '__exit__'):
        handle.__exit__(None, None, None)
    self._open.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _torch_load(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f'{path} needs torch to read: pip install torch, or save the model with '
                    'safe_serialization=True') from None
  try:
    return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
  except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped: read it whole
    return torch.load(path, map_location='cpu', weights_only=True)
