"""Plots of the RL study (PNG, matplotlib's Agg backend, as sparse_attention's)."""

from __future__ import annotations

import os

from experiments.sparse_attention import plot as sparse_plot

plt = sparse_plot.plt

_TITLES = {'speaker': 'Next speaker (reward: a Python function of the answer)',
           'question': 'Finish the line as a question (reward: the rule, a Python function)',
           'preference': 'Questions learned from preferences (reward: a reward model; accuracy: '
                         'the rule)'}
_STYLE = {'grpo': 'C0', 'ppo': 'C1', 'dpo': 'C2'}


def task_plot(task: str, curves: dict, rows, out_dir: str, subtitle: str) -> str:
  """Three panels against RL iterations: the rollouts' mean reward, the KL to the reference
  per response token, and the held-out accuracy (DPO's, a horizontal line, where it ran)."""
  fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
  panels = (('rl/reward_mean', 'train reward (rollout mean)'),
            ('rl/kl', 'KL to the reference (nats per token)'),
            ('eval/accuracy', 'held-out accuracy (greedy)'))
  for ax, (key, label) in zip(axes, panels):
    for algorithm, series in curves.items():
      pts = series.get(key, [])
      style = 'o-' if key == 'eval/accuracy' else '-'
      ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=_STYLE[algorithm],
              label=algorithm.upper(), markersize=4)
    ax.set_xlabel('RL iteration')
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
  accuracy = axes[2]
  for r in rows:
    if r['method'] == 'dpo':
      accuracy.axhline(r['accuracy'], color=_STYLE['dpo'], linestyle='--',
                       label=f"DPO ({r['iterations']} steps on the pairs)")
  accuracy.set_ylim(-0.02, 1.02)
  accuracy.legend(fontsize=8)
  axes[0].legend(fontsize=8)
  fig.suptitle(f'{_TITLES[task]}\n{subtitle}', fontsize=10)
  fig.tight_layout()
  path = os.path.join(out_dir, f'{task}.png')
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
