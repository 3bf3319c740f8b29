"""Pipeline parallelism (GPipe) over the scanned layer stack, inside one jit (MaxText's design).

`mesh.stage` = S stages. The scanned stack's parameters [L, ...] are sharded over the 'stage'
mesh axis in contiguous blocks (the 'layers' -> 'stage' rule) and viewed as [S, L/S, ...]:
stage s holds layers s L/S .. (s + 1) L/S - 1. A forward pass cuts its batch into M
micro-batches (`mesh.pipeline_micro_batches`) and keeps a buffer of one activation per stage,
x_SbTD, sharded over 'stage'. Each of the M + S - 1 iterations

  1. puts the next micro-batch into stage 0's slot,
  2. runs every stage on its slot at once (jax.vmap over S, spmd_axis_name='stage': each
     device group computes its own stage),
  3. takes the last stage's output as a finished micro-batch,
  4. rolls the buffer by one stage (jnp.roll: XLA lowers it to a collective permute).

Micro-batch m is in stage s at iteration m + s; the S - 1 iterations at either end leave some
stages idle, the bubble, (S - 1) / (M + S - 1) of the step. Autodiff of the iteration scan is
the backward schedule (all forwards, then all backwards: GPipe); `model.remat`'s policy applies
to each stage's body per iteration, so 'full' keeps only the buffer per iteration.

Why GPipe and not circular (interleaved) repeats: circular stages need the layer stack stored
as [repeats, S, ...] (a different parameter layout, so different checkpoints) or a reshuffle
of the weights every step; GPipe keeps the unpipelined [L, ...] parameters, checkpoints and
decoding path unchanged. Its bubble shrinks with M instead.

Every family: decoders, encoders, and both stacks of an encoder-decoder (each pipelined on its
own; the decoder's micro-batches carry their encoder outputs and cross masks). Not pipelined,
as ConfigErrors: unrolled stacks (their per-layer parameters are not one [L, ...] array; set
model.scan_layers) and mixture-of-experts layers (their auxiliary collections and expert
all-to-alls are not threaded through the stages). The embeddings and the head run, replicated,
on every stage.

Pipeline micro-batches are not `train.micro_batches`: those run one after another (gradient
accumulation), while a pipeline needs several in flight at once. Each gradient-accumulation
micro-batch is cut into M pipeline micro-batches, so the two compose. Dropout masks are keyed
by (iteration, stage), so they differ from the unpipelined run's (everything else is equal).

Shape letters beyond docs' key: S stages, M micro-batches, b rows of one micro-batch (B / M).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from research.errors import ConfigError

AXIS = 'stage'


def stages_of(config) -> int:
  return int(config.mesh.get('stage', 1))


def micro_batches_of(config) -> int:
  """M: `mesh.pipeline_micro_batches`, or the stage count when it is 0."""
  return int(config.mesh.get('pipeline_micro_batches', 0)) or stages_of(config)


def bubble_fraction(stages: int, micro_batches: int) -> float:
  """The idle share of a GPipe step: (S - 1) / (M + S - 1)."""
  return (stages - 1) / (micro_batches + stages - 1)


def check_config(c) -> None:
  """ConfigErrors for pipeline settings that cannot run (before anything compiles)."""
  stages = c.mesh.get('stage', 1)
  if not isinstance(stages, int) or stages < 1:
    raise ConfigError('mesh.stage', stages, 'must be a positive integer (1: no pipeline; the '
                      'stage count is never -1)')
  micro = c.mesh.get('pipeline_micro_batches', 0)
  if not isinstance(micro, int) or micro < 0:
    raise ConfigError('mesh.pipeline_micro_batches', micro,
                      'must be >= 0 (0: as many as mesh.stage)')
  if stages == 1:
    return
  if not c.model.scan_layers:
    raise ConfigError('model.scan_layers', False, f'mesh.stage={stages} pipelines the scanned '
                      'layer stack: set model.scan_layers=True')
  for field, layers in _stack_depths(c.model):
    if layers % stages:
      raise ConfigError('mesh.stage', stages, f'does not divide {field}={layers}: pick a '
                        'divisor of the layer count')
  if c.model.moe.num_experts:
    raise ConfigError('model.moe.num_experts', c.model.moe.num_experts,
                      f'mixture-of-experts layers are not pipelined (mesh.stage={stages}): use '
                      'mesh.stage=1 with mesh.expert')
  if c.mesh.get('context', 1) > 1:  # shard_map'd attention inside the stage vmap: not built
    raise ConfigError('mesh.context', c.mesh.context, f'context parallelism is not combined with '
                      f'pipeline stages yet (mesh.stage={stages}): use one of the two')
  rules = dict((name, axes) for name, axes in c.mesh.rules)
  layers_rule = rules.get('layers')
  if AXIS not in (layers_rule if isinstance(layers_rule, (tuple, list)) else (layers_rule,)):
    raise ConfigError('mesh.rules', f'layers -> {layers_rule}', f"mesh.stage={stages} needs "
                      "the rule ('layers', 'stage') (config_lib.DEFAULT_RULES has it)")
  micro = micro or stages
  rows = c.train.batch_size // c.train.micro_batches
  if rows % micro:
    raise ConfigError('mesh.pipeline_micro_batches', micro,
                      f'must divide the {rows} sequences of each train micro-batch '
                      f'(train.batch_size={c.train.batch_size} / train.micro_batches='
                      f'{c.train.micro_batches})')


def _stack_depths(m) -> list[tuple[str, int]]:
  """(field, layers) of each stack the pipeline cuts: one, or an encoder-decoder's two."""
  if m.get('family', 'decoder') != 'encoder_decoder':
    return [('model.num_layers', m.num_layers)]
  return [('model.encoder_layers' if m.encoder_layers else 'model.num_layers',
           m.encoder_layers or m.num_layers),
          ('model.decoder_layers' if m.decoder_layers else 'model.num_layers',
           m.decoder_layers or m.num_layers)]


