"""Reads scaling-law results (one row per trained model or checkpoint) into arrays.

Two CSV layouts are understood, told apart by their header:

* lmforge's `results.csv`: `params`, `tokens`, `loss` (required), `flops` and
  `non_embedding_params` (optional); other columns are ignored. Without `flops`, C = 6 N D.
* Epoch AI's digitisation of Chinchilla's Figure 4 (`epoch_chinchilla_points.csv`):
  `Model Size` (N), `Training FLOP` (C), `loss`; tokens are derived as D = C / (6 N).

Rows whose loss is empty, `nan` or infinite (diverged or unfinished runs) are skipped and counted
in `ScalingData.skipped_rows`; anything else that is not a positive number is an error.

`target` fits another column as the loss L: a downstream metric the sweep collected (its
`sweep.columns`, e.g. `eval/perplexity/bpb`); `1-COLUMN` fits one minus it, the error rate of an
accuracy, so that L still falls with scale towards an irreducible floor.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from experiments.scaling_laws import laws
from research.errors import UserError

# Epoch AI's Chinchilla points, shipped in the repository with their attribution (data/README.md).
EPOCH_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                         'epoch_chinchilla_points.csv')

LMFORGE = 'lmforge'
EPOCH = 'epoch'
LMFORGE_REQUIRED = ('params', 'tokens', 'loss')
EPOCH_COLUMNS = ('Model Size', 'Training FLOP', 'loss')
PARAMS_COLUMNS = ('params', 'non_embedding_params')
# Epoch's replication drops the 5 highest losses (n = 245 -> 240) before fitting.
EPOCH_DROP_HIGHEST = 5


@dataclasses.dataclass(frozen=True)
class ScalingData:
  """Points (N, D, C, L) in float64: parameters, tokens, training FLOP, loss in nats/token."""

  N: np.ndarray
  D: np.ndarray
  C: np.ndarray
  L: np.ndarray
  source: str = ''
  format: str = LMFORGE
  dropped_highest: int = 0
  skipped_rows: int = 0

  def __post_init__(self):
    for name in ('N', 'D', 'C', 'L'):
      object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
    if not self.N.shape == self.D.shape == self.C.shape == self.L.shape or self.N.ndim != 1:
      raise ValueError(f'N, D, C, L need equal 1-d shapes, got {self.N.shape}, {self.D.shape}, '
                       f'{self.C.shape}, {self.L.shape}')

  def __len__(self) -> int:
    return len(self.L)

  def take(self, index) -> ScalingData:
    """The points at `index` (an index array or boolean mask), with the same bookkeeping."""
    return dataclasses.replace(self, N=self.N[index], D=self.D[index], C=self.C[index],
                               L=self.L[index])

  def describe(self) -> str:
    parts = [f'{len(self)} points from {self.source or "arrays"} ({self.format} format)']
    if self.dropped_highest:
      parts.append(f'{self.dropped_highest} highest-loss points dropped')
    if self.skipped_rows:
      parts.append(f'{self.skipped_rows} rows without a finite loss skipped')
    return '; '.join(parts)


def from_arrays(n, d, loss, c=None, *, source: str = '') -> ScalingData:
  """Builds ScalingData from arrays; C defaults to 6 N D."""
  n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
  c = laws.FLOPS_PER_PARAM_TOKEN * n * d if c is None else c
  return ScalingData(N=n, D=d, C=c, L=loss, source=source)


def drop_highest_loss(data: ScalingData, k: int) -> ScalingData:
  """Removes the `k` highest-loss points (Epoch drops 5 outliers from Chinchilla's data)."""
  if k < 0:
    raise UserError(f'--drop_highest={k}: must be >= 0')
  if k == 0:
    return data
  if k >= len(data) - 2:
    raise UserError(f'--drop_highest={k} leaves fewer than 3 of the {len(data)} points: use a '
                    'smaller value')
  keep = np.sort(np.argsort(data.L, kind='stable')[:len(data) - k])
  return dataclasses.replace(data.take(keep), dropped_highest=data.dropped_highest + k)


def detect_format(columns) -> str | None:
  """'epoch', 'lmforge' or None, from a CSV header."""
  columns = set(columns)
  if set(EPOCH_COLUMNS) <= columns:
    return EPOCH
  if set(LMFORGE_REQUIRED) <= columns:
    return LMFORGE
  return None


def read_csv(path: str | os.PathLike,
             *,
             drop_highest: int = 0,
             params_column: str = 'params',
             target: str = 'loss',
             label: str | None = None) -> ScalingData:
  """Reads a results CSV (lmforge or Epoch layout) into ScalingData.

  Args:
    path: the CSV file.
    drop_highest: number of highest-loss points to drop after reading.
    params_column: lmforge layout only: 'params' (Chinchilla's count) or 'non_embedding_params'
      (Kaplan's).
    target: the column fitted as L ('loss'), or '1-COLUMN' for one minus that column.
    label: how errors name the file, e.g. '--data=results.csv'; defaults to the path.

  Raises:
    UserError: the file is missing, has no recognised header, or holds a bad value.
  """
  label = label or str(path)
  if params_column not in PARAMS_COLUMNS:
    raise UserError(f'--params_column={params_column!r}: expected one of '
                    f'{", ".join(PARAMS_COLUMNS)}')
  rows, columns = _read_rows(path, label)
  fmt = detect_format(columns)
  if fmt is None:
    missing = [c for c in LMFORGE_REQUIRED if c not in columns]
    raise UserError(f"{label} has no column {missing[0]!r}: expected {','.join(LMFORGE_REQUIRED)} "
                    f"(optionally flops,non_embedding_params) or the Epoch columns "
                    f"{','.join(repr(c) for c in EPOCH_COLUMNS)}")
  if fmt == LMFORGE and params_column not in columns:
    raise UserError(f'{label} has no column {params_column!r}: pass --params_column=params or add '
                    'the column')
  n_col, c_col, d_col = ((EPOCH_COLUMNS[0], EPOCH_COLUMNS[1], None) if fmt == EPOCH else
                         (params_column, 'flops' if 'flops' in columns else None, 'tokens'))
  complement = target.startswith('1-')
  target_col = target[2:] if complement else target
  if target_col not in columns:
    extra = [c for c in columns if c.startswith('eval/')]
    raise UserError(f'--target={target}: {label} has no column {target_col!r}; its metric '
                    f'columns are {extra or "none"} (a sweep collects them with sweep.columns)')
  n, d, c, loss, skipped = [], [], [], [], 0
  for line, row in rows:
    row_loss = _target(row, target_col, complement, line, label)
    if not np.isfinite(row_loss):
      skipped += 1
      continue
    row_n = _number(row, n_col, line, label)
    row_c = _number(row, c_col, line, label) if c_col else None
    row_d = (_number(row, d_col, line, label) if d_col else
             float(laws.tokens_for_budget(row_n, row_c)))
    n.append(row_n)
    d.append(row_d)
    c.append(laws.FLOPS_PER_PARAM_TOKEN * row_n * row_d if row_c is None else row_c)
    loss.append(row_loss)
  if len(loss) < 3:
    raise UserError(f'{label} has {len(loss)} rows with a finite loss ({skipped} skipped): a fit '
                    'needs at least 3')
  data = ScalingData(N=n, D=d, C=c, L=loss, source=str(path), format=fmt, skipped_rows=skipped)
  return drop_highest_loss(data, drop_highest)


def _target(row: dict, column: str, complement: bool, line: int, label: str) -> float:
  """The row's L: the column (nan when missing), or one minus it."""
  if not complement:
    return _number(row, column, line, label, allow_missing=True)
  text = (row.get(column) or '').strip()
  try:
    value = 1.0 - float(text) if text else float('nan')
  except ValueError:
    raise UserError(f'{label} line {line}: column {column!r} holds {text!r}, not a '
                    'number') from None
  if np.isfinite(value) and value <= 0:
    raise UserError(f'{label} line {line}: 1-{column} is {value!r}: a fitted L must be '
                    'positive (an accuracy of 1 has no error left to fit)')
  return value if np.isfinite(value) else float('nan')


def _read_rows(path, label) -> tuple[list[tuple[int, dict]], list[str]]:
  try:
    with open(path, newline='', encoding='utf-8') as f:
      reader = csv.DictReader(f)
      columns = [c.strip() for c in reader.fieldnames or []]
      rows = [(i + 2, {k.strip(): v for k, v in row.items() if k is not None})
              for i, row in enumerate(reader)
              if any((v or '').strip() for v in row.values() if isinstance(v, str))]
  except FileNotFoundError:
    raise UserError(f'{label}: no such file') from None
  except IsADirectoryError:
    raise UserError(f'{label} is a directory: pass the results CSV file') from None
  except UnicodeDecodeError as e:
    raise UserError(f'{label} is not UTF-8 text ({e.reason} at byte {e.start}): pass a CSV '
                    'file') from None
  except csv.Error as e:
    raise UserError(f'{label} is not a readable CSV: {e}') from None
  if not columns:
    raise UserError(f'{label} is empty: expected a header line such as '
                    f'{",".join(LMFORGE_REQUIRED)}')
  return rows, columns


def _number(row: dict, column: str, line: int, label: str, allow_missing: bool = False) -> float:
  text = (row.get(column) or '').strip()
  if not text and allow_missing:
    return float('nan')
  try:
    value = float(text)
  except ValueError:
    raise UserError(f'{label} line {line}: column {column!r} holds {text!r}, not a '
                    'number') from None
  if allow_missing and not np.isfinite(value):
    return float('nan')
  if not np.isfinite(value) or value <= 0:
    raise UserError(f'{label} line {line}: column {column!r} holds {text!r}: expected a positive '
                    'finite number')
  return value
