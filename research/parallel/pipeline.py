"""Pipeline parallelism over a layer stack, inside one jit (MaxText's design): GPipe, and
circular (interleaved) repeats.

`mesh.stage` = S stages, `mesh.pipeline_repeats` = R passes of every micro-batch through the
stages, `mesh.pipeline_micro_batches` = M micro-batches in flight. The L layers form R S
chunks of k = L / (R S) consecutive layers; chunk c = r S + s runs on stage s in repeat r.
The stages' parameters are viewed as [S, R, k, ...] (`stage_params`), sharded over the
'stage' mesh axis. A forward pass keeps a buffer of one activation per stage, x_SbTD, sharded
over 'stage'; each of the R M + S - 1 iterations

  1. puts the next input into stage 0's slot: micro-batch t in the first repeat, and after
     that the last stage's output for micro-batch t mod M from the repeat before,
  2. runs every stage on its slot at once (jax.vmap over S, spmd_axis_name='stage': each
     device group computes its own stage, with the chunk of the repeat it is in),
  3. takes the last stage's output as a finished micro-batch (of this repeat),
  4. rolls the buffer by one stage (jnp.roll: XLA lowers it to a collective permute).

Work item w = r M + m (repeat r, micro-batch m) is in stage s at iteration w + s. Repeats need
M >= S: a micro-batch leaves the last stage at iteration r M + m + S - 1 and re-enters stage 0
at (r + 1) M + m. The S - 1 iterations at either end leave some stages idle, the bubble,
(S - 1) / (R M + S - 1) of the step: repeats divide the bubble's share by about R, at the cost
of R times as many (R times shorter) iterations, each with its point-to-point send.

R = 1 is GPipe. R > 1 is MaxText's circular pipeline rather than 1F1B: both are schedules of
the one scan, and autodiff of the iteration scan gives the backward schedule (all forwards,
then all backwards), so a stage keeps every iteration's residuals for the backward. Remat
'full' wraps a stage's whole chunk (only its input is kept per iteration); the other policies
apply per layer inside the chunk, as in the unpipelined stack. 1F1B's gain, holding only S micro-batches' activations, needs a hand-written
backward interleaved with the forward; circular repeats cut the bubble instead and keep
autodiff, remat and the unpipelined parameters.

Parameters. Scanned stacks are stored [L, ...] and sharded over 'stage' in contiguous blocks
of L / S layers (the 'layers' -> 'stage' rule), so GPipe's [S, 1, k] view moves nothing. With
R > 1 stage s needs chunks s, S + s, 2 S + s, ... instead of its block: each step reshuffles
the stacked weights across stages (an all-to-all of the stage-sharded weights, and of their
gradients). The alternative, storing the stack in the circular order (MaxText's layout),
would make checkpoints, decoding and exports depend on the pipeline settings. Unrolled stacks
(one parameter tree per layer, with no 'layers' axis) keep every layer on every stage and are
sliced per stage inside the step: their compute is pipelined, their weights are not split.

Every stage runs the same chunk program, so the layers of a chunk must repeat across chunks:
layer i has the attention pattern and feed-forward type of layer i mod k (one of each for a
scanned stack). Every family: decoders, encoders, and both stacks of an encoder-decoder (each
pipelined on its own; the decoder's micro-batches carry their encoder outputs and cross
masks). Mixture-of-experts layers run inside their stage with experts over 'expert' as usual;
their statistics (aux losses, loads) and their balancing state come out per chunk, averaged
over the micro-batches as gradient accumulation averages them. Context parallelism composes:
a causal stack enters the zig-zag order once, outside the pipeline, and the context-parallel
attention's shard_map inside the stage vmap takes 'stage' as one of its manual axes. The
embeddings and the head run, replicated, on every stage.

Pipeline micro-batches are not `train.micro_batches`: those run one after another (gradient
accumulation), while a pipeline needs several in flight at once. Each gradient-accumulation
micro-batch is cut into M pipeline micro-batches, so the two compose. Dropout masks are keyed
by (iteration, stage), so they differ from the unpipelined run's (everything else is equal).

Shape letters beyond docs' key: S stages, R repeats, M micro-batches, b rows of one
micro-batch (B / M), k layers of one chunk.
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


def repeats_of(config) -> int:
  """R: `mesh.pipeline_repeats`, passes of every micro-batch through the stages (1: GPipe)."""
  return int(config.mesh.get('pipeline_repeats', 1))


def micro_batches_of(config) -> int:
  """M: `mesh.pipeline_micro_batches`, or the stage count when it is 0."""
  return int(config.mesh.get('pipeline_micro_batches', 0)) or stages_of(config)


def bubble_fraction(stages: int, micro_batches: int, repeats: int = 1) -> float:
  """The idle share of a pipelined step: (S - 1) / (R M + S - 1)."""
  return (stages - 1) / (repeats * micro_batches + stages - 1)


def iterations(stages: int, micro_batches: int, repeats: int = 1) -> int:
  """Iterations of the schedule, each running one chunk of L / (R S) layers per stage."""
  return repeats * micro_batches + stages - 1


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
  repeats = c.mesh.get('pipeline_repeats', 1)
  if not isinstance(repeats, int) or repeats < 1:
    raise ConfigError('mesh.pipeline_repeats', repeats, 'must be a positive integer (1: GPipe)')
  if stages == 1:
    return
  chunks = stages * repeats
  for field, layers in _stack_depths(c.model):
    if layers % chunks:
      field_value = ('mesh.stage', stages) if repeats == 1 else (
          'mesh.pipeline_repeats', repeats)
      raise ConfigError(*field_value, f'mesh.stage x mesh.pipeline_repeats = {chunks} chunks '
                        f'do not divide {field}={layers}: pick a divisor of the layer count')
  _check_chunks_repeat(c, chunks)
  micro = micro or stages
  if repeats > 1 and micro < stages:
    raise ConfigError('mesh.pipeline_micro_batches', micro,
                      f'circular repeats (mesh.pipeline_repeats={repeats}) need at least '
                      f'mesh.stage={stages} micro-batches in flight: raise it or use repeats 1')
  rules = dict((name, axes) for name, axes in c.mesh.rules)
  layers_rule = rules.get('layers')
  if AXIS not in (layers_rule if isinstance(layers_rule, (tuple, list)) else (layers_rule,)):
    raise ConfigError('mesh.rules', f'layers -> {layers_rule}', f"mesh.stage={stages} needs "
                      "the rule ('layers', 'stage') (config_lib.DEFAULT_RULES has it)")
  rows = c.train.batch_size // c.train.micro_batches
  if rows % micro:
    raise ConfigError('mesh.pipeline_micro_batches', micro,
                      f'must divide the {rows} sequences of each train micro-batch '
                      f'(train.batch_size={c.train.batch_size} / train.micro_batches='
                      f'{c.train.micro_batches})')


def _check_chunks_repeat(c, chunks: int) -> None:
  """Every stage runs one chunk program: an unrolled stack's per-layer attention patterns and
  mixers must repeat every L / chunks layers (layer i is layer i mod k's kind)."""
  from research.layers import mixers, patterns  # pylint: disable=g-import-not-at-top
  cycles = [('model.attention.pattern', c.model.attention.pattern, patterns.parse_pattern)]
  if c.model.get('mixer') is not None:
    cycles.append(('model.mixer.pattern', c.model.mixer.pattern, mixers.parse_pattern))
  for field, layers in _stack_depths(c.model):
    k = layers // chunks
    every = c.model.moe.every
    if c.model.moe.num_experts and k % every:
      raise ConfigError('model.moe.every', every, f'does not divide {k}, the layers of one '
                        f'pipeline chunk ({field}={layers} over mesh.stage x '
                        f'mesh.pipeline_repeats = {chunks}): every chunk must hold the same '
                        'layer types')
    for cycle_field, text, parse in cycles:
      kinds = parse(text)
      if any(kinds[i % len(kinds)] != kinds[(i % k) % len(kinds)] for i in range(layers)):
        raise ConfigError(cycle_field, text,
                          f'does not repeat every {k} layers, the layers of one pipeline chunk '
                          f'({field}={layers} over mesh.stage x mesh.pipeline_repeats = '
                          f'{chunks}): use a cycle whose length divides {k}, or fewer chunks')


def _stack_depths(m) -> list[tuple[str, int]]:
  """(field, layers) of each stack the pipeline cuts: one, or an encoder-decoder's two."""
  if m.get('family', 'decoder') != 'encoder_decoder':
    return [('model.num_layers', m.num_layers)]
  return [('model.encoder_layers' if m.encoder_layers else 'model.num_layers',
           m.encoder_layers or m.num_layers),
          ('model.decoder_layers' if m.decoder_layers else 'model.num_layers',
           m.decoder_layers or m.num_layers)]


def split_micro(x, m: int):
  """[B, ...] -> [M, B/M, ...] taking every M-th row, so each batch shard feeds every
  micro-batch and nothing moves between devices (pipeline and gradient-accumulation
  micro-batches alike)."""
  return x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)


