"""Device mesh from `config.mesh` and shardings from logical-axis rules (layouts as data)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'expert', 'tensor')


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Axis sizes in MESH_AXES order; one size may be -1 (all remaining devices)."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  free = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ConfigError(f'mesh.{axis}', size, 'must be a positive integer or -1')
  if len(free) > 1:
    raise ConfigError(f'mesh.{free[1]}', -1, f'only one axis may be -1 (mesh.{free[0]} is too)')
  fixed = math.prod(s for s in sizes if s != -1)
  desc = ' x '.join(f'{a}={s}' for a, s in zip(MESH_AXES, sizes) if s != 1)
  if free:
    if num_devices % fixed:
      raise ConfigError('mesh', desc, f'the fixed axes ({fixed} devices) do not divide the '
                        f'{num_devices} devices found')
    sizes[MESH_AXES.index(free[0])] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError('mesh', desc, f'needs {fixed} devices, found {num_devices}: set one axis '
                      'to -1 or change the sizes')
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: GSPMD propagates shardings from the logical constraints we place.
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def rules_of(mesh_cfg) -> tuple[tuple[str, object], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in mesh_cfg.rules)


def logical_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of (possibly logically-boxed) abstract values."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
  """Batch arrays [B, ...]: B over the axes the 'batch' rule names, the rest replicated."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh, rules) -> int:
  """How many shards the batch axis is cut into (a global batch must divide by it)."""
  spec = nn.logical_to_mesh_axes(('batch',), rules)[0]
  axes = spec if isinstance(spec, tuple) else (spec,) if spec else ()
  return math.prod(mesh.shape[a] for a in axes)
