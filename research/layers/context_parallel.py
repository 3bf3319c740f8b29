"""Context parallelism: self-attention over a sequence split across the mesh's `context` axis.

A sequence longer than one device holds is cut along its length: the logical rules map the
activations' 'length' axis to the `context` mesh axis (`config.mesh.context`), so norms, MLPs
and embeddings work on their own slice with ordinary GSPMD shardings. Self-attention is the one
layer whose tokens need the others; it runs here, under `jax.shard_map` over `context` (and the
batch's axes, so that a row's mask never needs another device), with each device holding the
queries of its slice. Two strategies (`model.attention.context_strategy`):

  all_gather  each device gathers every device's keys and values (and their token indices and
              segment ids) and attends its queries to all of them (MaxText's default). One
              collective per layer and pass; keys/values of the whole sequence on every device
              while the layer runs. The backward gathers again (only the device's own slice is
              kept between the passes) and reduce-scatters the keys' and values' gradients.
  ring        key/value blocks travel round the devices by `jax.lax.ppermute`, one block at a
              time, while each device accumulates its queries' attention with an online
              (flash-style) softmax: memory is one block, whatever the number of devices. The
              backward pass sends the blocks round again, their gradients travelling with them,
              and returns each block's gradient to its owner.

Both compute each (query tile, key tile) pair of `model.attention.block_size` tokens at a time
with a custom VJP (FlashAttention-2's recomputation): the forward keeps only the output and the
per-row log-sum-exp, never the [T, S] probabilities. A tile pair that the mask rules out entirely
(causal future, another packed segment, out of the window) is skipped at run time (`lax.cond`).
The custom VJP wraps the shard_maps, and each shard_map is a remat that saves nothing, so that
no partial evaluation looks inside: in a scanned layer stack the token indices and segment ids
are loop-invariant, and JAX would otherwise hoist every tile's mask out of the layer loop,
O(T^2) memory (tests/parallel/test_context_parallel.py checks the compiled memory).

Causal load balancing (zig-zag). With a contiguous split, device n-1 of n would attend to the
whole sequence and device 0 to one slice. Causal stacks therefore cut the sequence into 2n
chunks and give device i chunks i and 2n-1-i: every device gets one early and one late chunk,
so the same amount of causal work. `research.models.transformer.Stack` permutes its inputs
(hidden states, positions, segment ids and token indices) into that order once and its output
back (`to_zigzag` / `from_zigzag`, two ppermutes each). Masks here are built from the token
indices that travel with the keys (attention.MaskSpec's q_index_BT / k_index_BS), so any order
is correct by construction; only the ring's block skipping (below) assumes the layout.
Bidirectional stacks (encoders) keep the contiguous split, which is already balanced.

Windowed patterns and the ring (the skip rule). At ring step s device d holds the keys of
device (d - s) mod n. A step is run only if, for some device, some query of its chunks may see
some key of the visiting chunks: for a sliding window of W, chunks whose nearest tokens are W or
more apart never see each other, so with chunks of c tokens a device needs only the blocks
within ceil((W - 1) / c) chunks of its own (both neighbours' blocks in the zig-zag layout, whose
second chunk runs backwards). Steps that no device needs are left out of the program (no
transfer, no compute); the blocks then jump several devices in one ppermute. Chunked attention
skips the same way; full and Longformer layers need every step.

Supported: decoder (causal, zig-zag) and encoder (bidirectional) stacks; full, sliding,
chunked and Longformer patterns; packed segments (segment ids, 0 = padding); grouped-query
heads; both strategies. Not supported (check_config says so before anything compiles): prefix
LM, a relative position bias (T5), BigBird, soft-capped scores, prompt tuning, encoder-decoder
models, and capacity-based MoE routers in decoders (their token priority follows the order).
Decoding (`decode=True`) never comes here: KV-cache steps run the ordinary attention, with the
ordinary shardings.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from research.errors import ConfigError
from research.layers import patterns as patterns_lib
from research.parallel import mesh as mesh_lib

AXIS = 'context'
STRATEGIES = patterns_lib.CONTEXT_STRATEGIES
PATTERNS = ('full', 'sliding', 'chunked', 'longformer')
_NEG_INF = -1e30  # finite: exp(m_old - m_new) stays 0, never NaN, before a row's first key


# ---------------------------------------------------------------------------------------------
# The mesh and the layout.


def context_size() -> int:
  """The ambient mesh's context-axis size (`jax.set_mesh`); 1 outside a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return 1
  return dict(mesh.shape).get(AXIS, 1)


