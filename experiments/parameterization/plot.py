"""Plots of the parameterization experiments (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import ticker  # pylint: disable=g-import-not-at-top,wrong-import-position

TITLES = {'sp': 'standard parameterization (SP)', 'mup': 'μP (Tensor Programs V)'}


def layer_order(layer: str) -> tuple:
  """Embeddings first, then the stacks in depth order (encoder before decoder; attention,
  feed-forward, then the block's output), logits last."""
  if layer == 'logits':
    return (2,)
  if 'embed' in layer:
    return (0, layer)
  depth = [int(n) for n in re.findall(r'layer_(\d+)', layer)]
  part = {'attn': 0, 'cross': 1, 'mlp': 2, 'moe': 2}.get(layer.rsplit('/', 1)[-1], 3)
  return (1, layer.startswith('decoder'), depth, part)


def coord_check_png(rows, parameterization: str, base_width: int, path: str) -> str:
  """One panel per step: mean |x| of each layer against width (log-log), the base width
  marked. Flat lines are width-independent coordinates; a line of slope 1 doubles with width."""
  steps = sorted({r['step'] for r in rows})
  layers = sorted({r['layer'] for r in rows}, key=layer_order)
  cmap = plt.get_cmap('viridis')
  fig, axes = plt.subplots(1, len(steps), figsize=(3.2 * len(steps), 3.6), sharey=True,
                           squeeze=False)
  for ax, step in zip(axes[0], steps):
    for i, layer in enumerate(layers):
      points = sorted((r['width'], r['mean_abs']) for r in rows
                      if r['step'] == step and r['layer'] == layer)
      style = dict(color='crimson', linewidth=2) if layer == 'logits' else dict(
          color=cmap(i / max(len(layers) - 1, 1)), linewidth=1)
      ax.plot([w for w, _ in points], [v for _, v in points], marker='o', markersize=3,
              label=layer, **style)
    ax.axvline(base_width, color='0.7', linestyle=':', linewidth=1)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_title(f'step {step}' + (' (init)' if step == 0 else ''))
    ax.set_xlabel('width (d_model)')
    ax.grid(True, which='both', alpha=0.2)
  axes[0][0].set_ylabel('mean |activation|')
  axes[0][-1].legend(fontsize=6, loc='center left', bbox_to_anchor=(1.02, 0.5))
  fig.suptitle(f'Coordinate check: {TITLES.get(parameterization, parameterization)}, '
               f'base width {base_width}')
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def drift_text(drift: dict) -> str:
  if drift['widths'] < 2:
    return 'drift: fewer than 2 bracketed optima'
  return f'lr* ~ width^{drift["slope"]:.2f}, widest / narrowest {drift["ratio"]:.2f}'


def lr_transfer_png(rows, fits: dict, base_width: int, path: str) -> str:
  """The μP paper's Figure 1 layout: per parameterization, final loss against learning rate
  (log), one curve per width, each curve's fitted lr* starred; then lr* against width for all.
  Diverged runs are crosses on the panel's top edge, losses above the shown range triangles
  there; neither enters a fit."""
  names = list(dict.fromkeys(r['parameterization'] for r in rows))
  widths = sorted({r['d_model'] for r in rows})
  cmap = plt.get_cmap('viridis')
  color = {w: cmap(i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
  finite = [r['loss'] for r in rows if not r['diverged']]
  low = min(finite, default=0.0)
  # The range around the optima: Figure 1 shows the basins, not the far divergent side.
  top = min(max(finite, default=1.0), low + 2.0)
  pad = 0.05 * max(top - low, 1e-3)
  fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.6 * (len(names) + 1), 4.4),
                           squeeze=False, layout='constrained')
  for ax, name in zip(axes[0], names):
    drift = fits['drift'][name]
    for w in widths:
      curve = sorted((r['lr'], r['loss'], r['diverged']) for r in rows
                     if r['parameterization'] == name and r['d_model'] == w)
      shown = [(lr, loss) for lr, loss, bad in curve if not bad and loss <= top]
      ax.plot([lr for lr, _ in shown], [loss for _, loss in shown], marker='o', markersize=3,
              color=color[w], label=f'width {w}')
      # Off the top: a band above the curves' range, inside the axes.
      above = [lr for lr, loss, bad in curve if not bad and loss > top]
      ax.plot(above, [top + pad] * len(above), '^', color=color[w], markersize=5)
      diverged = [lr for lr, _, bad in curve if bad]
      ax.plot(diverged, [top + pad] * len(diverged), 'x', color=color[w], markersize=7, mew=2)
      for f in fits['lr_star']:
        if f['parameterization'] == name and f['d_model'] == w and f['points']:
          ax.plot(f['lr_star'], f['loss_star'], '*', color=color[w], markersize=11,
                  markeredgecolor='k' if f['bracketed'] else 'r', markeredgewidth=0.6)
    ax.set_xscale('log')
    ax.set_ylim(low - pad, top + 2 * pad)
    ax.axhline(top + 0.5 * pad, color='0.6', linewidth=0.5)
    ax.set_xlabel('learning rate (train.lr)')
    ax.set_title(f'{TITLES.get(name, name)}\n{drift_text(drift)}', fontsize=9)
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # decades only: minor labels collide
    ax.grid(True, which='both', alpha=0.2)
  axes[0][0].set_ylabel('final validation loss (nats/token)')
  axes[0][0].legend(fontsize=7, title='× diverged, ▲ above the range\n★ fitted lr*',
                    title_fontsize=7)
  ax = axes[0][-1]
  for i, name in enumerate(names):
    points = [(f['d_model'], f['lr_star'], f['bracketed']) for f in fits['lr_star']
              if f['parameterization'] == name and f['points']]
    ax.plot([w for w, _, _ in points], [lr for _, lr, _ in points], marker='o', color=f'C{i}',
            label=f'{name}: {drift_text(fits["drift"][name])}')
    edge = [(w, lr) for w, lr, ok in points if not ok]
    ax.plot([w for w, _ in edge], [lr for _, lr in edge], 'o', mfc='none', mec='r',
            markersize=9, label='at the grid edge (not fitted)' if i == 0 and edge else None)
  ax.axvline(base_width, color='0.7', linestyle=':', linewidth=1)
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xticks(widths, [str(w) for w in widths])
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlabel('width (d_model)')
  ax.set_ylabel('fitted lr*')
  ax.set_title('optimal learning rate against width', fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(True, which='both', alpha=0.2)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
