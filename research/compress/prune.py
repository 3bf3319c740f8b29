"""One-shot pruning of a trained workdir into a new workdir.

  python -m research.compress prune --workdir=W --out=W2 --method=magnitude --sparsity=0.5
  python -m research.compress prune --workdir=W --out=W2 --method=2:4
  python -m research.compress prune --workdir=W --out=W2 --method=heads --sparsity=0.5
  python -m research.compress prune --workdir=W --out=W2 --method=heads --num_heads=2
  python -m research.compress prune --workdir=W --out=W2 --method=channels --d_ff=128

Methods (research/training/pruning.py has the masks and the reasons for their axes):
- magnitude: zeros the smallest |w| of each attention and feed-forward matrix, --sparsity of it.
- 2:4: in every group of 4 consecutive input weights, the 2 smallest are zero (the pattern that
  sparse tensor cores run; sparsity 0.5).
- heads: removes --sparsity of the query heads of every attention layer (or keeps --num_heads).
  A head's score is ||W_value(its kv head)||_F x ||W_out(head)||_F, which bounds the size of
  what it writes into the residual stream (its attention weights sum to one). Grouped-query
  attention stays valid: with num_kv_heads groups of R query heads, the kept count is a
  multiple of the groups (each keeps its best heads; the KV heads stay) or of R (the best whole
  groups stay, KV heads included: a smaller KV cache); otherwise it is an error.
- channels: removes --sparsity of the feed-forward hidden channels of every layer (or keeps
  --d_ff). A channel's score is the product of the norms of its weights (its w_in and w_gate
  columns and its w_out row): the channel's gain, ignoring the activation.

magnitude and 2:4 write the same model with zeros, its masks in the checkpoint and
train.pruning set (sparsity reached at step 0), so research.train (resume, or a fine-tune with
init_from=W2) keeps the zeros. heads and channels write a genuinely smaller model: model.num_heads
/ num_kv_heads (head_dim kept) or model.d_ff, with the kept slices of the weights; its outputs
equal the original's with the removed heads or channels zeroed. Each layer keeps its own best
heads or channels; the count is the same in every layer (one config for all).

The new workdir holds config.json, a step-0 checkpoint (fresh optimizer state) and the source's
tokenizer; research.sample / evaluate / train read it like any other. One JSON line reports the
parameter counts and the sparsity reached. Parameters are gathered on the host for the
structured methods.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from typing import Sequence

import flax
import jax
import numpy as np
from absl import flags

from research import cli, config_lib, loading, models
from research.data import hf_tokenizer
from research.data import tokenizer as tokenizer_lib
from research.errors import UserError, exit_on_user_error
from research.layers import moe as moe_lib
from research.training import pruning, trainer

METHODS = ('magnitude', '2:4', 'heads', 'channels')
# The subcommand's own flags: research.compress runs prune and quantize in one process too.
FLAGS = flags.FlagValues()


def _define(define, name, default, help_text, **kwargs) -> None:
  if name not in FLAGS:
    define(name, default, help_text, flag_values=FLAGS, **kwargs)


def define_flags() -> None:
  """The command's flags, defined only when run as a command."""
  _define(flags.DEFINE_string, 'workdir', None, 'the trained workdir to prune (read only)')
  _define(flags.DEFINE_string, 'out', None, 'the new workdir to write (must not exist)')
  _define(flags.DEFINE_string, 'method', None, f'one of {list(METHODS)}')
  _define(flags.DEFINE_float, 'sparsity', None, 'fraction pruned, in (0, 1): of each matrix\'s '
          'weights (magnitude; 2:4 is 0.5), of the heads (heads) or channels (channels)')
  _define(flags.DEFINE_integer, 'num_heads', None, 'heads: the query heads each layer keeps '
          '(instead of --sparsity)')
  _define(flags.DEFINE_integer, 'd_ff', None, 'channels: the feed-forward width each layer '
          'keeps (instead of --sparsity)')


# ------------------------------------------------------------------------------------------------
# Structured pruning: which slices stay.


def _logical_names(run) -> dict[tuple[str, ...], tuple[str, ...]]:
  return {path: tuple(leaf.names) for path, leaf in
          flax.traverse_util.flatten_dict(trainer.logical_params(run)).items()}


def _blocks(names, axis: str) -> dict[tuple[str, ...], list[tuple[str, ...]]]:
  """{module path: its parameter paths} for the modules with a parameter along `axis`."""
  modules = {path[:-1] for path, n in names.items() if axis in n}
  return {m: [p for p in names if p[:-1] == m] for m in sorted(modules)}


