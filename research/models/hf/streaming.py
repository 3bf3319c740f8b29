"""HF checkpoints into device shards and back, one tensor at a time, by a family's table.

Import. `plan` matches the family's table (research/models/hf/mapping.py) against the checkpoint
and the target lmforge parameters before any tensor data is read: every table name exists (or
its fallback), every shape fits, every checkpoint tensor is used or ignored by name, and every
lmforge parameter has a source. `place` then builds each parameter with
`jax.make_array_from_callback` on its sharding; the callback for a shard's index reads the HF
tensor(s) it needs (a scanned parameter: only the layers in the index's slice; a stacked one,
such as MoE experts: only the experts in its slice), transforms and slices them. Host memory
holds one HF tensor (and its transformed view) plus the unique shards of the parameter being
placed: never the model.

Export. `hf_specs` gives every HF tensor's name, shape and dtype from the abstract parameters;
`write_safetensors` plans the shards by size (huggingface_hub), then builds and writes one
shard at a time, so host memory holds one shard's tensors (max_shard_size) at most.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from typing import Any, Callable

import jax
import numpy as np
from flax import traverse_util

from research.errors import UserError
from research.models.hf import mapping
from research.models.hf.checkpoint import SAFETENSORS, SAFETENSORS_INDEX, Checkpoint
from research.models.hf.mapping import Family, Tensor

_UNUSED_SHOWN = 3


def path_of(key_path) -> str:
  """'stack/layer_0/attn/query' for a pytree key path."""
  return '/'.join(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))


def flat_leaves(tree) -> dict[str, Any]:
  return {path_of(kp): leaf for kp, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@dataclasses.dataclass
class Source:
  """Where one lmforge parameter comes from: its table entries and the checkpoint names they
  read (a tuple for a stacked entry), one per layer when the parameter is a scanned stack."""
  entries: list[Tensor]
  names: list[str | tuple[str, ...]]
  scanned: bool


def _sources_by_target(table: list[Tensor], targets: dict[str, Any], family: Family):
  """lmforge parameter -> its entries (ordered by layer when scanned), checked both ways."""
  grouped: dict[str, dict[int | None, Tensor]] = {}
  for entry in table:
    path, layer = entry.path, None
    if path not in targets:
      path, layer = mapping.scanned_path(entry.path)
    if path not in targets:
      raise UserError(f'the {family.model_type} table maps {entry.path}, which this lmforge model '
                      'does not have: its config is not one this family expresses')
    grouped.setdefault(path, {})[layer] = entry
  missing = sorted(set(targets) - set(grouped))
  if missing:
    raise UserError(f'lmforge parameter {missing[0]} has no {family.model_type} tensor (and '
                    f'{len(missing) - 1} more): its config is not one this family expresses')
  by_target = {}
  for path, layers in grouped.items():
    if None in layers:  # unscanned: one entry
      by_target[path] = [layers[None]]
      continue
    depth = targets[path].shape[0]
    if sorted(layers) != list(range(depth)):
      raise UserError(f'the {family.model_type} table gives layers {sorted(layers)} of {path}, '
                      f'whose stack has {depth}')
    by_target[path] = [layers[i] for i in range(depth)]
  return by_target


def _resolve(entry: Tensor, hf: str, names: dict[str, str], checkpoint: Checkpoint) -> str:
  """The checkpoint's name for `hf` (one of entry.names), else for a fallback."""
  for name in (hf, *entry.fallback):
    if name in names:
      return names[name]
  raise UserError(f'{checkpoint.hf_dir} has no tensor {hf} (for lmforge {entry.path}): is '
                  'config.json the one saved with these weights?')


def _check_shape(entry: Tensor, name: str, lmforge_shape, checkpoint: Checkpoint) -> None:
  expected = mapping.hf_shape(entry, lmforge_shape)
  found = checkpoint.shape(name)
  if tuple(found) != expected:
    raise UserError(f'{checkpoint.file_of(name)}: tensor {name} has shape {tuple(found)}, '
                    f'expected {expected} from config.json: is config.json the one saved with '
                    'these weights?')


