"""Figures of the MoE routing study, from the variants' logs in WORKDIR.

    python -m experiments.moe_routing.plot --workdir=runs/moe_routing

run.py draws them at the end; this command draws them again (e.g. while a study runs). They
read WORKDIR/variants.json and each variant's metrics.jsonl and timeline.jsonl:

* val_loss_vs_steps.png: validation loss (nats/token) against training step, one line a variant.
* val_loss_vs_wall_time.png: the same against the variant's elapsed wall time in seconds
  (compilation and the periodic evaluations included; timeline.jsonl).
* expert_load.png: small multiples, a row per MoE variant and a column per MoE layer: the share
  of the layer's (token, choice) assignments each expert received over each logging interval
  (before capacity) against the step, with the balanced share 1/E dashed.
* dropped_fraction.png: per MoE variant against the step, the fraction of assignments dropped
  past capacity (left) and the load's coefficient of variation (right).

Non-causal variants (expert choice in a decoder) are drawn dashed and labelled as such.
Figures are built without pyplot (no global matplotlib state changes).
"""

from __future__ import annotations

import json
import os
import re

from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

LOSS_LABEL = 'validation loss (nats/token)'
STEP_LABEL = 'training step'
_LOAD_KEY = re.compile(r'^train/moe/(.+)/tokens_per_expert/(\d+)$')
FILES = ('val_loss_vs_steps.png', 'val_loss_vs_wall_time.png', 'expert_load.png',
         'dropped_fraction.png')


def _read_jsonl(path: str) -> list[dict]:
  from experiments.moe_routing import run  # pylint: disable=g-import-not-at-top
  return run.read_jsonl(path)


def _by_step(entries, key):
  """{step: value} of the entries that have `key` (the last entry wins: resumed runs)."""
  out = {}
  for e in entries:
    if e.get(key) is not None and 'step' in e:
      out[int(e['step'])] = float(e[key])
  return dict(sorted(out.items()))


def _figure(nrows: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.4):
  fig = Figure(figsize=(width * ncols, height * nrows), layout='constrained')
  FigureCanvasAgg(fig)
  axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
  return fig, axes


def _style(i: int, variant: dict) -> dict:
  style = dict(color=f'C{i}', marker='o', markersize=3, lw=1.5,
               label=variant['label'] + ('' if variant['causal'] else ' - leaks the future'))
  if not variant['causal']:
    style['ls'] = '--'
  return style


def load_variants(workdir: str) -> list[dict]:
  """variants.json with each variant's logs attached ('metrics', 'timeline')."""
  path = os.path.join(workdir, 'variants.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is --workdir a study experiments.moe_routing.run '
                            'wrote?')
  with open(path) as f:
    variants = json.load(f)
  for v in variants:
    d = os.path.join(workdir, v['name'])
    v['metrics'] = _read_jsonl(os.path.join(d, 'metrics.jsonl'))
    v['timeline'] = _read_jsonl(os.path.join(d, 'timeline.jsonl'))
  return variants


def loss_vs_steps(variants) -> Figure:
  fig, (ax,) = _figure()
  for i, v in enumerate(variants):
    loss = _by_step(v['metrics'], 'eval/loss')
    if loss:
      ax.plot(list(loss), list(loss.values()), **_style(i, v))
  ax.set_xlabel(STEP_LABEL)
  ax.set_ylabel(LOSS_LABEL)
  ax.set_title('Validation loss at equal active FLOPs per token')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def loss_vs_wall_time(variants) -> Figure:
  fig, (ax,) = _figure()
  for i, v in enumerate(variants):
    loss = _by_step(v['metrics'], 'eval/loss')
    wall = _by_step(v['timeline'], 'wall_s')
    steps = [s for s in loss if s in wall]
    if steps:
      ax.plot([wall[s] for s in steps], [loss[s] for s in steps], **_style(i, v))
  ax.set_xlabel('wall time (s; compilation and evaluations included)')
  ax.set_ylabel(LOSS_LABEL)
  ax.set_title('Validation loss against wall time')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def _layer_order(name: str):
  numbers = re.findall(r'\d+', name)
  return (int(numbers[-1]) if numbers else -1, name)