def _sq_norms(x, names, axis: str):
  """Squared norms [L, n] of the slices of x along `axis`, per layer (L = 1 unless scanned)."""
  x = np.asarray(x, np.float64)
  if names[0] != 'layers':
    x, names = x[None], ('layers',) + names
  a = names.index(axis)
  other = tuple(i for i in range(1, x.ndim) if i != a)
  return np.sum(x * x, axis=other)


def _take(x, names, axis: str, kept_LK):
  """x with only the kept indices along `axis`, per layer (kept_LK: [L, k])."""
  x = np.asarray(x)
  a = names.index(axis)
  if names[0] != 'layers':
    return np.take(x, kept_LK[0], axis=a)
  shape = [1] * x.ndim
  shape[0], shape[a] = kept_LK.shape
  return np.take_along_axis(x, kept_LK.reshape(shape), axis=a)


def _top(score_LN, k: int):
  """The k best indices of each row, in ascending order (the heads keep their order)."""
  return np.sort(np.argsort(-score_LN, axis=-1, kind='stable')[:, :k], axis=-1)


def _check_structured(config, method: str) -> None:
  m = config.model
  if config.peft.method != 'none':
    raise UserError(f'--method={method}: {config.peft.method} adapters are not pruned; run '
                    'research.export first, then prune the exported workdir')
  if method == 'heads':
    if m.position == 'relative':
      raise UserError('--method=heads: model.position=relative shares one bias table of all '
                      'heads across layers; structured pruning needs per-layer heads')
    if m.mixer.pattern != 'attention':
      raise UserError(f'--method=heads: model.mixer.pattern={m.mixer.pattern!r}: only softmax '
                      'attention layers are pruned by head')
  if method == 'channels' and m.moe.num_experts:
    raise UserError('--method=channels: MoE experts share model.d_ff with the dense layers; '
                    'prune magnitude or 2:4 instead')


def head_plan(config, keep: int, *, flag: str = '--num_heads') -> tuple[int, int, str]:
  """(query heads, kv heads, how) kept per layer: 'heads' (multi-head), 'within' (each KV group
  keeps its best query heads) or 'groups' (whole KV groups); UserError naming `flag` when the
  count leaves no head or breaks grouped-query attention."""
  h = config.model.num_heads
  g = config.model.num_kv_heads or h
  r = h // g
  if not 1 <= keep < h:
    raise UserError(f'{flag}: keeps {keep} of model.num_heads={h} query heads per layer; '
                    f'keep between 1 and {h - 1}')
  if g == h:
    return keep, keep, 'heads'
  if keep % g == 0:
    return keep, g, 'within'
  if keep % r == 0:
    return keep, keep // r, 'groups'
  raise UserError(f'{flag}: keeping {keep} query heads per layer breaks grouped-query attention '
                  f'(model.num_kv_heads={g} groups of {r}); keep a multiple of {g} (heads per '
                  f'group) or of {r} (whole groups)')


def _kept_heads(params, names, block, plan, num_heads: int, kv_heads: int):
  """{'heads': [L, k], 'kv_heads': [L, g]} kept in one attention block."""
  keep, kv_keep, how = plan
  out = next(p for p in block if 'heads' in names[p] and names[p][-1] == 'embed')
  value = next(p for p in block if p[-1] == 'value')
  r = num_heads // kv_heads
  out_LH = _sq_norms(params[out], names[out], 'heads')
  value_LG = _sq_norms(params[value], names[value], 'kv_heads')
  score_LH = np.sqrt(out_LH) * np.repeat(np.sqrt(value_LG), r, axis=1)
  if how == 'heads':
    heads = _top(score_LH, keep)
    return {'heads': heads, 'kv_heads': heads}
  score_LGR = score_LH.reshape(len(score_LH), kv_heads, r)
  if how == 'within':
    per_group = keep // kv_heads
    local = np.sort(np.argsort(-score_LGR, axis=-1, kind='stable')[..., :per_group], axis=-1)
    heads = (local + r * np.arange(kv_heads)[None, :, None]).reshape(len(score_LH), -1)
    return {'heads': heads, 'kv_heads': np.tile(np.arange(kv_heads), (len(score_LH), 1))}
  groups = _top(score_LGR.sum(-1), kv_keep)
  heads = (groups[..., None] * r + np.arange(r)).reshape(len(score_LH), -1)
  return {'heads': heads, 'kv_heads': groups}


def _kept_channels(params, names, block, keep: int):
  """{'mlp': [L, k]}: the channels of largest product of weight norms."""
  score = None
  for p in block:
    if len(names[p]) - (names[p][0] == 'layers') >= 2:
      norm_LF = np.sqrt(_sq_norms(params[p], names[p], 'mlp'))
      score = norm_LF if score is None else score * norm_LF
  return {'mlp': _top(score, keep)}


