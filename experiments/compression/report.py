"""results.md of the compression study: a table per part and what holds, computed from the rows."""

from __future__ import annotations

import math

from experiments.sparse_attention import run as sparse_run

_fmt_bytes = sparse_run._fmt_bytes  # pylint: disable=protected-access


def _kib(b) -> str:
  return '' if b in (None, '') else f'{b / 1024:,.0f}'


def _vs(r) -> str:
  return f"{r['perplexity_vs_base']:+.2%}"


def ptq_table(rows) -> list[str]:
  base = next(r for r in rows if r['part'] == 'base')
  lines = ['## 1. Post-training quantization', '',
           'Weight-only (research.compress.quantize_workdir); activations stay float. Parameter '
           'bytes count int4 at half a byte and include the float parameters left (embeddings, '
           'norms) and the scales; checkpoint bytes are the Orbax files on disk (the base\'s newest '
           'step includes its AdamW moments, the quantized workdirs hold parameters only).', '',
           '| case | bits | scales | symmetric | perplexity | vs base | parameter KiB | '
           'checkpoint KiB |', '|---|---:|---|---|---:|---:|---:|---:|',
           f"| float32 base | 32 | | | {base['perplexity']:.3f} | | "
           f"{_kib(base['param_bytes'])} | {_kib(base['checkpoint_bytes'])} |"]
  for r in rows:
    if r['part'] == 'ptq':
      scales = 'per channel' if not r['group_size'] else f"groups of {r['group_size']}"
      lines.append(f"| {r['case']} | {r['bits']} | {scales} | "
                   f"{'yes' if r['symmetric'] else 'no'} | {r['perplexity']:.3f} | {_vs(r)} | "
                   f"{_kib(r['param_bytes'])} | {_kib(r['checkpoint_bytes'])} |")
  return lines + ['', '![ptq](ptq.png)', '']


def prune_table(rows, config) -> list[str]:
  p = config.compression.prune
  lines = ['## 2. Pruning', '',
           'research.compress.prune_workdir of the base, one-shot, then fine-tuned '
           f'{p.finetune_steps} steps (lr {p.finetune_lr}, init_from the pruned workdir; '
           'magnitude and 2:4 keep their masks, heads and channels are smaller models). '
           'Sparsity: of each attention and feed-forward matrix\'s weights (magnitude, 2:4), or '
           'of the heads or feed-forward channels of every layer (heads, channels). The control '
           'row is the unpruned base fine-tuned the same way.', '',
           '| method | sparsity | parameters | one-shot perplexity | vs base | fine-tuned '
           'perplexity | vs base |', '|---|---:|---:|---:|---:|---:|---:|']
  by = {}
  for r in rows:
    if r['part'] == 'prune':
      by.setdefault((r['method'], float(r['sparsity'])), {})[bool(r['finetuned'])] = r
  for (method, sparsity), pair in by.items():
    one, tuned = pair.get(False), pair.get(True)
    params = (one or tuned)['params']
    lines.append(f"| {'control (no pruning)' if method == 'none' else method} | {sparsity:g} | "
                 f'{params:,} | ' +
                 (f"{one['perplexity']:.3f} | {_vs(one)} | " if one else ' | | ') +
                 (f"{tuned['perplexity']:.3f} | {_vs(tuned)} |" if tuned else ' | |'))
  return lines + ['', '![pruning](pruning.png)', '']


def distill_table(rows, runs, config) -> list[str]:
  d = config.compression.distill
  base = next(r for r in rows if r['part'] == 'base')
  lines = ['## 3. Distillation', '',
           f'A student of {d.num_layers} layers x d_model {d.d_model} ({d.num_heads} heads), '
           f'{d.steps} steps of the base\'s batches (same seed: same initialisation and batch '
           f'order), distilled from the frozen base (alpha {d.alpha}, temperature '
           f'{d.temperature}) or trained from scratch on the hard labels. Loss: the student\'s '
           'cross-entropy on the hard labels in both.', '',
           '| student | parameters | validation loss | perplexity | loss at each evaluation |',
           '|---|---:|---:|---:|---|']
  for r in (x for x in rows if x['part'] == 'distill'):
    curve = ', '.join(f'{s}: {v:.3f}' for s, v in runs.get(r['case'], {}).get('eval/loss', []))
    lines.append(f"| {'distilled' if r['case'] == 'student' else 'from scratch'} | "
                 f"{r['params']:,} | {r['eval_loss']:.4f} | {r['perplexity']:.3f} | {curve} |")
  lines.append(f"| teacher (the base) | {base['params']:,} | {base['eval_loss']:.4f} | "
               f"{base['perplexity']:.3f} | |")
  return lines + ['', '![distill](distill.png)', '']


def _yes(ok) -> str:
  return 'not measured' if ok is None else ('yes' if ok else 'no')


