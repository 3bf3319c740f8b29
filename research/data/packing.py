"""Packing variable-length examples into fixed-length rows with segment ids.

Short examples (sentences, prompt/response pairs) waste compute when each is padded to the
context length. Packing places several in one row; `segment_ids` (1, 2, ... per example, 0 for
padding) keep attention inside each example (research.layers.attention.make_mask) and
`positions` restart at zero per example, so a packed row computes exactly what the examples
would compute alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from research.errors import UserError


def pack(examples: Sequence[Sequence[int]], seq_len: int, *, pad_id: int = 0
         ) -> dict[str, np.ndarray]:
  """First-fit packing, in order: tokens, segment_ids and positions, each int32 [rows, seq_len].

  Raises:
    UserError: an example longer than `seq_len` (cut or filter examples first; nothing is
      dropped silently).
  """
  too_long = [i for i, e in enumerate(examples) if len(e) > seq_len]
  if too_long:
    raise UserError(f'{len(too_long)} examples are longer than seq_len={seq_len} (first: index '
                    f'{too_long[0]}, {len(examples[too_long[0]])} tokens): truncate or filter them')
  rows: list[list[Sequence[int]]] = []
  free: list[int] = []
  for example in examples:
    if not len(example):
      continue
    for r, space in enumerate(free):
      if len(example) <= space:
        rows[r].append(example)
        free[r] -= len(example)
        break
    else:
      rows.append([example])
      free.append(seq_len - len(example))
  tokens = np.full((len(rows), seq_len), pad_id, np.int32)
  segment_ids = np.zeros((len(rows), seq_len), np.int32)
  positions = np.zeros((len(rows), seq_len), np.int32)
  for r, row in enumerate(rows):
    start = 0
    for s, example in enumerate(row, start=1):
      end = start + len(example)
      tokens[r, start:end] = example
      segment_ids[r, start:end] = s
      positions[r, start:end] = np.arange(len(example))
      start = end
  return dict(tokens=tokens, segment_ids=segment_ids, positions=positions)