def structured_plan(config, params, names, method: str, keep: int, *, flag: str = ''):
  """{module path: {axis name: kept indices [L, k]}} for every attention (heads) or dense
  feed-forward (channels) module, and the model fields of the smaller config."""
  _check_structured(config, method)
  flat = flax.traverse_util.flatten_dict(params)
  cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  if method == 'heads':
    plan = head_plan(config, keep, flag=flag or '--num_heads')
    kept = {m: _kept_heads(flat, names, b, plan, cfg.num_heads, cfg.num_kv_heads)
            for m, b in _blocks(names, 'heads').items()}
    fields = {'num_heads': plan[0], 'num_kv_heads': plan[1], 'head_dim': cfg.head_dim}
  else:
    if not 1 <= keep < cfg.d_ff:
      raise UserError(f'{flag or "--d_ff"}: keeps {keep} of model.d_ff={cfg.d_ff} channels '
                      'per layer; '
                      f'keep between 1 and {cfg.d_ff - 1}')
    kept = {m: _kept_channels(flat, names, b, keep) for m, b in _blocks(names, 'mlp').items()}
    fields = {'d_ff': keep}
  return kept, fields


def slice_tree(tree, names, kept):
  """`tree` (parameters, or masks: a subset of their paths) with only the kept slices."""
  flat = dict(flax.traverse_util.flatten_dict(tree))
  for path, x in flat.items():
    for axis, idx in kept.get(path[:-1], {}).items():
      if axis in names[path]:
        x = _take(x, names[path], axis, idx)
    flat[path] = np.asarray(x)
  return flax.traverse_util.unflatten_dict(flat)


def zero_pruned(tree, names, kept):
  """`tree` at its full size with the slices `slice_tree` drops set to zero: the original model
  with the removed heads or channels masked (what the smaller model computes)."""
  flat = dict(flax.traverse_util.flatten_dict(tree))
  for path, x in flat.items():
    x = np.array(x)
    for axis, idx_LK in kept.get(path[:-1], {}).items():
      if axis not in names[path]:
        continue
      a = names[path].index(axis)
      keep = np.zeros((len(idx_LK), x.shape[a]), bool)
      np.put_along_axis(keep, idx_LK, True, axis=1)
      shape = [1] * x.ndim
      if names[path][0] == 'layers':
        shape[0] = len(idx_LK)
      else:
        keep = keep[0]
      shape[a] = x.shape[a]
      x = np.where(keep.reshape(shape), x, 0)
    flat[path] = x
  return flax.traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------------------------
# The workdir.


def _count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _new_config(config, **model_fields):
  config = copy.deepcopy(config)
  config.init_from = ''  # the new workdir stands alone
  config.finetune.inherit_model = False
  if config.objective.name == 'dpo':  # the reference is not carried: a plain policy
    config.objective.name = 'sft'
  with config.model.ignore_type():
    for key, value in model_fields.items():
      config.model[key] = value
  return config


def _check_args(method, sparsity, num_heads, d_ff) -> None:
  if method not in METHODS:
    raise UserError(f'--method={method}: choose one of {list(METHODS)}')
  if sparsity is not None and not 0 < sparsity < 1:
    raise UserError(f'--sparsity={sparsity}: must be in (0, 1), the fraction pruned')
  if num_heads is not None and method != 'heads':
    raise UserError(f'--num_heads applies to --method=heads only (not {method})')
  if d_ff is not None and method != 'channels':
    raise UserError(f'--d_ff applies to --method=channels only (not {method})')
  given = (num_heads, d_ff)
  if sparsity is not None and any(v is not None for v in given):
    raise UserError('give --sparsity or the count to keep (--num_heads, --d_ff), not both')
  if method == '2:4' and sparsity not in (None, 0.5):
    raise UserError(f'--sparsity={sparsity}: 2:4 keeps 2 of every 4 weights (0.5); drop it')
  if sparsity is None and all(v is None for v in given) and method != '2:4':
    raise UserError(f'--sparsity is required for --method={method}, e.g. --sparsity=0.5')


