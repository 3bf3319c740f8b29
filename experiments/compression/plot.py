"""Plots of the compression study (PNG, matplotlib's Agg backend, as sparse_attention's)."""

from __future__ import annotations

import os

from experiments.sparse_attention import plot as sparse_plot

plt = sparse_plot.plt


def _save(fig, out_dir: str, name: str) -> str:
  fig.tight_layout()
  path = os.path.join(out_dir, name)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _base(rows) -> dict:
  return next(r for r in rows if r['part'] == 'base')


def _scheme(r) -> str:
  scale = 'per channel' if not r['group_size'] else f"groups of {r['group_size']}"
  return f"{scale}, {'symmetric' if r['symmetric'] else 'asymmetric'}"


def ptq_plot(rows, out_dir: str, subtitle: str) -> str:
  """Left: perplexity vs weight bits, a line per scale scheme, the float model at 32 bits.
  Right: perplexity vs parameter bytes (the trade the bits buy)."""
  base = _base(rows)
  ptq = [r for r in rows if r['part'] == 'ptq']
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  for scheme in dict.fromkeys(_scheme(r) for r in ptq):
    pts = sorted((int(r['bits']), r['perplexity'], r['param_bytes']) for r in ptq
                 if _scheme(r) == scheme)
    style = 'o-' if 'asym' not in scheme else 's--'
    left.plot([p[0] for p in pts], [p[1] for p in pts], style, label=scheme)
    right.plot([p[2] / 2**20 for p in pts], [p[1] for p in pts], style, label=scheme)
  for ax in (left, right):
    ax.axhline(base['perplexity'], color='black', linestyle=':', label='float32 base')
    ax.set_ylabel('validation perplexity')
    ax.grid(True, alpha=0.3)
  right.plot([base['param_bytes'] / 2**20], [base['perplexity']], 'k*', markersize=10)
  left.set_xscale('log', base=2)
  bits = sorted({int(r['bits']) for r in ptq} | {32})
  left.set_xticks(bits, [str(b) for b in bits])
  left.xaxis.set_minor_locator(sparse_plot.matplotlib.ticker.NullLocator())
  left.set_xlabel('weight bits (32: the float base)')
  right.set_xlabel('parameter bytes (MiB; int4 counted at half a byte)')
  left.legend(fontsize=8)
  fig.suptitle(f'Post-training weight quantization\n{subtitle}', fontsize=10)
  return _save(fig, out_dir, 'ptq.png')


def pruning_plot(rows, out_dir: str, subtitle: str) -> str:
  """One panel per method: perplexity vs sparsity, one-shot and fine-tuned, with the base and
  the unpruned base fine-tuned alike (the control) as lines."""
  base = _base(rows)
  pruned = [r for r in rows if r['part'] == 'prune' and r['method'] != 'none']
  control = next((r for r in rows if r['part'] == 'prune' and r['method'] == 'none'), None)
  methods = list(dict.fromkeys(r['method'] for r in pruned))
  fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(4 * max(1, len(methods)) + 1, 4.2),
                           sharey=True, squeeze=False)
  for ax, method in zip(axes[0], methods):
    for tuned, style, label in ((False, 'o--', 'one-shot'), (True, 's-', 'fine-tuned')):
      pts = sorted((float(r['sparsity']), r['perplexity']) for r in pruned
                   if r['method'] == method and bool(r['finetuned']) == tuned)
      ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    ax.axhline(base['perplexity'], color='black', linestyle=':', label='base')
    if control is not None:
      ax.axhline(control['perplexity'], color='0.5', linestyle='-.',
                 label='base fine-tuned alike')
    ax.set_yscale('log')
    ax.set_xlim(0, 1)
    ax.set_xlabel('sparsity (of weights)' if method in ('magnitude', '2:4')
                  else f'sparsity (of {method})')
    ax.set_title(method)
    ax.grid(True, alpha=0.3, which='both')
  axes[0][0].set_ylabel('validation perplexity (log)')
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f'Pruning: one-shot and after a short fine-tune (masks kept)\n{subtitle}',
               fontsize=10)
  return _save(fig, out_dir, 'pruning.png')


def distill_plot(runs: dict, teacher_loss: float, out_dir: str, subtitle: str) -> str:
  """Validation (markers) and training (faint) loss vs step of the distilled student and the
  same student from scratch; the teacher's validation loss as a line."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for (kind, points), color in zip(runs.items(), ('tab:blue', 'tab:orange')):
    label = 'distilled' if kind == 'student' else 'from scratch'
    train = points['train/loss']
    ax.plot([p[0] for p in train], [p[1] for p in train], '-', color=color, alpha=0.35,
            label=f'{label}: train loss')
    evals = points['eval/loss']
    ax.plot([p[0] for p in evals], [p[1] for p in evals], 'o-', color=color,
            label=f'{label}: validation loss')
  ax.axhline(teacher_loss, color='black', linestyle=':', label='teacher (base) validation')
  ax.set_xlabel('step')
  ax.set_ylabel('cross-entropy on the hard labels (nats / token)')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f'Distillation vs training from scratch (same student, steps, batches)\n'
               f'{subtitle}', fontsize=10)
  return _save(fig, out_dir, 'distill.png')
