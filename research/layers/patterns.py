"""Attention patterns: which keys each query may see, per layer, by name (`model.attention`).

A pattern is a predicate on (query index i, key index j) within a row, AND-ed with the model's
base mask (same segment; key not after the query for causal stacks, except both inside a
prefix-LM prefix). Indices are positions in the row, so inside one packed example they are
its relative positions. Patterns by name:

  full      every key (the base mask alone).
  sliding   |i - j| < window: a causal stack sees the query and the window - 1 keys before it
            (Mistral's W; cuDNN's local_window_size=(W-1, 0)); a bidirectional stack (encoder)
            sees 2 x window - 1 keys centred on the query, clipped at the ends.
  longformer  sliding, plus global tokens (Longformer): the first `global_tokens` of the row
            attend to every key and are attended by every query. With packed rows only the
            first example has them. In a causal stack this is a window plus attention sinks.
  bigbird   block-sparse at `block_size` granularity (BigBird): key block kb is visible from
            query block qb when |qb - kb| <= window / block_size (the sliding blocks), kb or qb
            is one of the global_tokens / block_size global blocks, or kb is one of the
            `random_blocks` random blocks of qb (seeded by `seed`; in a causal stack drawn from
            the blocks before the window, so a prefix of the row has the same blocks at any
            length).
  chunked   i // chunk == j // chunk: attention inside fixed chunks (Llama 4's local layers).

Layers choose patterns cyclically from `model.attention.pattern`, a comma list with optional
repeats: 'sliding*5,full' makes layers 0-4 sliding, layer 5 full, layers 6-10 sliding, ... (five
local : one global). The other fields are shared by every layer that uses them.

For the block-sparse kernels (research/layers/blockwise.py) a pattern also gives, per query
block, the static list of key blocks it can reach (`block_table`); `block_size` is that tile
(and BigBird's block). `visible_keys` counts attended keys per query, for FLOP accounting.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError

KINDS = ('full', 'sliding', 'longformer', 'bigbird', 'chunked')
# How self-attention runs over a sequence split on the mesh's context axis
# (research/layers/context_parallel.py).
CONTEXT_STRATEGIES = ('all_gather', 'ring')
FIELD = 'model.attention'


@dataclasses.dataclass(frozen=True)
class Pattern:
  """One layer's pattern (hashable: a static module attribute)."""
  kind: str = 'full'
  window: int = 0
  global_tokens: int = 0
  block_size: int = 64
  random_blocks: int = 0
  chunk: int = 0
  seed: int = 0

  @property
  def is_full(self) -> bool:
    return self.kind == 'full'

  @property
  def window_blocks(self) -> int:
    """BigBird's sliding radius in blocks."""
    return self.window // self.block_size

  @property
  def global_blocks(self) -> int:
    return self.global_tokens // self.block_size

  def global_rows(self, length: int) -> int:
    """Queries (the first ones of the row) that attend to every key."""
    if self.kind == 'longformer':
      return min(self.global_tokens, length)
    if self.kind == 'bigbird':
      return min(self.global_blocks * self.block_size, length)
    return 0

  def describe(self) -> str:
    return {'full': 'full',
            'sliding': f'sliding W={self.window}',
            'longformer': f'longformer W={self.window} G={self.global_tokens}',
            'bigbird': (f'bigbird b={self.block_size} W={self.window} G={self.global_tokens} '
                        f'r={self.random_blocks}'),
            'chunked': f'chunked C={self.chunk}'}[self.kind]


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Resolved `model.attention` (hashable; part of TransformerConfig)."""
  pattern: tuple[str, ...] = ('full',)  # the cycle of per-layer kinds
  window: int = 0
  global_tokens: int = 0
  block_size: int = 64
  random_blocks: int = 0
  chunk: int = 0
  implementation: str = 'auto'
  seed: int = 0
  context_strategy: str = 'all_gather'

  def layer_pattern(self, i: int) -> Pattern:
    """Layer i's pattern (0-based, within its stack): the cycle's entry i mod its length."""
    return Pattern(kind=self.pattern[i % len(self.pattern)], window=self.window,
                   global_tokens=self.global_tokens, block_size=self.block_size,
                   random_blocks=self.random_blocks, chunk=self.chunk, seed=self.seed)

  def layer_patterns(self, num_layers: int) -> tuple[Pattern, ...]:
    return tuple(self.layer_pattern(i) for i in range(num_layers))

  @property
  def uniform(self) -> bool:
    return len(set(self.pattern)) == 1


def parse_cycle(text: str, kinds, field: str, example: str, noun: str) -> tuple[str, ...]:
  """A per-layer cycle, 'a*5,b' -> ('a',) * 5 + ('b',), of names from `kinds`; raises
  ConfigError naming `field` on bad syntax or an unknown name. Attention patterns and sequence
  mixers (research/layers/mixers.py) are both written this way; `example` shows the syntax and
  `noun` names one entry in the error."""
  names = []
  for part in str(text).split(','):
    name, star, count = part.strip().partition('*')
    name = name.strip()
    try:
      repeat = int(count) if star else 1
    except ValueError:
      repeat = 0
    if repeat < 1:
      raise ConfigError(field, text, f"'{part.strip()}': write NAME or NAME*COUNT with COUNT "
                        f">= 1, e.g. {example}")
    if name not in kinds:
      raise ConfigError(field, text, f"unknown {noun} '{name}': choose from "
                        f"{list(kinds)}, interleaved as {example}")
    names += [name] * repeat
  return tuple(names)


def parse_pattern(text: str) -> tuple[str, ...]:
  """'sliding*5,full' -> ('sliding',) * 5 + ('full',); raises ConfigError on bad syntax."""
  return parse_cycle(text, KINDS, f'{FIELD}.pattern', "'sliding*5,full' (five local : one global)",
                     'pattern')


def check_attention(att, *, num_layers: int, scan_layers: bool, implementations) -> None:
  """Validates `model.attention` (a ConfigDict or mapping); raises ConfigError naming the field."""
  kinds = parse_pattern(att['pattern'])
  for field in ('window', 'global_tokens', 'random_blocks', 'chunk'):
    if att[field] < 0:
      raise ConfigError(f'{FIELD}.{field}', att[field], 'must be >= 0')
  if att['block_size'] <= 0:
    raise ConfigError(f'{FIELD}.block_size', att['block_size'],
                      'must be a positive integer (the blockwise tile; BigBird\'s block)')
  if att['implementation'] not in implementations:
    raise ConfigError(f'{FIELD}.implementation', att['implementation'],
                      f'choose one of {list(implementations)}')
  strategy = att.get('context_strategy', 'all_gather')
  if strategy not in CONTEXT_STRATEGIES:
    raise ConfigError(f'{FIELD}.context_strategy', strategy,
                      f'choose one of {list(CONTEXT_STRATEGIES)}')
  used = set(kinds)
  if used & {'sliding', 'longformer'} and att['window'] <= 0:
    raise ConfigError(f'{FIELD}.window', att['window'],
                      f"pattern {att['pattern']!r} needs a window of >= 1 keys")
  if 'longformer' in used and att['global_tokens'] <= 0:
    raise ConfigError(f'{FIELD}.global_tokens', att['global_tokens'],
                      'the longformer pattern needs >= 1 global tokens (else use sliding)')
  if 'chunked' in used and att['chunk'] <= 0:
    raise ConfigError(f'{FIELD}.chunk', att['chunk'], 'the chunked pattern needs chunk >= 1')
  if 'bigbird' in used:
    b = att['block_size']
    for field in ('window', 'global_tokens'):
      if att[field] % b:
        raise ConfigError(f'{FIELD}.{field}', att[field],
                          f'bigbird counts it in blocks: use a multiple of '
                          f'{FIELD}.block_size={b} (0 allowed)')
  if scan_layers and len(used) > 1:
    raise ConfigError(f'{FIELD}.pattern', att['pattern'],
                      'model.scan_layers=True scans one layer type: use one pattern for every '
                      'layer, or model.scan_layers=False to interleave')
  del num_layers


def resolve(att) -> AttentionConfig:
  """`model.attention` (validated; None: the defaults) -> AttentionConfig."""
  if att is None:
    return AttentionConfig()
  return AttentionConfig(
      pattern=parse_pattern(att['pattern']), window=int(att['window']),
      global_tokens=int(att['global_tokens']), block_size=int(att['block_size']),
      random_blocks=int(att['random_blocks']), chunk=int(att['chunk']),
      implementation=str(att['implementation']), seed=int(att['seed']),
      context_strategy=str(att.get('context_strategy', 'all_gather')))


# ----------------------------------------------------------------------------------------------
# BigBird's random blocks and block-level reach (static numpy).


@functools.lru_cache(maxsize=64)
def random_blocks(pattern: Pattern, num_blocks: int, causal: bool) -> tuple[tuple[int, ...], ...]:
  """Per query block, its random key blocks: outside the sliding and global blocks; causal:
  only blocks before the window (so the choice for block qb never depends on the length)."""
  r, g = pattern.window_blocks, pattern.global_blocks
  out = []
  for qb in range(num_blocks):
    if causal:
      candidates = np.arange(g, max(g, qb - r))
    else:
      all_blocks = np.arange(num_blocks)
      candidates = all_blocks[(np.abs(all_blocks - qb) > r) & (all_blocks >= g)]
    take = min(pattern.random_blocks, len(candidates))
    if take == 0 or qb < g:
      out.append(())
      continue
    rng = np.random.default_rng([pattern.seed, qb])
    out.append(tuple(sorted(int(x) for x in rng.choice(candidates, take, replace=False))))
  return tuple(out)


@functools.lru_cache(maxsize=64)
def bigbird_reach(pattern: Pattern, num_blocks: int, causal: bool) -> np.ndarray:
  """bool [num_blocks, num_blocks]: key block kb visible from query block qb (before causality)."""
  qb = np.arange(num_blocks)[:, None]
  kb = np.arange(num_blocks)[None, :]
  g = pattern.global_blocks
  reach = (np.abs(qb - kb) <= pattern.window_blocks) | (kb < g) | (qb < g)
  for row, blocks in enumerate(random_blocks(pattern, num_blocks, causal)):
    reach[row, list(blocks)] = True
  return reach


# ----------------------------------------------------------------------------------------------
# The predicate, on index arrays (jnp or numpy; broadcasting).


def allowed(pattern: Pattern, i, j, *, causal: bool, length: int):
  """bool: key index j is visible from query index i under `pattern` (before the base mask).

  `length` (the row length, or the cache length when decoding) sizes BigBird's block tables.
  """
  xp = jnp if isinstance(i, jnp.ndarray) or isinstance(j, jnp.ndarray) else np
  kind = pattern.kind
  if kind == 'full':
    return xp.ones(xp.broadcast_shapes(xp.shape(i), xp.shape(j)), bool)
  if kind == 'sliding':
    return xp.abs(i - j) < pattern.window
  if kind == 'longformer':
    g = pattern.global_tokens
    return (xp.abs(i - j) < pattern.window) | (j < g) | (i < g)
  if kind == 'chunked':
    return (i // pattern.chunk) == (j // pattern.chunk)
  if kind == 'bigbird':
    b = pattern.block_size
    n = -(-length // b)
    reach = bigbird_reach(pattern, n, causal)
    flat = xp.asarray(reach.reshape(-1))
    index = xp.clip(i // b, 0, n - 1) * n + xp.clip(j // b, 0, n - 1)
    return flat[index] if xp is np else jnp.take(flat, index)
  raise ValueError(kind)


# ----------------------------------------------------------------------------------------------
# Block tables for the block-sparse kernels.


def _window_range(lo_token: int, hi_token: int, window: int, b: int, n: int, forward: bool):
  """Key blocks holding some j with |i - j| < window for i in [lo_token, hi_token]."""
  lo = max(0, (lo_token - window + 1) // b)
  hi = min(n - 1, (hi_token + window - 1) // b) if forward else min(n - 1, hi_token // b)
  return range(lo, hi + 1)


def key_blocks(pattern: Pattern, qb: int, num_blocks: int, *, forward: bool,
               causal: bool) -> list[int]:
  """Key blocks that query block qb (tile `block_size`) can reach, global-query rows aside.

  `forward`: whether keys after the query may be visible (bidirectional stacks, or a prefix-LM
  prefix); when not, blocks after qb are left out. Rows that attend to every key (global
  queries) are computed separately (`Pattern.global_rows`), so their reach is not listed.
  """
  b, n = pattern.block_size, num_blocks
  lo_token, hi_token = qb * b, qb * b + b - 1
  kind = pattern.kind
  if kind == 'full':
    blocks = set(range(n if forward else qb + 1))
  elif kind == 'sliding':
    blocks = set(_window_range(lo_token, hi_token, pattern.window, b, n, forward))
  elif kind == 'longformer':
    blocks = set(_window_range(lo_token, hi_token, pattern.window, b, n, forward))
    blocks |= set(range(min(n, -(-pattern.global_tokens // b))))
  elif kind == 'chunked':
    c = pattern.chunk
    lo = (lo_token // c) * c // b
    hi = min(n - 1, (((hi_token // c) + 1) * c - 1) // b)
    blocks = set(range(lo, hi + 1))
  elif kind == 'bigbird':
    r, g = pattern.window_blocks, pattern.global_blocks
    blocks = set(range(max(0, qb - r), min(n, qb + r + 1)))
    blocks |= set(range(min(g, n)))
    blocks |= set(random_blocks(pattern, n, causal)[qb])
  else:
    raise ValueError(kind)
  if not forward:
    blocks = {kb for kb in blocks if kb <= qb}
  return sorted(blocks)


@functools.lru_cache(maxsize=128)
def block_table(pattern: Pattern, num_blocks: int, *, forward: bool,
                causal: bool) -> tuple[np.ndarray, np.ndarray]:
  """(table [n, w] int32 key-block indices, valid [n, w] bool) for n query blocks.

  Row qb lists the key blocks qb reaches, padded to the widest row with invalid entries (which
  point at a real block and are masked). The width w is what the kernel computes per block.
  """
  rows = [key_blocks(pattern, qb, num_blocks, forward=forward, causal=causal)
          for qb in range(num_blocks)]
  width = max(len(r) for r in rows)
  table = np.zeros((num_blocks, width), np.int32)
  valid = np.zeros((num_blocks, width), bool)
  for qb, r in enumerate(rows):
    table[qb, :len(r)] = r
    table[qb, len(r):] = r[-1] if r else 0
    valid[qb, :len(r)] = True
  return table, valid


# ----------------------------------------------------------------------------------------------
# Counting attended keys (FLOP accounting).


def visible_keys(pattern: Pattern, length: int, *, causal: bool) -> float:
  """Mean number of keys a query attends to in a row of `length` (one segment, no prefix)."""
  t = length
  i = np.arange(t, dtype=np.int64)
  kind = pattern.kind
  if kind == 'full':
    return (t + 1) / 2 if causal else float(t)
  if kind == 'sliding':
    return float(np.mean(_window_counts(i, t, pattern.window, causal)))
  if kind == 'chunked':
    c = pattern.chunk
    start = (i // c) * c
    end = np.minimum(start + c, t) - 1
    counts = (i - start + 1) if causal else (end - start + 1)
    return float(np.mean(counts))
  if kind == 'longformer':
    g = min(pattern.global_tokens, t)
    w = pattern.window
    counts = _window_counts(i, t, w, causal)
    # Global keys j < g outside the window: for causal queries, j <= i too.
    lo = np.maximum(i - w + 1, 0)  # first key of the window
    extra = np.minimum(lo, g)  # keys j < min(lo, g) are outside the window and global
    counts = counts + extra
    if not causal:
      # Global keys after the window: j in (i + w - 1, g).
      counts = counts + np.maximum(g - (i + w), 0)
      counts = np.where(i < g, t, counts)  # global queries see every key
    return float(np.mean(counts))
  if kind == 'bigbird':
    return _bigbird_mean(pattern, t, causal)
  raise ValueError(kind)


def _window_counts(i, t, w, causal):
  lo = np.maximum(i - w + 1, 0)
  hi = i if causal else np.minimum(i + w - 1, t - 1)
  return hi - lo + 1


def _bigbird_mean(pattern: Pattern, t: int, causal: bool) -> float:
  """Exact mean over queries, from block pairs: full pairs, diagonal pairs, ragged last block."""
  b = pattern.block_size
  n = -(-t // b)
  reach = bigbird_reach(pattern, n, causal)
  sizes = np.full(n, b, np.int64)
  sizes[-1] = t - (n - 1) * b
  total = 0.0
  for qb in range(n):
    kbs = np.nonzero(reach[qb])[0]
    if causal:
      before = kbs[kbs < qb]
      total += sizes[qb] * sizes[before].sum()
      if reach[qb, qb]:
        total += sizes[qb] * (sizes[qb] + 1) / 2
    else:
      total += sizes[qb] * sizes[kbs].sum()
  return total / t


def count_dense(pattern: Pattern, length: int, *, causal: bool) -> float:
  """Mean visible keys by brute force over the dense mask (tests; small lengths only)."""
  i = np.arange(length)[:, None]
  j = np.arange(length)[None, :]
  mask = allowed(pattern, i, j, causal=causal, length=length)
  if causal:
    mask = mask & (j <= i)
  return float(mask.sum(axis=1).mean())


def describe_layers(att: AttentionConfig, num_layers: int) -> str:
  """'sliding W=512 x5, full x1' style summary of a stack's layers."""
  names = [att.layer_pattern(i).describe() for i in range(num_layers)]
  groups = []
  for name in names:
    if groups and groups[-1][0] == name:
      groups[-1][1] += 1
    else:
      groups.append([name, 1])
  return ', '.join(f'{n} x{c}' if c > 1 else n for n, c in groups)