def holds(rows) -> list[str]:
  """Statements checked against the numbers: each says yes/no and the value behind it."""
  ptq = {r['case']: r for r in rows if r['part'] == 'ptq'}
  out = ['## What holds', '']
  int8 = ptq.get('int8-channel-sym') or next((r for r in ptq.values() if r['bits'] == 8), None)
  if int8:
    scales = 'per channel' if not int8['group_size'] else f"groups of {int8['group_size']}"
    symmetric = 'symmetric' if int8['symmetric'] else 'asymmetric'
    out.append(f"- int8 PTQ ({scales}, {symmetric}) within 1 % perplexity of float: "
               f"{_yes(abs(int8['perplexity_vs_base']) <= 0.01)} ({_vs(int8)})")
  int4 = [r for r in ptq.values() if r['bits'] == 4]
  if int4:
    best = min(int4, key=lambda r: r['perplexity'])
    out.append(f"- int4 PTQ within 5 % perplexity of float (best int4 case, {best['case']}): "
               f"{_yes(best['perplexity_vs_base'] <= 0.05)} ({_vs(best)})")
  for sym in ('sym', 'asym'):
    a, b = ptq.get(f'int4-channel-{sym}'), next(
        (r for n, r in ptq.items() if n.startswith('int4-g') and n.endswith(f'-{sym}')), None)
    if a and b:
      out.append(f"- at 4 bits ({sym}metric), {b['case'].split('-')[1]} groups beat per-channel "
                 f"scales: {_yes(b['perplexity'] < a['perplexity'])} ({b['perplexity']:.3f} vs "
                 f"{a['perplexity']:.3f})")
  for scale in dict.fromkeys(n.split('-')[1] for n in ptq if n.endswith('-asym')):
    a, s = ptq.get(f'int4-{scale}-asym'), ptq.get(f'int4-{scale}-sym')
    if a and s:
      out.append(f"- at 4 bits ({scale}), asymmetric beats symmetric: "
                 f"{_yes(a['perplexity'] < s['perplexity'])} ({a['perplexity']:.3f} vs "
                 f"{s['perplexity']:.3f})")
  out += _prune_holds(rows) + _distill_holds(rows)
  return out + ['']


def _prune_holds(rows) -> list[str]:
  pairs = {}
  for r in rows:
    if r['part'] == 'prune' and r['method'] != 'none':
      pairs.setdefault((r['method'], float(r['sparsity'])), {})[bool(r['finetuned'])] = r
  full = {k: v for k, v in pairs.items() if len(v) == 2}
  if not full:
    return []
  better = sum(v[True]['perplexity'] < v[False]['perplexity'] for v in full.values())
  out = [f'- fine-tuning lowers the pruned perplexity: {better} of {len(full)} '
         '(method, sparsity) cases']
  half = {m: v for (m, s), v in full.items() if s == 0.5}
  if half:
    best_one = min(half, key=lambda m: half[m][False]['perplexity'])
    best_tuned = min(half, key=lambda m: half[m][True]['perplexity'])
    out.append(f"- at sparsity 0.5 the best method one-shot is {best_one} "
               f"({_vs(half[best_one][False])}), after fine-tuning {best_tuned} "
               f"({_vs(half[best_tuned][True])})")
  within = [f'{m} {s:g}' for (m, s), v in full.items() if v[True]['perplexity_vs_base'] <= 0.05]
  out.append('- fine-tuned within 5 % perplexity of the base: '
             + (', '.join(within) if within else 'none'))
  control = next((r for r in rows if r['part'] == 'prune' and r['method'] == 'none'), None)
  if control:
    out.append(f"- the control (base fine-tuned alike, no pruning) moves perplexity by "
               f"{_vs(control)}: the fine-tune's own effect, to subtract from the recoveries")
  return out


def _distill_holds(rows) -> list[str]:
  by = {r['case']: r for r in rows if r['part'] == 'distill'}
  if 'student' not in by or 'scratch' not in by:
    return []
  student, scratch = by['student'], by['scratch']
  gap = scratch['eval_loss'] - student['eval_loss']
  return [f"- distilled student beats scratch: {_yes(gap > 0)} by {gap:+.4f} nats "
          f"({student['perplexity'] / scratch['perplexity'] - 1:+.2%} perplexity; one seed, "
          'so a gap of a few hundredths is within noise)']


def markdown(rows, runs, env, config) -> str:
  m, t = config.model, config.train
  base = next(r for r in rows if r['part'] == 'base')
  lines = ['# Compression: quantization, pruning and distillation of one decoder', '',
           f"{env['date']}, {env['device']} ({env['backend']}, {env['cpu_count']} CPUs), "
           f"jax {env['jax']}; {env['seconds'] / 60:.1f} minutes in this invocation; load "
           f"average {env['load_average']} at the end.", '', f"Command: `{env['command']}`", '',
           f'The base: a decoder of {m.num_layers} layers x d_model {m.d_model} ({m.num_heads} '
           f"heads, {base['params']:,} parameters) trained {t.steps} steps of {t.batch_size} x "
           f'{config.data.seq_len} tokens of {config.data.source}: validation loss '
           f"{base['eval_loss']:.4f}, perplexity {base['perplexity']:.3f}. Every validation "
           f'number is over the same {t.eval_batches} batches of {t.batch_size} x '
           f'{config.data.seq_len} tokens; one seed.', '']
  lines += ptq_table(rows) + prune_table(rows, config) + distill_table(rows, runs, config)
  lines += holds(rows)
  return '\n'.join(lines)