def chunks_of(device: int, n: int, causal: bool) -> tuple[int, ...]:
  """Chunks that `device` of `n` holds: zig-zag (i, 2n-1-i) of 2n when causal, else (i,) of n."""
  return (device, 2 * n - 1 - device) if causal else (device,)


def zigzag_order(n: int) -> np.ndarray:
  """Chunk order of the zig-zag layout: 0, 2n-1, 1, 2n-2, ..., n-1, n."""
  return np.array([c for d in range(n) for c in chunks_of(d, n, True)])


def _batch_axes(batch: int) -> tuple[str, ...]:
  """Mesh axes the 'batch' rule cuts rows over (those that divide `batch`): manual in the
  shard_map too, so a tile's skip test reads only this device's rows."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = tuple(nn.get_logical_axis_rules())
  if not rules:
    return ()
  entry = nn.logical_to_mesh_axes(('batch',), rules)[0]
  axes = [a for a in mesh_lib.axes_of(entry) if a != AXIS]
  while axes and batch % math.prod(mesh.shape[a] for a in axes):
    axes.pop()
  return tuple(axes)


def _stage_axis() -> tuple[str, ...]:
  """('stage',) on a pipelined mesh: inside the pipeline's stage vmap (spmd_axis_name='stage')
  the batching rule shards the stacked stage dimension over it, so it must be manual too."""
  mesh = jax.sharding.get_abstract_mesh()
  stage = 'stage'
  return (stage,) if not mesh.empty and mesh.shape.get(stage, 1) > 1 else ()


def _parity_moves(n: int, src, dst):
  """For chunk parity 0 and 1: (source slot per device, ppermute pairs, destination slot per
  device). Each device holds one even and one odd chunk in both layouts, so a layout change is
  two permutations of the devices."""
  where = {}
  for d in range(n):
    for slot, chunk in enumerate(dst(d)):
      where[chunk] = (d, slot)
  moves = []
  for parity in (0, 1):
    src_slot, dst_slot, pairs = np.zeros(n, np.int32), np.zeros(n, np.int32), []
    for d in range(n):
      slot, chunk = next((s, c) for s, c in enumerate(src(d)) if c % 2 == parity)
      to, to_slot = where[chunk]
      src_slot[d], dst_slot[to] = slot, to_slot
      pairs.append((d, to))
    moves.append((src_slot, tuple(pairs), dst_slot))
  return moves


def _relayout(x_BT, n: int, to_zigzag: bool):
  """This device's [B, L, ...] slice, from the contiguous to the zig-zag layout or back."""
  contiguous = lambda d: (2 * d, 2 * d + 1)
  zigzag = lambda d: chunks_of(d, n, True)
  src, dst = (contiguous, zigzag) if to_zigzag else (zigzag, contiguous)
  d = jax.lax.axis_index(AXIS)
  half = x_BT.shape[1] // 2
  slots = (x_BT[:, :half], x_BT[:, half:])
  received = []
  for src_slot, pairs, dst_slot in _parity_moves(n, src, dst):
    sent = jnp.where(jnp.asarray(src_slot)[d] == 0, slots[0], slots[1])
    received.append((jax.lax.ppermute(sent, AXIS, pairs), jnp.asarray(dst_slot)[d]))
  (a, a_slot), (b, _) = received
  first = jnp.where(a_slot == 0, a, b)
  second = jnp.where(a_slot == 0, b, a)
  return jnp.concatenate([first, second], axis=1)