def split_micro(x, m: int):
  """[B, ...] -> [M, B/M, ...] taking every M-th row (as the trainer's micro-batches do), so
  each batch shard feeds every micro-batch and nothing moves between devices."""
  return x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)


def merge_micro(x):
  """The inverse of `split_micro`: [M, B/M, ...] -> [B, ...]."""
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def _mesh_has_stage() -> bool:
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and AXIS in mesh.axis_names


def _constrain_stages(x_SbTD):
  """The buffer: stages over 'stage', rows over the 'batch' rule's axes, as the layers want."""
  if not _mesh_has_stage():
    return x_SbTD
  spec = nn.logical_to_mesh_axes(('batch', 'length', 'act_embed'))
  return jax.lax.with_sharding_constraint(x_SbTD, P(AXIS, *spec))


def gpipe(stage_fn: Callable, params_L: Any, x_BTD, batch_args: Any, *, stages: int,
          micro_batches: int, policy=None, remat: bool = False, rng=None):
  """Runs L layers as `stages` GPipe stages over `micro_batches` micro-batches of x_BTD.

  stage_fn(params, x_bTD, batch_args_b, rng) applies L/S layers; params_L is their stacked
  [L, ...] tree. `batch_args` (a tree of [B, ...] arrays: positions, masks) is cut into
  micro-batches like x_BTD and reaches each stage with its micro-batch. With `remat`, each
  stage's body is a jax.checkpoint with `policy`. Returns y_BTD, equal to the unpipelined
  stack's output.
  """
  s_count, m_count = stages, micro_batches
  params_S = jax.tree.map(lambda p: p.reshape(s_count, p.shape[0] // s_count, *p.shape[1:]),
                          params_L)
  x_MbTD = split_micro(x_BTD, m_count)
  args_Mb = jax.tree.map(lambda a: split_micro(a, m_count), batch_args)
  body = jax.checkpoint(stage_fn, policy=policy, prevent_cse=False) if remat else stage_fn
  run_stages = jax.vmap(body, spmd_axis_name=AXIS if _mesh_has_stage() else None)
  stage_S = jnp.arange(s_count)

  def iteration(carry, t):
    state_SbTD, out_MbTD = carry
    # Past the last micro-batch stage 0 recomputes it: bubble work whose output never lands.
    state_SbTD = state_SbTD.at[0].set(x_MbTD[jnp.minimum(t, m_count - 1)])
    micro_S = jnp.clip(t - stage_S, 0, m_count - 1)  # the micro-batch each stage holds
    args_Sb = jax.tree.map(lambda a: a[micro_S], args_Mb)
    rng_S = None if rng is None else jax.vmap(
        lambda s: jax.random.fold_in(jax.random.fold_in(rng, t), s))(stage_S)
    y_SbTD = _constrain_stages(run_stages(params_S, state_SbTD, args_Sb, rng_S))
    # The last stage finishes micro-batch t - (S - 1); before that its writes to slot 0 are
    # bubble values, overwritten when micro-batch 0 arrives.
    done = jnp.clip(t - (s_count - 1), 0, m_count - 1)
    out_MbTD = jax.lax.dynamic_update_index_in_dim(out_MbTD, y_SbTD[-1], done, 0)
    return (_constrain_stages(jnp.roll(y_SbTD, 1, axis=0)), out_MbTD), None

  state_SbTD = _constrain_stages(jnp.zeros((s_count, *x_MbTD.shape[1:]), x_BTD.dtype))
  (_, out_MbTD), _ = jax.lax.scan(iteration, (state_SbTD, jnp.zeros_like(x_MbTD)),
                                  jnp.arange(m_count + s_count - 1))
  return merge_micro(out_MbTD)
