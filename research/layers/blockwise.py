"""Block-sparse attention in plain XLA: compute and memory linear in length for sparse patterns.

Queries are split into blocks of `pattern.block_size`; each query block gathers only the key
blocks its pattern can reach (a static table, research.layers.patterns.block_table: the window's
blocks, global blocks, BigBird's random blocks, the chunk's blocks) and computes scores there,
masked inside the blocks by the pattern's predicate, the segment ids, causality and the
prefix-LM prefix. Out-of-table blocks are never read. For a window of W keys the work per query
is about W + block_size keys, whatever the length; autodiff of the gathers and einsums keeps the
backward pass linear too. Rows that attend to every key (Longformer's global tokens, BigBird's
global blocks, in bidirectional stacks or prefixes) are a separate G x T dense attention.

Runs wherever XLA does (CPU, GPU, TPU). Scores and softmax in float32; a row with no visible key
(impossible in self-attention: the query sees itself) gives zeros.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from research.layers import patterns as patterns_lib
from research.layers.softcap import soft_cap

_NEG_INF = -1e30


def _gather_blocks(x_BN, table_NW: np.ndarray):
  """x [B, n, ...] -> [B, n, w, ...]: row qb holds blocks table[qb] (a gather with static
  indices; its transpose, a scatter-add, keeps the backward pass linear too)."""
  n, w = table_NW.shape
  gathered = jnp.take(x_BN, jnp.asarray(table_NW.reshape(-1)), axis=1)
  return gathered.reshape(x_BN.shape[:1] + (n, w) + x_BN.shape[2:])


def _pad_to(x, length: int, axis: int, value=0):
  pad = length - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _base_mask(seg_q, seg_k, i, j, prefix_q, prefix_k, causal: bool):
  """Same segment, and (causal) key not after query unless both are in the prefix."""
  mask = seg_q == seg_k
  if causal:
    before = j <= i
    if prefix_q is not None:
      before = before | (prefix_q & prefix_k)
    mask = mask & before
  return mask


def attend_blockwise(q_BTHK, k_BSGK, v_BSGK, pattern: patterns_lib.Pattern, *, segment_ids_BT,
                     causal: bool, prefix_BT=None, bias_HTS=None, scale=None, softcap=None):
  """Self-attention (S = T, key j at row index j) under `pattern`; returns out_BTHK.

  `segment_ids_BT` keeps packed examples apart; `prefix_BT` (causal only) marks prefix-LM
  tokens that also see later prefix tokens; `bias_HTS` ([H, T, T] or [B, H, T, T]) is gathered
  block by block (its own size is the caller's); `softcap` soft-caps the scaled scores.
  """
  b_, t, h, kdim = q_BTHK.shape
  g = k_BSGK.shape[2]
  r = h // g
  if k_BSGK.shape[1] != t:
    raise ValueError(f'blockwise attention is self-attention: {t} queries, '
                     f'{k_BSGK.shape[1]} keys')
  scale = kdim ** -0.5 if scale is None else scale
  # The tile: BigBird's block is part of its semantics; elsewhere shrink it for short rows.
  block = pattern.block_size if pattern.kind == 'bigbird' else min(pattern.block_size, t)
  tile = dataclasses.replace(pattern, block_size=block)
  n = -(-t // block)
  tp = n * block
  forward = (not causal) or prefix_BT is not None
  table, valid = patterns_lib.block_table(tile, n, forward=forward, causal=causal)
  w = table.shape[1]

  q = _pad_to(q_BTHK, tp, 1).reshape(b_, n, block, g, r, kdim)
  k = _gather_blocks(_pad_to(k_BSGK, tp, 1).reshape(b_, n, block, g, kdim), table)
  v = _gather_blocks(_pad_to(v_BSGK, tp, 1).reshape(b_, n, block, g, kdim), table)
  k = k.reshape(b_, n, w * block, g, kdim)
  v = v.reshape(b_, n, w * block, g, kdim)
  seg = _pad_to(segment_ids_BT, tp, 1, value=-1).reshape(b_, n, block)
  seg_k = _gather_blocks(seg, table).reshape(b_, n, 1, w * block)
  seg_q = seg[:, :, :, None]

  # Indices of query i (block qb) and key j (table slot c of row qb), built in the program from
  # iotas and the small [n, w] table, so no [T, w x block] constant enters it.
  i_NQ1 = (jnp.arange(n, dtype=jnp.int32)[:, None, None] * block +
           jnp.arange(block, dtype=jnp.int32)[None, :, None])
  j_N1S = (jnp.asarray(table)[:, :, None] * block +
           jnp.arange(block, dtype=jnp.int32)).reshape(n, 1, w * block)
  valid_N1S = jnp.repeat(jnp.asarray(valid), block, axis=1).reshape(n, 1, w * block)
  static_NQS = valid_N1S & (j_N1S < t)
  if pattern.kind != 'bigbird':  # BigBird's table is its block-level pattern
    static_NQS = static_NQS & patterns_lib.allowed(tile, i_NQ1, j_N1S, causal=causal, length=t)
  prefix_q = prefix_k = None
  if prefix_BT is not None:
    prefix = _pad_to(prefix_BT.astype(bool), tp, 1).reshape(b_, n, block)
    prefix_q = prefix[:, :, :, None]
    prefix_k = _gather_blocks(prefix, table).reshape(b_, n, 1, w * block)
  mask_BNQS = _base_mask(seg_q, seg_k, i_NQ1, j_N1S, prefix_q, prefix_k, causal) & static_NQS

  scores = jnp.einsum('bnqgrk,bnsgk->bngrqs', q, k, preferred_element_type=jnp.float32) * scale
  scores = soft_cap(scores, softcap)
  if bias_HTS is not None:
    scores += _gather_bias(bias_HTS, table, b_, n, block, tp, g, r)
  scores = jnp.where(mask_BNQS[:, :, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = jnp.where(jnp.any(mask_BNQS, axis=-1)[:, :, None, None, :, None], probs, 0.0)
  out = jnp.einsum('bngrqs,bnsgk->bnqgrk', probs.astype(v.dtype), v)
  out_BTHK = out.reshape(b_, tp, h, kdim)[:, :t]

  rows = pattern.global_rows(t) if forward else 0
  if rows:  # global queries see every key: a dense [rows, T] attention, linear in T
    out_BTHK = out_BTHK.at[:, :rows].set(_global_rows(
        q_BTHK[:, :rows], k_BSGK, v_BSGK, pattern, segment_ids_BT, prefix_BT, causal,
        None if bias_HTS is None else bias_HTS[..., :rows, :], scale, softcap))
  return out_BTHK


def _gather_bias(bias_HTS, table, b_, n, block, tp, g, r):
  """Bias blocks for the table: [B or 1, n, G, R, block, w * block] float32."""
  bias = bias_HTS if bias_HTS.ndim == 4 else bias_HTS[None]
  bias = _pad_to(_pad_to(bias.astype(jnp.float32), tp, 2), tp, 3)
  nb, h = bias.shape[:2]
  bias = bias.reshape(nb, h, n, block, n, block)
  rows = np.arange(n)[:, None]
  picked = bias[:, :, rows, :, table, :]  # advanced indices first: [n, w, nb, h, block, block]
  picked = jnp.transpose(picked, (2, 0, 3, 4, 1, 5))  # [nb, n, h, block(q), w, block(k)]
  w = table.shape[1]
  return picked.reshape(nb, n, g, r, block, w * block)


def _global_rows(q_BGHK, k_BSGK, v_BSGK, pattern, segment_ids_BT, prefix_BT, causal, bias, scale,
                 softcap):
  """Exact attention for the first `rows` queries against all keys (G x T)."""
  b_, rows, h, kdim = q_BGHK.shape
  t, g = k_BSGK.shape[1], k_BSGK.shape[2]
  i = jnp.arange(rows)[:, None]
  j = jnp.arange(t)[None, :]
  prefix_q = prefix_k = None
  if prefix_BT is not None:
    prefix_q, prefix_k = prefix_BT[:, :rows, None], prefix_BT[:, None, :]
  mask = _base_mask(segment_ids_BT[:, :rows, None], segment_ids_BT[:, None, :], i, j, prefix_q,
                    prefix_k, causal)
  mask = mask & patterns_lib.allowed(pattern, i, j, causal=causal, length=t)
  q = q_BGHK.reshape(b_, rows, g, h // g, kdim)
  scores = jnp.einsum('btgrk,bsgk->bgrts', q, k_BSGK, preferred_element_type=jnp.float32) * scale
  scores = soft_cap(scores, softcap)
  if bias is not None:
    bias = jnp.broadcast_to(bias, (b_, h) + bias.shape[-2:]).astype(jnp.float32)
    scores += bias.reshape(b_, g, h // g, rows, t)
  scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = jnp.where(jnp.any(mask, axis=-1)[:, None, None, :, None], probs, 0.0)
  out = jnp.einsum('bgrts,bsgk->btgrk', probs.astype(v_BSGK.dtype), v_BSGK)
  return out.reshape(b_, rows, h, kdim)