def _permute(arrays, to_zigzag: bool):
  n = context_size()
  fn = lambda *xs: tuple(_relayout(x, n, to_zigzag) for x in xs)
  specs = tuple(P(None, AXIS) for _ in arrays)
  return jax.shard_map(fn, in_specs=specs, out_specs=specs, axis_names={AXIS},
                       check_vma=False)(*arrays)


def to_zigzag(*arrays_BT):
  """[B, T, ...] arrays in token order -> zig-zag order over the ambient context axis."""
  return _permute(arrays_BT, True)


def from_zigzag(*arrays_BT):
  """The inverse of `to_zigzag`."""
  return _permute(arrays_BT, False)


# ---------------------------------------------------------------------------------------------
# Which blocks can see each other (the ring's skip rule).


def _chunks_visible(pattern: patterns_lib.Pattern, causal: bool, q: tuple[int, int],
                    k: tuple[int, int]) -> bool:
  """Whether some query in [q0, q1) may see some key in [k0, k1) (conservative)."""
  (q0, q1), (k0, k1) = q, k
  if causal and k0 > q1 - 1:
    return False
  kind = pattern.kind
  gap = max(0, k0 - (q1 - 1), q0 - (k1 - 1))  # nearest query-key distance
  if kind == 'full':
    return True
  if kind == 'sliding':
    return gap < pattern.window
  if kind == 'longformer':
    g = pattern.global_tokens
    return gap < pattern.window or k0 < g or q0 < g
  if kind == 'chunked':
    c = pattern.chunk
    return q0 // c <= (k1 - 1) // c and k0 // c <= (q1 - 1) // c
  raise ValueError(f'context parallelism does not support the {pattern.describe()} pattern')


def ring_steps(pattern: patterns_lib.Pattern | None, n: int, length: int,
               causal: bool) -> tuple[int, ...]:
  """Ring steps s (device d attends to device (d - s) mod n's keys) that some device needs."""
  pattern = pattern or patterns_lib.Pattern()
  per = 2 if causal else 1
  c = length // (per * n)
  span = lambda chunk: (chunk * c, (chunk + 1) * c)
  steps = []
  for s in range(n):
    if any(_chunks_visible(pattern, causal, span(qc), span(kc))
           for d in range(n) for qc in chunks_of(d, n, causal)
           for kc in chunks_of((d - s) % n, n, causal)):
      steps.append(s)
  return tuple(steps)


# ---------------------------------------------------------------------------------------------
# Flash-style tiles: the forward keeps (acc, row max, row sum), the backward recomputes.


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything static about one layer's context-parallel attention (hashable)."""
  pattern: patterns_lib.Pattern
  causal: bool
  scale: float
  tile: int
  length: int  # the whole row (BigBird-style tables would need it; patterns_lib.allowed takes it)
  n: int
  steps: tuple[int, ...]  # ring steps to run; (0,) for all_gather (after the gather)
  strategy: str = 'all_gather'


def _tile_mask(st: _Static, qi, qs, ki, ks):
  """bool [B, tq, tk] from token indices and segment ids: what attention.MaskSpec.dense says."""
  i, j = qi[:, :, None], ki[:, None, :]
  mask = qs[:, :, None] == ks[:, None, :]
  if st.causal:
    mask &= j <= i
  if not st.pattern.is_full:
    mask &= patterns_lib.allowed(st.pattern, i, j, causal=st.causal, length=st.length)
  return mask


def _scores(st: _Static, q_BGRQK, k_BSGK, mask_BQS):
  s = jnp.einsum('bgrqk,bsgk->bgrqs', q_BGRQK, k_BSGK, preferred_element_type=jnp.float32)
  return jnp.where(mask_BQS[:, None, None], s * st.scale, _NEG_INF)


