"""Plots of the parameterization experiments (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

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