def prune_workdir(workdir: str, out: str, method: str, *, sparsity: float | None = None,
                  num_heads: int | None = None, d_ff: int | None = None) -> dict:
  """Writes `out`, `workdir`'s latest checkpoint pruned by `method`; returns a summary."""
  _check_args(method, sparsity, num_heads, d_ff)
  if os.path.exists(out):
    raise UserError(f'--out={out} exists: give a new directory')
  lm = loading.load(workdir)
  before = _count(lm.params)
  if method in ('magnitude', '2:4'):
    config, params, model_state = _unstructured(lm, method, 0.5 if sparsity is None else sparsity)
  else:
    config, params, model_state = _structured(lm, method, sparsity, num_heads, d_ff)
  run = trainer.build_run(config)
  params = jax.device_put(params, run.state_shardings.params)
  model_state = jax.device_put(model_state, {k: run.state_shardings.model_state[k]
                                             for k in model_state})
  loading.save_workdir(out, config, run, params, model_state)
  if tokenizer_lib.find_tokenizer(workdir) is not None:
    hf_tokenizer.copy_tokenizer_files(workdir, out)
  summary = {'out': out, 'method': method, 'params_before': before, 'params_after': _count(params)}
  if pruning.MASKS in model_state:
    summary['sparsity'] = float(pruning.sparsity_of(params, run.prunable))
  else:
    summary.update({k: int(config.model[k]) for k in ('num_heads', 'num_kv_heads', 'd_ff')})
  return summary


def _unstructured(lm, method: str, sparsity: float):
  config = _new_config(lm.config)
  p = config.train.pruning
  p.method, p.sparsity, p.initial_sparsity = method, float(sparsity), 0.0
  p.start_step = p.end_step = 0  # at the target from step 0: further training keeps the zeros
  config = config_lib.finalize(config)
  run = trainer.build_run(config)
  masks = jax.jit(lambda w, old: pruning.compute_masks(method, w, run.prunable, sparsity, old))(
      lm.params, lm.model_state.get(pruning.MASKS))
  model_state = {k: v for k, v in lm.model_state.items() if k == moe_lib.STATE_COLLECTION}
  model_state[pruning.MASKS] = masks
  return config, pruning.apply(lm.params, masks), model_state


def _structured(lm, method: str, sparsity, num_heads, d_ff):
  cfg = models.transformer_config(lm.config.model, seq_len=lm.config.data.seq_len)
  total = cfg.num_heads if method == 'heads' else cfg.d_ff
  keep = num_heads if method == 'heads' else d_ff
  flag = f'--{"num_heads" if method == "heads" else "d_ff"}={keep}'
  if keep is None:
    keep = total - int(round(sparsity * total))
    flag = f'--sparsity={sparsity}'
  names = _logical_names(lm.run)
  params = jax.device_get(lm.params)
  kept, fields = structured_plan(lm.config, params, names, method, keep, flag=flag)
  config = config_lib.finalize(_new_config(lm.config, **fields))
  model_state = {k: v for k, v in lm.model_state.items() if k == moe_lib.STATE_COLLECTION}
  if pruning.MASKS in lm.model_state:  # a pruned model pruned again: its masks are sliced too
    model_state[pruning.MASKS] = slice_tree(jax.device_get(lm.model_state[pruning.MASKS]),
                                            names, kept)
  return config, slice_tree(params, names, kept), model_state


# ------------------------------------------------------------------------------------------------
# Command.


def _help() -> str:
  lines = [__doc__.strip(), '', 'flags:']
  for flag in FLAGS.get_key_flags_for_module(__name__):
    default = '' if flag.default is None else f' (default {flag.default!r})'
    lines.append(f'  --{flag.name}: {flag.help}{default}')
  return '\n'.join(lines) + '\n'


def main(argv: Sequence[str]) -> int:
  """`python -m research.compress prune ...` (argv[0] is the program's name)."""
  cli.quiet_backends()
  define_flags()
  args = list(argv[1:])
  if any(a in cli.HELP_ARGS for a in args):
    sys.stdout.write(_help())
    return 0

  @exit_on_user_error
  def run():
    cli.check_flags(args, uses_config=False, flag_values=FLAGS)
    for name in ('workdir', 'out', 'method', 'sparsity', 'num_heads', 'd_ff'):
      FLAGS[name].unparse()  # main may run more than once in a process (tests, notebooks)
    try:
      FLAGS([argv[0]] + args)
    except flags.Error as e:
      raise UserError(str(e).splitlines()[0]) from None
    cli.quiet_logs()
    if not FLAGS.workdir or not FLAGS.out or not FLAGS.method:
      raise UserError('--workdir, --out and --method are required, e.g. --workdir=runs/tiny '
                      '--out=runs/tiny_pruned --method=magnitude --sparsity=0.5')
    summary = prune_workdir(FLAGS.workdir, FLAGS.out, FLAGS.method, sparsity=FLAGS.sparsity,
                            num_heads=FLAGS.num_heads, d_ff=FLAGS.d_ff)
    print(json.dumps(summary))
    return 0

  return run()