def _forward_tile(st: _Static, carry, q, qi, qs, k, v, ki, ks):
  """One key tile into one query tile's running (acc, max, sum); skipped when all masked."""
  mask = _tile_mask(st, qi, qs, ki, ks)

  def compute(carry):
    acc, m, l = carry
    s = _scores(st, q, k, mask)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(mask[:, None, None], jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum('bgrqs,bsgk->bgrqk', p.astype(v.dtype), v,
                    preferred_element_type=jnp.float32)
    return acc * corr[..., None] + pv, m_new, l * corr + p.sum(-1)

  return jax.lax.cond(mask.any(), compute, lambda c: c, carry)


def _forward_block(st: _Static, state, q_tiles, kv_tiles):
  """Every query tile against every key tile of one block (tiles lead each array)."""
  def per_query_tile(args):
    carry, (q, qi, qs) = args
    body = lambda c, kv: (_forward_tile(st, c, q, qi, qs, *kv), None)
    return jax.lax.scan(body, carry, kv_tiles)[0]

  return jax.lax.map(per_query_tile, (state, q_tiles))


def _backward_tile(st: _Static, q, do, lse, delta, qi, qs, k, v, ki, ks):
  """(dq, dk, dv) in float32 of one tile pair, from the saved log-sum-exp (FlashAttention-2)."""
  mask = _tile_mask(st, qi, qs, ki, ks)
  b, g, r, tq, kd = q.shape
  zeros = (jnp.zeros((b, g, r, tq, kd), jnp.float32),
           jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))

  def compute(_):
    s = _scores(st, q, k, mask)
    p = jnp.where(mask[:, None, None], jnp.exp(s - lse[..., None]), 0.0)
    dv = jnp.einsum('bgrqs,bgrqk->bsgk', p.astype(do.dtype), do,
                    preferred_element_type=jnp.float32)
    dp = jnp.einsum('bgrqk,bsgk->bgrqs', do, v, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[..., None]) * st.scale
    dq = jnp.einsum('bgrqs,bsgk->bgrqk', ds.astype(k.dtype), k,
                    preferred_element_type=jnp.float32)
    dk = jnp.einsum('bgrqs,bgrqk->bsgk', ds.astype(q.dtype), q,
                    preferred_element_type=jnp.float32)
    return dq, dk, dv

  return jax.lax.cond(mask.any(), compute, lambda _: zeros, None)


def _backward_block(st: _Static, q_tiles, kv_tiles):
  """dq (per query tile) and dk, dv (per key tile) of one block: key tiles outer, so each
  tile's dk, dv accumulate in a carry and dq in one buffer."""
  q, do, lse, delta, qi, qs = q_tiles

  def per_key_tile(dq_all, kv):
    k, v, ki, ks = kv

    def body(dkv, xs):
      dq, dk, dv = _backward_tile(st, *xs, k, v, ki, ks)
      return (dkv[0] + dk, dkv[1] + dv), dq

    zeros = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    (dk, dv), dq_parts = jax.lax.scan(body, zeros, (q, do, lse, delta, qi, qs))
    return dq_all + dq_parts, (dk, dv)

  dq0 = jnp.zeros(q.shape, jnp.float32)
  return jax.lax.scan(per_key_tile, dq0, kv_tiles)


# Tiles: [B, L, ...] -> [L / tile, B, tile, ...] (and the query heads as [B, G, R, L, K]).

