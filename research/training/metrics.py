"""Run logs: metrics.jsonl (one JSON object per logged step) and TensorBoard event files.

Only process 0 writes. TensorBoard files come from tensorboardX, which needs no TensorFlow.
"""

from __future__ import annotations

import json
import math
import os

import jax


class MetricsWriter:

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: (float(v) if v is not None else None) for k, v in metrics.items()}
    self._jsonl.write(json.dumps(json_row(step, clean), allow_nan=False) + '\n')
    self._jsonl.flush()
    for name, value in clean.items():
      if value is not None and math.isfinite(value):
        self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def json_row(step: int, metrics: dict[str, float | None]) -> dict:
  """One metrics.jsonl row: valid JSON, so NaN and infinities become null, and the row lists
  the names of those values under 'nonfinite'."""
  row, bad = {'step': int(step)}, []
  for name, value in metrics.items():
    if value is not None and not math.isfinite(value):
      bad.append(name)
      value = None
    row[name] = value
  if bad:
    row['nonfinite'] = bad
  return row


def drop_rows_after(workdir: str, step: int) -> int:
  """Resuming from `step`: rows logged after it (by a run that crashed or stopped later) are
  removed, so that each step appears once and steps only increase. Returns how many."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.isfile(path):  # (a device file is not a log)
    return 0
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      row_step = json.loads(line)['step']
    except (ValueError, KeyError, TypeError):
      continue  # a line cut short by a crash
    if row_step <= step:
      kept.append(line if line.endswith('\n') else line + '\n')
  if len(kept) != len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, path)
  return len(lines) - len(kept)


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