def _check_all_used(used: set[str], checkpoint: Checkpoint, family: Family, config) -> None:
  ignored = [re.compile(p) for p in family.ignored(config)]
  unused = [name for name in checkpoint.names() if name not in used and not any(
      p.fullmatch(family.canonical_name(name)) for p in ignored)]
  if unused:
    more = f' (and {len(unused) - 1} more)' if len(unused) > 1 else ''
    raise UserError(f'{checkpoint.file_of(unused[0])}: tensor {unused[0]}{more} is not used by '
                    f"lmforge's {family.model_type} mapping: is config.json the one saved with "
                    'these weights, and is this a supported architecture?')


def plan(checkpoint: Checkpoint, family: Family, config, abstract_params) -> dict[str, Source]:
  """lmforge parameter path -> Source, after checking names, shapes and unused tensors."""
  targets = flat_leaves(abstract_params)
  by_target = _sources_by_target(family.tensors(config), targets, family)
  names = {family.canonical_name(name): name for name in checkpoint.names()}
  sources, used = {}, set()
  for path, entries in by_target.items():
    scanned = entries[0].path != path
    shape = targets[path].shape[1:] if scanned else targets[path].shape
    resolved = []
    for entry in entries:
      found = tuple(_resolve(entry, hf, names, checkpoint) for hf in entry.names)
      for name in found:
        _check_shape(entry, name, shape, checkpoint)
      resolved.append(found if entry.stacked else found[0])
      used.update(found)
    sources[path] = Source(entries, resolved, scanned)
  _check_all_used(used, checkpoint, family, config)
  return sources


def _layer_reader(checkpoint: Checkpoint, source: Source, dtype) -> Callable[..., np.ndarray]:
  """(layer index, member of a stacked entry or None) -> its lmforge array; keeps only the last
  one read."""

  @functools.lru_cache(maxsize=1)
  def layer(i: int, member: int | None = None) -> np.ndarray:
    name = source.names[i] if member is None else source.names[i][member]
    return np.asarray(mapping.to_lmforge(source.entries[i], checkpoint.read(name)), dtype)

  return layer


def _index_key(index) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def _rows(items: range, part: Callable[[int], np.ndarray]) -> np.ndarray:
  """The stack of part(i) for i in `items`, each copied into its row of one preallocated array
  as it is read (no list of parts)."""
  out = None
  for row, i in enumerate(items):
    value = part(i)
    if out is None:
      out = np.empty((len(items),) + value.shape, value.dtype)
    out[row] = value
  return out


def _layer_slice(layer, source: Source, i: int, index) -> np.ndarray:
  """Layer i's lmforge array at `index`; a stacked entry reads only the members in index[0]."""
  if not source.entries[i].stacked:
    return layer(i)[index]
  return _rows(range(len(source.names[i]))[index[0]], lambda m: layer(i, m)[index[1:]])


def _scanned_slice(layer, source: Source, index) -> np.ndarray:
  """index[0] picks layers of the stack: only those are read, each into its row."""
  return _rows(range(len(source.entries))[index[0]],
               lambda i: _layer_slice(layer, source, i, index[1:]))


def place_parameter(checkpoint: Checkpoint, source: Source, target) -> jax.Array:
  """One lmforge parameter, built in its shards (`target`: a ShapeDtypeStruct with sharding)."""
  layer = _layer_reader(checkpoint, source, target.dtype)
  slices: dict[tuple, np.ndarray] = {}  # devices that share a slice share one read

  def callback(index) -> np.ndarray:
    key = _index_key(index)
    if key not in slices:
      slices[key] = _scanned_slice(layer, source, index) if source.scanned else (
          np.ascontiguousarray(_layer_slice(layer, source, 0, index)))
    return slices[key]

  return jax.make_array_from_callback(target.shape, target.sharding, callback)


