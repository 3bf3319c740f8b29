"""Plots of the sparse-attention experiment (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import math
import os
import re

import matplotlib
import matplotlib.ticker

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def _length_label(x: int) -> str:
  return f'{x // 1024}k' if x >= 1024 and x % 1024 == 0 else str(x)


def _ideal(ax, xs, anchor_x, anchor_y, slope, label, style):
  ys = [anchor_y * (x / anchor_x) ** slope for x in xs]
  ax.plot(xs, ys, style, color='0.55', linewidth=1, label=label)


def _stop_reason(note: str) -> str:
  """'skipped: its T x T scores need about 24.0 GiB, more than sparse_attention.max_dense_bytes=
  7.5 GiB' -> 'its T x T scores need 24.0 GiB > the 7.5 GiB limit' (on two lines)."""
  match = re.search(r'need about ([\d.]+ GiB), more than .*?=([\d.]+ GiB)', note)
  if match:
    return f'its T x T scores need\n  {match.group(1)} > the {match.group(2)} limit'
  return note.split(':', 1)[-1].strip()[:40]


def log_log(rows, key: str, ylabel: str, title: str, path: str, scale: float = 1.0) -> str:
  """One line per case of `key` vs length on log-log axes, with slope-1 and slope-2 guides
  through the smallest measured point of the cheapest and the costliest case. A case whose
  longer lengths were skipped (rows with a note and no value) ends in an x, and its legend entry
  says from which length and why, so a line that stops is never a mystery."""
  cases = []
  for r in rows:
    if r['case'] not in cases:
      cases.append(r['case'])
  fig, ax = plt.subplots(figsize=(10.5, 5))
  points = {}
  for case in cases:
    pts = sorted((r['length'], r[key] * scale) for r in rows
                 if r['case'] == case and r.get(key) not in (None, '') and r[key] > 0)
    if not pts:
      continue
    points[case] = pts
    skipped = sorted((r['length'], r['note']) for r in rows if r['case'] == case
                     and r.get(key) in (None, '') and r.get('note'))
    label = case
    if skipped:
      label += (f'\n  stops at {_length_label(pts[-1][0])}: {_length_label(skipped[0][0])} skipped,'
                f'\n  {_stop_reason(skipped[0][1])}')
    # The mask-only control overlaps full attention (same work): dashed and hollow, both show.
    control = 'mask-only' in case
    line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o--' if control else 'o-',
                    label=label, markerfacecolor='none' if control else None,
                    markersize=9 if control else 6)
    if skipped:
      ax.plot([pts[-1][0]], [pts[-1][1]], 'x', color=line.get_color(), markersize=14,
              markeredgewidth=2)
  if points:
    lengths = sorted({p[0] for pts in points.values() for p in pts})
    first = {case: pts[0] for case, pts in points.items()}
    low = min(first.values(), key=lambda p: (p[0], p[1]))
    high = max(first.values(), key=lambda p: (-p[0], p[1]))
    _ideal(ax, lengths, low[0], low[1], 1, 'ideal slope 1 (linear)', '--')
    _ideal(ax, lengths, high[0], high[1], 2, 'ideal slope 2 (quadratic)', ':')
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  if points:
    ax.set_xticks(lengths, [_length_label(x) for x in lengths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.set_xlabel('sequence length (tokens)')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=7.5, loc='upper left', bbox_to_anchor=(1.02, 1), borderaxespad=0)
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches='tight')  # the legend beside the axes stays whole
  plt.close(fig)
  return path


def cost_plots(rows, out_dir: str, subtitle: str, what: str = 'Attention') -> list[str]:
  return [
      log_log(rows, 'time_s', 'forward + backward time (s, median)',
              f'{what} time vs length\n{subtitle}',
              os.path.join(out_dir, 'time_vs_length.png')),
      log_log(rows, 'memory_bytes', 'memory (MiB, XLA compiled estimate)',
              f'{what} memory vs length\n{subtitle}',
              os.path.join(out_dir, 'memory_vs_length.png'), scale=1 / 2**20),
  ]