def _split(x_BL, tile: int):
  b, l = x_BL.shape[:2]
  return jnp.moveaxis(x_BL.reshape((b, l // tile, tile) + x_BL.shape[2:]), 1, 0)


def _merge(x_NBT):
  x = jnp.moveaxis(x_NBT, 0, 1)
  return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _heads_tiles(x_BLHK, g: int, tile: int):
  """[B, L, H, K] -> [L / tile, B, G, R, tile, K]."""
  b, l, h, kd = x_BLHK.shape
  x = x_BLHK.reshape(b, l // tile, tile, g, h // g, kd)
  return jnp.transpose(x, (1, 0, 3, 4, 2, 5))


def _heads_untile(x_NBGRTK):
  n, b, g, r, t, kd = x_NBGRTK.shape
  return jnp.transpose(x_NBGRTK, (1, 0, 4, 2, 3, 5)).reshape(b, n * t, g * r, kd)


def _rows_tiles(x_BGRL, tile: int):
  """Per-row statistics [B, G, R, L] -> [L / tile, B, G, R, tile]."""
  b, g, r, l = x_BGRL.shape
  return jnp.moveaxis(x_BGRL.reshape(b, g, r, l // tile, tile), 3, 0)


def _rows_untile(x_NBGRT):
  x = jnp.moveaxis(x_NBGRT, 0, 3)
  return x.reshape(x.shape[:3] + (x.shape[3] * x.shape[4],))


def _shift(tree, by: int, n: int):
  """Every device's arrays to device (d + by) mod n: device d then holds (d - by)'s."""
  pairs = tuple((d, (d + by) % n) for d in range(n))
  return jax.tree.map(lambda x: jax.lax.ppermute(x, AXIS, pairs), tree)


def _runs(steps: tuple[int, ...]) -> list[tuple[int, ...]]:
  """Consecutive runs of ring steps: (0, 1, 2, 6, 7) -> [(0, 1, 2), (6, 7)]."""
  runs = []
  for s in steps:
    if runs and s == runs[-1][-1] + 1:
      runs[-1] += (s,)
    else:
      runs.append((s,))
  return runs


def _ring(st: _Static, visit, carry, moving):
  """carry, moving = visit(carry, moving) at every ring step of `st.steps`, where `moving` (the
  key/value block, and in the backward its gradient) is the visiting device's. Each run of
  consecutive steps is one scan of shift-by-one ppermutes (a program the size of two steps,
  whatever the ring's length); a skipped stretch is one longer jump. Returns (carry, moving,
  the last step), so the caller can send `moving` home."""
  at = 0
  for run in _runs(st.steps):
    if run[0] != at:
      moving = _shift(moving, run[0] - at, st.n)
    carry, moving = visit(carry, moving)
    if len(run) > 1:
      body = lambda state, _: (visit(state[0], _shift(state[1], 1, st.n)), None)
      (carry, moving), _ = jax.lax.scan(body, (carry, moving), None, length=len(run) - 1)
    at = run[-1]
  return carry, moving, at


def _gather(x):
  return jax.lax.all_gather(x, AXIS, axis=1, tiled=True)


def _forward_local(st: _Static, q, k, v, qi, qs, ki, ks):
  """One device's queries against the keys of `st.steps` (after the all-gather, or round the
  ring): (out_BLHK, lse_BGRL), the per-row log-sum-exp that the backward needs."""
  if st.strategy == 'all_gather':
    k, v, ki, ks = _gather(k), _gather(v), _gather(ki), _gather(ks)
  g, t = k.shape[2], st.tile
  q_tiles = (_heads_tiles(q, g, t), _split(qi, t), _split(qs, t))
  b, l, h, kd = q.shape
  state = (jnp.zeros((l // t, b, g, h // g, t, kd), jnp.float32),
           jnp.full((l // t, b, g, h // g, t), _NEG_INF, jnp.float32),
           jnp.zeros((l // t, b, g, h // g, t), jnp.float32))

  def visit(state, kv):
    return _forward_block(st, state, q_tiles, tuple(_split(x, t) for x in kv)), kv

  (acc, m, l_sum), _, _ = _ring(st, visit, state, (k, v, ki, ks))
  safe = jnp.where(l_sum > 0, l_sum, 1.0)  # a row that sees no key (impossible: itself)
  out = _heads_untile(acc / safe[..., None]).astype(q.dtype)
  lse = jnp.where(l_sum > 0, m + jnp.log(safe), 0.0)
  return out, _rows_untile(lse)


def _backward_local(st: _Static, q, k, v, qi, qs, ki, ks, out, lse, dout):
  """(dq, dk, dv) of one device's slice. all_gather: gathers again (nothing of the whole row
  was kept) and reduce-scatters dk, dv; ring: the blocks go round again, each with its
  gradient so far, and the gradients end at the blocks' owners."""
  if st.strategy == 'all_gather':
    k, v, ki, ks = _gather(k), _gather(v), _gather(ki), _gather(ks)
  g, t = k.shape[2], st.tile
  do = _heads_tiles(dout, g, t)
  delta = (do.astype(jnp.float32) * _heads_tiles(out, g, t).astype(jnp.float32)).sum(-1)
  q_tiles = (_heads_tiles(q, g, t), do, _rows_tiles(lse, t), delta, _split(qi, t),
             _split(qs, t))

  def visit(dq, moving):
    kv, (dk, dv) = moving
    dq_s, (dk_s, dv_s) = _backward_block(st, q_tiles, tuple(_split(x, t) for x in kv))
    return dq + dq_s, (kv, (dk + _merge(dk_s), dv + _merge(dv_s)))

  dq0 = jnp.zeros(q_tiles[0].shape, jnp.float32)
  dkv0 = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  dq, (_, (dk, dv)), at = _ring(st, visit, dq0, ((k, v, ki, ks), dkv0))
  if st.strategy == 'all_gather':
    scatter = lambda x: jax.lax.psum_scatter(x, AXIS, scatter_dimension=1, tiled=True)
    dk, dv = scatter(dk), scatter(dv)
  elif at:  # home: each block's gradient back to the device that owns the block
    dk, dv = _shift((dk, dv), -at, st.n)
  return _heads_untile(dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.lru_cache(maxsize=64)
def _attention_fn(st: _Static, rows):
  """custom_vjp (q, k, v, q_index, q_segment, k_index, k_segment) -> out on global arrays.

  The custom VJP sits outside the shard_maps, so autodiff (and the partial evaluation of a
  scanned layer stack) never looks inside them: only (q, k, v, out, lse) are kept.
  """
  x4, x2 = P(rows, AXIS, None, None), P(rows, AXIS)
  stats = P(rows, None, None, AXIS)  # lse_BGRT
  manual = {AXIS, *mesh_lib.axes_of(rows), *_stage_axis()}
  smap = lambda f, ins, outs: jax.shard_map(f, in_specs=ins, out_specs=outs, axis_names=manual,
                                            check_vma=False)
  inputs = (x4, x4, x4, x2, x2, x2, x2)
  # Opaque to partial evaluation (a remat that saves nothing): inside a scanned layer stack
  # the token indices and segment ids are loop-invariant, and partial evaluation would
  # otherwise hoist every tile's mask out of the layer loop: O(T^2) booleans.
  opaque = lambda f: jax.checkpoint(f, prevent_cse=False,
                                    policy=jax.checkpoint_policies.nothing_saveable)
  forward = opaque(smap(functools.partial(_forward_local, st), inputs, (x4, stats)))
  backward = opaque(smap(functools.partial(_backward_local, st), inputs + (x4, stats, x4),
                         (x4, x4, x4)))

  @jax.custom_vjp
  def attend_fn(*args):
    return forward(*args)[0]

  def fwd(*args):
    out, lse = forward(*args)
    return out, (*args, out, lse)

  def bwd(res, dout):
    return (*backward(*res, dout), None, None, None, None)

  attend_fn.defvjp(fwd, bwd)
  return attend_fn


def tile_size(block_size: int, length: int, n: int, causal: bool) -> int:
  """The tile: `block_size`, or a whole chunk when chunks are smaller."""
  return min(block_size, length // (n * (2 if causal else 1)))


def attend(q_BTHK, k_BSGK, v_BSGK, spec, pattern: patterns_lib.Pattern | None = None, *,
           strategy: str = 'all_gather', block_size: int = 512, scale: float | None = None):
  """Self-attention of a sequence sharded over the ambient mesh's context axis.

  `spec` is the layer's attention.MaskSpec (in the stack's layout: zig-zag when causal);
  q/k/v are [B, T, ...] with T the whole row. Returns out_BTHK, sharded like q.
  """
  n = context_size()
  if spec.prefix_BT is not None:
    raise ValueError('context parallelism does not support a prefix-LM prefix')
  if strategy not in STRATEGIES:
    raise ValueError(f'context strategy {strategy!r}: choose one of {STRATEGIES}')
  pattern = pattern or patterns_lib.Pattern()
  b, t, _, kd = q_BTHK.shape
  causal = spec.causal
  steps = ring_steps(pattern, n, t, causal) if strategy == 'ring' else (0,)
  st = _Static(pattern=pattern, causal=causal, scale=kd ** -0.5 if scale is None else scale,
               tile=tile_size(block_size, t, n, causal), length=t, n=n, steps=steps,
               strategy=strategy)
  rows = _batch_axes(b)
  rows = None if not rows else rows[0] if len(rows) == 1 else rows
  return _attention_fn(st, rows)(q_BTHK, k_BSGK, v_BSGK, spec.q_index_BT, spec.q_segment_ids_BT,
                                 spec.k_index_BS, spec.k_segment_ids_BS)


# ---------------------------------------------------------------------------------------------
# Validation: before anything compiles.


def check_config(config) -> None:
  """ConfigError (field, value, fix) for a context size or combination this module cannot run;
  nothing when mesh.context is 1."""
  n = config.mesh.get('context', 1)
  if n == 1:
    return
  if n < 1:
    raise ConfigError('mesh.context', n, 'must be a positive integer (the context size is '
                      'fixed, not -1: data.seq_len must divide by it before anything compiles)')
  m = config.model
  family = m.get('family', 'decoder')
  fix = 'or set mesh.context=1'
  if family not in ('decoder', 'encoder'):
    raise ConfigError('model.family', family, f'context parallelism (mesh.context={n}) runs '
                      f"decoder and encoder stacks, not cross-attention: {fix}")
  causal = family == 'decoder'
  t = config.data.seq_len
  pieces = n * (2 if causal else 1)
  if t % pieces:
    split = '2 x context zig-zag chunks (causal)' if causal else 'context chunks'
    raise ConfigError('mesh.context', n, f'does not divide data.seq_len={t} into {split}: '
                      f'use a seq_len that is a multiple of {pieces}')
  att = patterns_lib.resolve(m.attention)
  chunk = t // pieces
  if chunk > att.block_size and chunk % att.block_size:
    raise ConfigError('model.attention.block_size', att.block_size,
                      f'must divide the {chunk}-token chunks that mesh.context={n} cuts '
                      f'data.seq_len={t} into (a tile never straddles two chunks)')
  moe = m.get('moe', None) or {}
  peft = config.get('peft', None) or {}
  mixer = m.get('mixer', None) or {'pattern': 'attention'}
  unsupported = [
      ('objective.name', config.objective.name, config.objective.name == 'prefix_lm',
       'prefix-LM prefixes are not supported'),
      ('model.position', m.position, m.position == 'relative',
       'a relative position bias (T5) is not supported'),
      ('model.attention.pattern', m.attention.pattern, 'bigbird' in att.pattern,
       f'supported patterns are {", ".join(PATTERNS)}'),
      ('model.attention.implementation', att.implementation,
       att.implementation in ('cudnn', 'splash'),
       "self-attention runs its own tiled kernel: use 'auto', 'xla' or 'blockwise'"),
      ('model.attention_softcap', m.get('attention_softcap', 0.0),
       m.get('attention_softcap', 0.0) > 0, 'soft-capped scores are not supported'),
      ('model.mixer.pattern', mixer['pattern'], mixer['pattern'].replace(' ', '').strip(',')
       not in ('attention', ''),
       'a recurrent mixer carries its state along the whole sequence, which this split does '
       'not pass between devices: use attention layers only'),
      ('peft.method', peft.get('method', 'none'), peft.get('method', 'none') == 'prompt',
       'prompt tuning lengthens the row: not supported'),
      ('model.moe.router', moe.get('router', ''), causal and moe.get('num_experts', 0) > 0
       and moe.get('router', '') != 'dropless',
       "capacity routing ranks tokens by their order, which the zig-zag split changes: use "
       "'dropless'"),
  ]
  for field, value, bad, why in unsupported:
    if bad:
      raise ConfigError(field, value, f'with mesh.context={n}: {why} ({fix})')
  length_axes = dict(_rules(config)).get('length')
  if AXIS not in ((length_axes,) if isinstance(length_axes, str) else length_axes or ()):
    raise ConfigError('mesh.rules', f'length -> {length_axes}',
                      f"mesh.context={n} needs the rule ('length', 'context'), as in "
                      'config_lib.DEFAULT_RULES')


def _rules(config):
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in config.mesh.rules)