def place(checkpoint: Checkpoint, sources: dict[str, Source], abstract_params):
  """The parameters of `abstract_params` (ShapeDtypeStructs with shardings), each read from the
  checkpoint straight into its device shards."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, target: place_parameter(checkpoint, sources[path_of(kp)], target),
      abstract_params)


def read_host(checkpoint: Checkpoint, sources: dict[str, Source], abstract_params) -> dict:
  """The parameters as a nested dict of host numpy arrays (small models, tests, notebooks)."""
  flat = {}
  for path, target in flat_leaves(abstract_params).items():
    source = sources[path]
    layer = _layer_reader(checkpoint, source, target.dtype)
    everything = (slice(None),) * len(target.shape)
    flat[path] = (_scanned_slice(layer, source, everything) if source.scanned
                  else _layer_slice(layer, source, 0, everything))
  return traverse_util.unflatten_dict(flat, sep='/')


# ------------------------------------------------------------------------------------------------
# Export.


def _lmforge_array(flat_params: dict[str, Any], entry: Tensor, name: str) -> np.ndarray:
  """An entry's lmforge array for HF tensor `name`, on the host: the parameter, or its layer of
  a scanned stack; of a stacked entry, the slice that `name` holds."""
  index = (entry.names.index(name),) if entry.stacked else ()
  if entry.path in flat_params:
    array = flat_params[entry.path]
  else:
    path, layer = mapping.scanned_path(entry.path)
    array, index = flat_params[path], (layer, *index)
  return np.asarray(array[index] if index else array)  # only this layer and expert move


def hf_specs(family: Family, config, abstract_params) -> dict[str, jax.ShapeDtypeStruct]:
  """HF tensor name -> shape and dtype, in table order, with no tensor data."""
  targets = flat_leaves(abstract_params)
  specs = {}
  for name, entries in mapping.group_by_hf(family.tensors(config)).items():
    entry = entries[0]
    if entry.path in targets:
      target = targets[entry.path]
      shape = target.shape
    else:
      target = targets[mapping.scanned_path(entry.path)[0]]
      shape = target.shape[1:]
    specs[name] = jax.ShapeDtypeStruct(mapping.hf_shape(entry, shape), target.dtype)
  return specs


def hf_tensor_fn(family: Family, config, params) -> Callable[[str], np.ndarray]:
  """HF tensor name -> the array export writes, built from `params` when asked for."""
  groups = mapping.group_by_hf(family.tensors(config))
  flat = flat_leaves(params)

  def tensor(name: str) -> np.ndarray:
    entries = groups[name]
    return mapping.to_hf(entries, [_lmforge_array(flat, e, name) for e in entries])

  return tensor


def check_empty(out_dir: str) -> None:
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise UserError(f'--hf_dir={out_dir} is not empty: export into a new directory (stale shards '
                    'would mix with the new ones)')


def write_safetensors(out_dir: str, specs: dict[str, jax.ShapeDtypeStruct],
                      tensor: Callable[[str], np.ndarray], max_shard_size: int | str) -> list[str]:
  """Writes model.safetensors, or shards and model.safetensors.index.json when the tensors
  exceed `max_shard_size` ('5GB', or bytes); returns the files written."""
  from huggingface_hub import serialization  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  try:
    split = serialization.split_state_dict_into_shards_factory(
        specs, get_storage_size=lambda s: math.prod(s.shape) * np.dtype(s.dtype).itemsize,
        filename_pattern=SAFETENSORS.replace('.safetensors', '{suffix}.safetensors'),
        max_shard_size=max_shard_size)
  except ValueError as e:
    raise UserError(f'--max_shard_size={max_shard_size!r}: {e} (write e.g. 5GB or 500MB)') from None
  os.makedirs(out_dir, exist_ok=True)
  for filename, names in split.filename_to_tensors.items():
    arrays = {name: np.ascontiguousarray(tensor(name)) for name in names}
    save_file(arrays, os.path.join(out_dir, filename), metadata={'format': 'pt'})
    del arrays  # one shard at a time
  written = list(split.filename_to_tensors)
  if split.is_sharded:
    with open(os.path.join(out_dir, SAFETENSORS_INDEX), 'w') as f:
      json.dump({'metadata': split.metadata, 'weight_map': split.tensor_to_filename}, f,
                indent=2, sort_keys=True)
      f.write('\n')
    written.append(SAFETENSORS_INDEX)
  return written