def expert_shares(metrics) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(layers [L], steps [S], shares [S, L, E]): each expert's share of its layer's assignments
  over each logging interval (the logged tokens_per_expert, normalised per layer)."""
  by_step = {}  # resumed runs log some steps twice: the last entry wins
  for e in metrics:
    per_layer = {}
    for key, value in e.items():
      m = _LOAD_KEY.match(key)
      if m and value is not None:
        per_layer.setdefault(m.group(1), {})[int(m.group(2))] = float(value)
    if per_layer:
      by_step[int(e['step'])] = per_layer
  if not by_step:
    return [], np.zeros((0,)), np.zeros((0, 0, 0))
  steps = sorted(by_step)
  layers = sorted(by_step[steps[-1]], key=_layer_order)
  shares = np.zeros((len(steps), len(layers), len(by_step[steps[-1]][layers[0]])))
  for i, s in enumerate(steps):
    for j, layer in enumerate(layers):
      counts = by_step[s].get(layer, {})
      c = np.array([counts.get(k, np.nan) for k in range(shares.shape[2])])
      shares[i, j] = c / max(np.nansum(c), 1e-9)
  return layers, np.array(steps), shares


def expert_load(variants, max_layers: int = 6) -> Figure | None:
  """Small multiples: a row per MoE variant, a column per MoE layer (at most `max_layers`,
  evenly spaced), each expert's share of the layer's assignments against the step."""
  moe = [(v, *expert_shares(v['metrics'])) for v in variants if v['num_experts']]
  moe = [m for m in moe if m[1]]
  if not moe:
    return None
  ncols = min(max_layers, max(len(m[1]) for m in moe))
  fig, axes = _figure(len(moe), ncols, width=3.3, height=2.5)
  for row, (v, layers, steps, shares) in enumerate(moe):
    picked = np.unique(np.linspace(0, len(layers) - 1, min(ncols, len(layers))).round()
                       ).astype(int)
    e = v['num_experts']
    for col in range(ncols):
      ax = axes[row * ncols + col]
      if col >= len(picked):
        ax.set_visible(False)
        continue
      j = picked[col]
      for k in range(shares.shape[2]):
        ax.plot(steps, shares[:, j, k], lw=1.1, color=f'C{k % 10}', label=f'expert {k}')
      ax.axhline(1 / e, color='k', ls='--', lw=0.9, label=f'balanced 1/E = {1 / e:.3f}')
      ax.set_ylim(0, max(0.5, float(np.nanmax(shares[:, j])) * 1.05))
      ax.grid(alpha=0.3)
      ax.tick_params(labelsize=7)
      ax.set_title(f'{layers[j]}', fontsize=8)
      if col == 0:
        ax.set_ylabel(v['label'] + ('' if v['causal'] else ' (non-causal)') +
                      '\nshare of assignments', fontsize=7)
      if row == len(moe) - 1:
        ax.set_xlabel(STEP_LABEL, fontsize=8)
  axes[0].legend(fontsize=6, ncol=2)
  fig.suptitle('Expert load over training: each expert\'s share of its layer\'s (token, choice) '
               'assignments, before capacity, per logging interval', fontsize=10)
  return fig


def dropped_fraction(variants) -> Figure | None:
  moe = [(i, v) for i, v in enumerate(variants) if v['num_experts']]
  if not moe:
    return None
  fig, (ax_drop, ax_cv) = _figure(1, 2, width=5.6)
  for i, v in moe:
    style = _style(i, v)
    dropped = _by_step(v['metrics'], 'train/moe/dropped_fraction')
    cv = _by_step(v['metrics'], 'train/moe/load_cv')
    if dropped:
      ax_drop.plot(list(dropped), list(dropped.values()), **style)
    if cv:
      ax_cv.plot(list(cv), list(cv.values()), **style)
  ax_drop.set_xlabel(STEP_LABEL)
  ax_drop.set_ylabel('dropped fraction of (token, choice) assignments')
  ax_drop.set_title('Assignments dropped past expert capacity')
  ax_drop.set_ylim(bottom=0)
  ax_cv.set_xlabel(STEP_LABEL)
  ax_cv.set_ylabel('load CV (std / mean of assignments per expert)')
  ax_cv.set_title('Load imbalance')
  ax_cv.set_ylim(bottom=0)
  for ax in (ax_drop, ax_cv):
    ax.grid(alpha=0.3)
  ax_drop.legend(fontsize=7)
  return fig


def plot_all(workdir: str) -> list[str]:
  """Writes the figures into WORKDIR; returns their paths (figures with no data are skipped)."""
  variants = load_variants(workdir)
  figures = dict(zip(FILES, (loss_vs_steps(variants), loss_vs_wall_time(variants),
                             expert_load(variants), dropped_fraction(variants))))
  paths = []
  for name, fig in figures.items():
    if fig is None:
      continue
    path = os.path.join(workdir, name)
    fig.savefig(path, dpi=110)
    paths.append(path)
  return paths


def main(argv):
  del argv
  if not flags.FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  for path in plot_all(flags.FLAGS.workdir):
    print(path)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'a study directory written by experiments.moe_routing.run')
  app.run(main)
