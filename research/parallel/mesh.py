"""Device mesh from `config.mesh` and shardings from logical-axis rules (layouts as data).

Axes, outermost first: data, fsdp, expert, context, tensor. `context` cuts activations along
the sequence ('length'; research/layers/context_parallel.py) and never a parameter; it sits
next to `tensor` so that its ring neighbours are close on the interconnect. A size-1 axis
changes nothing, so configs and checkpoints from before an axis existed keep working.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research.errors import ConfigError

# 'stage' (pipeline stages, research/parallel/pipeline.py) sits outside fsdp/expert/tensor, as
# in MaxText: its traffic is one activation per micro-batch, the least of the sharded axes.
# 'context' (sequence sharding, research/layers/context_parallel.py) sits next to 'tensor':
# its ring exchanges keys and values every layer.
MESH_AXES = ('data', 'stage', 'fsdp', 'expert', 'context', 'tensor')

# The base config's sizes: a field still at its default is one the user left to the preset.
DEFAULT_SIZES = {'data': -1, 'stage': 1, 'fsdp': 1, 'expert': 1, 'context': 1, 'tensor': 1}

# Named layouts (`mesh.preset`): axis sizes, -1 taking the remaining devices. The logical-axis
# rules (config_lib.DEFAULT_RULES) already say what each axis shards, so a preset only sizes
# the axes. Sizes the config sets explicitly win over the preset's.
PRESETS = {
    'dp': {'data': -1},  # replicated weights, batch split: small models
    'fsdp': {'data': 1, 'fsdp': -1},  # weights, gradients and optimizer state sharded (ZeRO-3)
    'fsdp_tp': {'data': 1, 'fsdp': -1, 'tensor': 4},  # + Megatron tensor parallelism in groups
    'fsdp_ep': {'data': 1, 'fsdp': -1, 'expert': 4},  # + experts split over the expert axis
    'ep': {'data': 1, 'expert': -1},  # experts split over all devices, batch over them too
    # + 4 pipeline stages (e.g. one per slice, where FSDP over the slower links costs too much)
    'fsdp_pp': {'data': 1, 'stage': 4, 'fsdp': -1},
    'fsdp_cp': {'data': 1, 'fsdp': -1, 'context': 4},  # + sequences split over 4 (long context)
}


def axis_sizes(mesh_cfg) -> dict[str, int]:
  """Sizes per axis (-1 unresolved), with `mesh.preset` filling the fields left at default."""
  # .get: a config saved before an axis existed has that axis at size 1.
  sizes = {a: int(mesh_cfg.get(a, DEFAULT_SIZES[a])) for a in MESH_AXES}
  preset = mesh_cfg.get('preset', '')
  if not preset:
    return sizes
  if preset not in PRESETS:
    raise ConfigError('mesh.preset', preset, f'choose one of {", ".join(PRESETS)} (or "")')
  for axis, size in {**DEFAULT_SIZES, **PRESETS[preset]}.items():
    if sizes[axis] == DEFAULT_SIZES[axis]:
      sizes[axis] = size
  return sizes


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Axis sizes in MESH_AXES order; one size may be -1 (all remaining devices)."""
  sizes = list(axis_sizes(mesh_cfg).values())
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


def default_devices() -> list:
  """The devices a run spans when its caller names none: all of them, every process's."""
  return jax.devices()


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = default_devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: GSPMD propagates shardings from the logical constraints we place.
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def abstract_mesh(mesh_cfg, num_devices: int) -> jax.sharding.AbstractMesh:
  """The mesh of `num_devices` devices without the devices: for planning and layout dumps."""
  shape = mesh_shape(mesh_cfg, num_devices)
  return jax.sharding.AbstractMesh(shape, MESH_AXES,
                                   axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def rules_of(mesh_cfg) -> tuple[tuple[str, object], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in mesh_cfg.rules)


def axes_of(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def fit_spec(spec: P, shape: tuple[int, ...], axis_size: dict[str, int]) -> P:
  """`spec` with the mesh axes that do not divide their dimension dropped (replicated there).

  E.g. 2 key/value heads over tensor=4: the heads are replicated on the tensor axis instead of
  failing to shard, as grouped-query models on wide tensor meshes need. Axes are dropped from
  the innermost (last-named) outwards.
  """
  fitted = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = list(axes_of(entry))
    while axes and dim % math.prod(axis_size[a] for a in axes):
      axes.pop()
    fitted.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*fitted)


def unboxed(tree):
  """The values inside logical-partitioning boxes, without applying their constraints."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def logical_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of (possibly logically-boxed) abstract values."""
  specs = nn.get_partition_spec(abstract_tree)
  shapes = unboxed(abstract_tree)
  axis_size = dict(mesh.shape)

  def sharding(spec, shape):
    if not hasattr(shape, 'shape'):  # an empty node (optax's MaskedNode for frozen parameters)
      return shape
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules)
    return NamedSharding(mesh, fit_spec(mesh_spec, shape.shape, axis_size))

  return jax.tree.map(sharding, specs, shapes, is_leaf=lambda x: isinstance(x, P))


# The memory kind that train.offload keeps state in: page-locked, so the device's DMA engines
# move it without a staging copy.
HOST_MEMORY = 'pinned_host'


def memory_kinds(mesh: Mesh) -> set[str]:
  """The memory kinds the mesh's devices address ('device', 'pinned_host', ...)."""
  return {m.kind for m in mesh.devices.flat[0].addressable_memories()}


def with_memory_kind(shardings, kind: str):
  """A tree of NamedShardings, each in memory `kind`; other leaves (optax's MaskedNode for
  frozen parameters) stay as they are."""
  return jax.tree.map(
      lambda s: s.with_memory_kind(kind) if isinstance(s, NamedSharding) else s, shardings)


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