def merge_micro(x):
  """The inverse of `split_micro`: [M, B/M, ...] -> [B, ...]."""
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def stage_params(tree: Any, *, stages: int, repeats: int, layers: int, scanned: bool) -> Any:
  """A stack's parameters (or other per-layer variables) as one chunk's tree with leading
  [S, R] axes.

  Scanned: {'layers': [L, ...]} -> {'layers': [S, R, k, ...]}. Unrolled: {'layer_i': tree}
  for i < L -> {'layer_j': [S, R, ...]} for j < k, layer_j of chunk r S + s being layer
  (r S + s) k + j; layers without the variable (a dense layer's MoE state) stay absent.
  """
  s_count, r_count = stages, repeats
  k = layers // (s_count * r_count)
  if scanned:
    def to_stages(p_L):
      return p_L.reshape(r_count, s_count, k, *p_L.shape[1:]).swapaxes(0, 1)
    return {'layers': jax.tree.map(to_stages, tree['layers'])}

  def chunk_stack(j):
    trees = [tree[f'layer_{c * k + j}'] for c in range(r_count * s_count)]
    return jax.tree.map(lambda *p: jnp.stack(p).reshape(r_count, s_count, *p[0].shape)
                        .swapaxes(0, 1), *trees)
  return {f'layer_{j}': chunk_stack(j) for j in range(k) if f'layer_{j}' in tree}