def by_variant(lm_rows) -> dict[str, list[float]]:
  """Validation losses per LM variant (one per seed), in the order the variants first appear."""
  losses: dict[str, list[float]] = {}
  for r in lm_rows:
    losses.setdefault(r['variant'], []).append(float(r['eval_loss']))
  return losses


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_differences(lm_rows) -> dict[str, list[float]]:
  """Each variant's loss minus the first variant's, seed by seed (variants after the first)."""
  first_variant = lm_rows[0]['variant']
  base = {r.get('seed', 0): float(r['eval_loss']) for r in lm_rows if r['variant'] == first_variant}
  out: dict[str, list[float]] = {}
  for r in lm_rows:
    if r['variant'] != first_variant and r.get('seed', 0) in base:
      out.setdefault(r['variant'], []).append(float(r['eval_loss']) - base[r.get('seed', 0)])
  return out


def _paired_panel(ax, lm_rows) -> None:
  first = lm_rows[0]['variant']
  diffs = paired_differences(lm_rows)
  names = list(diffs)
  stats = [mean_std(v) for v in diffs.values()]
  ax.bar(range(len(names)), [m for m, _ in stats], yerr=[sd for _, sd in stats], capsize=4,
         color='tab:orange', alpha=0.75, ecolor='black')
  for i, values in enumerate(diffs.values()):
    ax.plot([i] * len(values), values, 'o', color='black', markersize=3, zorder=3)
  ax.axhline(0, color='0.3', lw=1)
  span = max((abs(v) for vs in diffs.values() for v in vs), default=0.01) * 1.3
  ax.set_ylim(-span, span)  # symmetric about 0: better and worse get the same room
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right', fontsize=8)
  ax.set_ylabel(f'validation loss minus {first} (nats / token)')
  ax.set_title(f'Difference to {first}, paired by seed\n(below 0: better; mean \u00b1 1 s.d.)')


def quality_plot(lm_rows, retrieval_rows, out_dir: str, subtitle: str) -> str:
  """Validation loss per LM variant (mean over seeds, +/- one standard deviation, each seed a
  dot; the axis starts at 0, so bar heights compare honestly); with several seeds, each
  variant's difference to the first one paired by seed (a seed fixes initialisation and batch
  order for all variants, so this is where a real difference shows); and retrieval accuracy per
  variant (chance marked)."""
  losses = by_variant(lm_rows)
  seeds = max((len(v) for v in losses.values()), default=0)
  panels = 3 if seeds > 1 else 2
  fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.8))
  ax = axes[0]
  names = list(losses)
  stats = [mean_std(v) for v in losses.values()]
  bars = ax.bar(range(len(names)), [m for m, _ in stats], yerr=[sd for _, sd in stats],
                capsize=4, color='tab:blue', alpha=0.75, ecolor='black')
  for i, values in enumerate(losses.values()):
    ax.plot([i] * len(values), values, 'o', color='black', markersize=3, zorder=3)
  ax.bar_label(bars, [f'{m:.3f}' + (f'\n\u00b1{sd:.3f}' if seeds > 1 else '') for m, sd in stats],
               fontsize=8, padding=3)
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right', fontsize=8)
  ax.set_ylabel('validation loss (nats / token)')
  ax.set_title(f'Shakespeare: validation loss, {seeds} seed{"s" if seeds != 1 else ""}\n'
               '(mean \u00b1 1 s.d.; dots: each seed)' if seeds > 1 else
               'Shakespeare: validation loss (1 seed)')
  if stats:
    ax.set_ylim(0, max(max(v) for v in losses.values()) * 1.2)
  if panels == 3:
    _paired_panel(axes[1], lm_rows)
  ax = axes[-1]
  names = [r['variant'] for r in retrieval_rows]
  acc = [r['retrieval_accuracy'] for r in retrieval_rows]
  colors = ['tab:green' if math.isinf(float(r['receptive_field'])) else 'tab:red'
            for r in retrieval_rows]
  bars = ax.bar(range(len(names)), acc, color=colors)
  ax.bar_label(bars, fmt='%.2f', fontsize=8)
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right', fontsize=8)
  if retrieval_rows:
    ax.axhline(retrieval_rows[0]['chance'], color='0.4', linestyle='--', label='chance')
    ax.legend(fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel('retrieval accuracy (held-out)')
  ax.set_title('Retrieval beyond the local receptive field\n(red: local only; green: a full layer)')
  fig.suptitle(subtitle, fontsize=9)
  fig.tight_layout()
  path = os.path.join(out_dir, 'quality.png')
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
