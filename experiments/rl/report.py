"""results.md of the RL study: the table and what holds, computed from the rows."""

from __future__ import annotations


def _num(v, fmt='.3f') -> str:
  return '' if v in (None, '') else format(float(v), fmt)


def table(rows) -> list[str]:
  lines = ['| task | method | reward during training | iterations / steps | held-out accuracy: '
           'start -> end | held-out reward: start -> end | train reward (last 5) | KL / token '
           '| seconds |', '|---|---|---|---:|---|---|---:|---:|---:|']
  for r in rows:
    if r['method'] == 'reward model':
      lines.append(f"| {r['task']} | reward model | Bradley-Terry on pairs | {r['iterations']} "
                   f"| held-out pairs ranked right: {_num(r['accuracy'])} | | | | "
                   f"{r['seconds']} |")
      continue
    lines.append(
        f"| {r['task']} | {r['method'].upper()} | {r.get('reward', '')} | {r['iterations']} | "
        f"{_num(r.get('start_accuracy'))} -> {_num(r['accuracy'])} | "
        f"{_num(r.get('start_reward'))} -> {_num(r.get('eval_reward'))} | "
        f"{_num(r.get('train_reward'))} | {_num(r.get('kl'), '.4f')} | {r['seconds']} |")
  return lines


def what_holds(rows) -> list[str]:
  out = ['## What holds', '']
  by = {(r['task'], r['method']): r for r in rows}
  for task in ('speaker', 'question', 'preference'):
    for method in ('grpo', 'ppo', 'dpo'):
      r = by.get((task, method))
      if r is None:
        continue
      gain = float(r['accuracy']) - float(r['start_accuracy'])
      out.append(f"- {task}, {method.upper()}: held-out accuracy {float(r['start_accuracy']):.3f}"
                 f" -> {float(r['accuracy']):.3f} ({'+' if gain >= 0 else ''}{gain:.3f}): "
                 f"{'improves' if gain > 0.02 else 'does not improve'} on the base.")
    pair = [by.get((task, m)) for m in ('grpo', 'ppo')]
    if all(pair):
      grpo, ppo = (float(r['accuracy']) for r in pair)
      verdict = ('GRPO and PPO end level' if grpo == ppo else
                 f"{'GRPO' if grpo > ppo else 'PPO'} ends higher")
      out.append(f"- {task}: {verdict} ({grpo:.3f} GRPO vs {ppo:.3f} PPO), at KL "
                 f"{float(pair[0]['kl']):.4f} vs {float(pair[1]['kl']):.4f} nats per token.")
  for method in ('grpo', 'ppo'):
    rule, proxy = by.get(('question', method)), by.get(('preference', method))
    if rule and proxy:
      out.append(f"- {method.upper()} on the reward model's scores reaches "
                 f"{float(proxy['accuracy']):.3f} held-out accuracy against "
                 f"{float(rule['accuracy']):.3f} on the rule itself.")
  rm = by.get(('preference', 'reward model'))
  if rm is not None:
    out.append(f"- The reward model ranks {float(rm['accuracy']):.1%} of held-out pairs right "
               '(chance 50 %).')
  return out + ['']


def markdown(rows, env, config) -> str:
  del config
  lines = ['# RL from feedback on the embedded corpus', '',
           f"`{env['command']}` on {env['device']} ({env['date']}; {env['seconds'] / 60:.1f} "
           'minutes for the whole command).', '',
           'Held-out accuracy: greedy completions of the evaluation prompts (works pre-training '
           'never reads), scored by the task\'s rule (speaker: the right tag; question and '
           'preference: a finished line ending in "?"); "start" is the base decoder. KL: the k3 '
           'estimate of KL(policy || reference) per response token at the last rollout.', '']
  lines += table(rows) + ['']
  lines += [f'![{t}]({t}.png)\n' for t in dict.fromkeys(r['task'] for r in rows)]
  lines += what_holds(rows)
  return '\n'.join(lines) + '\n'