def unstage_params(tree_SR: Any, *, stages: int, repeats: int, layers: int,
                   scanned: bool) -> Any:
  """The inverse of `stage_params`: a chunk's [S, R, ...] tree back in the stack's layout."""
  if scanned:
    return {'layers': jax.tree.map(lambda p: p.swapaxes(0, 1).reshape(-1, *p.shape[3:]),
                                   tree_SR['layers'])}
  k = layers // (stages * repeats)
  return {f'layer_{(r * stages + s) * k + j}': jax.tree.map(lambda p: p[s, r], tree_SR[
      f'layer_{j}']) for j in range(k) if f'layer_{j}' in tree_SR
          for r in range(repeats) for s in range(stages)}


def _mesh_has_stage() -> bool:
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and AXIS in mesh.axis_names


def _constrain_stages(x_SbTD):
  """The buffer: stages over 'stage', rows over the 'batch' rule's axes, as the layers want."""
  if not _mesh_has_stage():
    return x_SbTD
  spec = nn.logical_to_mesh_axes(('batch', 'length', 'act_embed'))
  return jax.lax.with_sharding_constraint(x_SbTD, P(AXIS, *spec))


def schedule(chunk_fn: Callable, params_SR: Any, x_BTD, batch_args: Any, *, stages: int,
             repeats: int, micro_batches: int, policy=None, remat: bool = False, rng=None):
  """Runs a stack of R S chunks as `stages` pipeline stages, `repeats` times round, over
  `micro_batches` micro-batches of x_BTD (module docstring).

  chunk_fn(params, x_bTD, batch_args_b, rng) -> (y_bTD, aux) applies one chunk of layers;
  params_SR is `stage_params`'s tree, [S, R, ...]. `batch_args` (a tree of [B, ...] arrays:
  positions, masks) is cut into micro-batches like x_BTD and reaches each stage with its
  micro-batch. aux (a tree of float arrays, e.g. a chunk's MoE statistics; {} for none) is
  averaged over the micro-batches per chunk. With `remat`, each stage's chunk is a
  jax.checkpoint with `policy`. Returns (y_BTD, aux_SR): y_BTD equals the unpipelined stack's
  output, aux_SR has leading [S, R] axes like params_SR.
  """
  s_count, r_count, m_count = stages, repeats, micro_batches
  x_MbTD = split_micro(x_BTD, m_count)
  args_Mb = jax.tree.map(lambda a: split_micro(a, m_count), batch_args)
  body = jax.checkpoint(chunk_fn, policy=policy, prevent_cse=False) if remat else chunk_fn

  def stage_fn(params_R, repeat, x_bTD, args_b, rng):
    # GPipe's one repeat is a static index: a dynamic one (a gather, and a scatter-add in the
    # backward) made XLA hold more copies of the stage's weights (Llama 3.1 70B: 93 GiB a
    # chip against 49).
    pick = (lambda p: p[0]) if r_count == 1 else (lambda p: p[repeat])
    return body(jax.tree.map(pick, params_R), x_bTD, args_b, rng)

  run_stages = jax.vmap(stage_fn, spmd_axis_name=AXIS if _mesh_has_stage() else None)
  stage_S = jnp.arange(s_count)
  work_items = r_count * m_count

  def iteration(carry, t):
    state_SbTD, out_MbTD, aux_SR = carry
    # Past the last micro-batch of the first repeat, stage 0 takes the previous repeat's
    # output of micro-batch t mod M (GPipe: recomputes the last micro-batch, bubble work
    # whose output never lands).
    first_bTD = x_MbTD[jnp.minimum(t, m_count - 1)]
    if r_count > 1:
      first_bTD = jnp.where(t < m_count, first_bTD, out_MbTD[t % m_count])
    state_SbTD = state_SbTD.at[0].set(first_bTD)
    work_S = jnp.clip(t - stage_S, 0, work_items - 1)  # the work item each stage holds
    args_Sb = jax.tree.map(lambda a: a[work_S % m_count], args_Mb)
    rng_S = None if rng is None else jax.vmap(
        lambda s: jax.random.fold_in(jax.random.fold_in(rng, t), s))(stage_S)
    y_SbTD, chunk_aux_S = run_stages(params_SR, work_S // m_count, state_SbTD, args_Sb, rng_S)
    y_SbTD = _constrain_stages(y_SbTD)
    # Each (stage, repeat) slot gains 1/M of the aux of the real (non-bubble) work it did.
    real_S = (t - stage_S >= 0) & (t - stage_S < work_items)
    weight_SR = jax.nn.one_hot(work_S // m_count, r_count) * (real_S / m_count)[:, None]
    aux_SR = jax.tree.map(
        lambda acc, a: acc + weight_SR.reshape(*weight_SR.shape, *(1,) * (a.ndim - 1)) * a[
            :, None].astype(acc.dtype), aux_SR, chunk_aux_S)
    # The last stage finishes work item t - (S - 1); before that its writes to slot 0 are
    # bubble values, overwritten when micro-batch 0 arrives (before stage 0 reads it back).
    done = jnp.clip(t - (s_count - 1), 0, work_items - 1) % m_count
    out_MbTD = jax.lax.dynamic_update_index_in_dim(out_MbTD, y_SbTD[-1], done, 0)
    return (_constrain_stages(jnp.roll(y_SbTD, 1, axis=0)), out_MbTD, aux_SR), None

  state_SbTD = _constrain_stages(jnp.zeros((s_count, *x_MbTD.shape[1:]), x_BTD.dtype))
  aux_shapes = jax.eval_shape(
      stage_fn, jax.tree.map(lambda p: p[0], params_SR), 0, x_MbTD[0], jax.tree.map(
          lambda a: a[0], args_Mb), None if rng is None else rng)[1]
  aux_SR = jax.tree.map(lambda a: jnp.zeros((s_count, r_count, *a.shape), a.dtype), aux_shapes)
  (_, out_MbTD, aux_SR), _ = jax.lax.scan(
      iteration, (state_SbTD, jnp.zeros_like(x_MbTD), aux_SR),
      jnp.arange(iterations(s_count, m_count, r_count)))
  return merge_micro(out_MbTD), aux_SR
