"""Plots of the sequence-mixer study (PNG, matplotlib's Agg backend). The cost plots are
sparse_attention's (experiments/sparse_attention/plot.py: log_log, cost_plots)."""

from __future__ import annotations

import os

from experiments.sparse_attention import plot as sparse_plot

plt = sparse_plot.plt


def quality_plot(rows, out_dir: str, subtitle: str) -> str:
  """Validation loss per variant (the axis starts at 0, so bars compare honestly), each bar
  labelled with its loss and its parameter count."""
  fig, ax = plt.subplots(figsize=(8, 4.8))
  names = [r['variant'] for r in rows]
  losses = [float(r['eval_loss']) for r in rows]
  bars = ax.bar(range(len(names)), losses, color='tab:blue', alpha=0.8)
  ax.bar_label(bars, [f"{x:.3f}\n{int(r['params']) / 1e6:.3f}M params"
                      for x, r in zip(losses, rows)], fontsize=8, padding=3)
  ax.set_xticks(range(len(names)), names, rotation=20, ha='right', fontsize=9)
  ax.set_ylim(0, max(losses, default=1) * 1.25)
  ax.set_ylabel('validation loss (nats / token)')
  ax.set_title(f'Shakespeare validation loss at (nearly) equal parameters\n{subtitle}',
               fontsize=10)
  fig.tight_layout()
  path = os.path.join(out_dir, 'quality.png')
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def recall_plot(rows, out_dir: str, subtitle: str) -> str:
  """MQAR accuracy vs number of key-value pairs: one panel per width, one line per variant."""
  widths = sorted({int(r['d_model']) for r in rows})
  names = list(dict.fromkeys(r['variant'] for r in rows))
  fig, axes = plt.subplots(1, len(widths), figsize=(5.2 * len(widths) + 2.5, 4.5), sharey=True,
                           squeeze=False)
  styles = {'attention': ('black', 'o-')}
  cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, width in zip(axes[0], widths):
    for i, name in enumerate(names):
      pts = sorted((int(r['kv_pairs']), float(r['accuracy'])) for r in rows
                   if r['variant'] == name and int(r['d_model']) == width)
      if not pts:
        continue
      color, style = styles.get(name, (cycle[i % len(cycle)], 's--' if ',' in name else 'o-'))
      ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=name)
    chance = next((float(r['chance']) for r in rows), None)
    if chance is not None:
      ax.axhline(chance, color='0.5', linestyle=':', label='chance')
    ax.set_xscale('log', base=2)
    kv = sorted({int(r['kv_pairs']) for r in rows})
    ax.set_xticks(kv, [str(n) for n in kv])
    ax.xaxis.set_minor_locator(sparse_plot.matplotlib.ticker.NullLocator())
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel('key-value pairs')
    ax.set_title(f'd_model {width}')
    ax.grid(True, alpha=0.3)
  axes[0][0].set_ylabel('accuracy over queries (held-out)')
  axes[0][-1].legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1), borderaxespad=0)
  fig.suptitle(subtitle, fontsize=9)
  fig.tight_layout()
  path = os.path.join(out_dir, 'recall.png')
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


def decode_plot(rows, out_dir: str, subtitle: str) -> str:
  """Decode tokens/s and cache MiB vs context (log-log), one line per variant."""
  names = list(dict.fromkeys(r['variant'] for r in rows))
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
  for ax, key, label, scale in ((axes[0], 'decode_tokens_per_s', 'generated tokens / s', 1),
                                (axes[1], 'cache_bytes', 'cache (MiB)', 1 / 2**20)):
    for name in names:
      pts = sorted((int(r['context']), float(r[key]) * scale) for r in rows
                   if r['variant'] == name and r.get(key) not in (None, ''))
      ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o-', label=name)
    contexts = sorted({int(r['context']) for r in rows})
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xticks(contexts, [sparse_plot._length_label(t) for t in contexts])  # pylint: disable=protected-access
    ax.xaxis.set_minor_locator(sparse_plot.matplotlib.ticker.NullLocator())
    ax.set_xlabel('context (prompt + generated tokens)')
    ax.set_ylabel(label)
    ax.grid(True, which='both', alpha=0.3)
  axes[0].set_title('Decoding speed')
  axes[1].set_title('Decode cache size')
  axes[1].legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1), borderaxespad=0)
  fig.suptitle(subtitle, fontsize=9)
  fig.tight_layout()
  path = os.path.join(out_dir, 'decode.png')
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path
