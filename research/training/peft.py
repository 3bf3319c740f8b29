"""Parameter-efficient fine-tuning (`config.peft`): which parameters train, and the LoRA merge.

Methods (`peft.method`):
  none     every parameter trains (full fine-tuning).
  lora     trainable low-rank deltas on the matrices `peft.targets` names (research/layers/peft.py);
           the base weights are frozen. `merge_lora` folds the deltas into the weights, giving a
           plain model (research.export writes it as a workdir).
  prompt   prompt tuning: `peft.prompt_tokens` soft-prompt embeddings (research/models/decoder.py)
           train; the rest is frozen. Decoders; one example per row.
  bitfit   BitFit: only the biases train (parameters named *bias or b_*; the model needs
           model.use_bias=True or LayerNorm biases).
  adapter  bottleneck adapters after every attention and MLP sublayer train; the rest is frozen.

`peft.train_also` (a regex on parameter paths) adds base parameters to the trainable set (e.g.
'.*norm.*'). A scalar head (model.scalar_head: a reward model's) trains under every method: it
is new to the run, and frozen it would stay at its initialisation. Frozen parameters go through
optax.set_to_zero inside optax.multi_transform, so the optimizer keeps no state for them, and
their gradients are dropped before the update (XLA then skips computing them where nothing else
needs them).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import numpy as np
import optax

from research.errors import ConfigError
from research.layers import peft as peft_lib

METHODS = ('none', 'lora', 'prompt', 'bitfit', 'adapter')
TRAIN, FROZEN = 'train', 'frozen'


def check_config(c) -> None:
  """Validates `config.peft` (config_lib.finalize calls this)."""
  p = c.peft
  if p.method not in METHODS:
    raise ConfigError('peft.method', p.method, f'choose one of {list(METHODS)}')
  if p.method == 'lora':
    if p.rank <= 0:
      raise ConfigError('peft.rank', p.rank, 'must be a positive integer, e.g. 8')
    try:
      re.compile(p.targets)
    except re.error as e:
      raise ConfigError('peft.targets', p.targets, f'is not a regex ({e})') from None
    if c.model.scan_layers:
      raise ConfigError('peft.method', p.method, 'LoRA needs model.scan_layers=False')
  if p.method == 'prompt':
    if p.prompt_tokens <= 0:
      raise ConfigError('peft.prompt_tokens', p.prompt_tokens, 'must be a positive integer')
    if c.model.family != 'decoder':
      raise ConfigError('peft.method', p.method,
                        f'prompt tuning is for decoders, not model.family={c.model.family!r}')
  if p.method == 'adapter' and p.adapter_dim <= 0:
    raise ConfigError('peft.adapter_dim', p.adapter_dim, 'must be a positive integer, e.g. 16')
  if p.train_also:
    try:
      re.compile(p.train_also)
    except re.error as e:
      raise ConfigError('peft.train_also', p.train_also, f'is not a regex ({e})') from None


def path_of(key_path) -> str:
  """'stack/layer_0/attn/query' for a tree path (box attributes such as .value skipped)."""
  return '/'.join(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))


def is_peft_param(path: str) -> bool:
  """Whether a parameter exists only because of a PEFT method (never restored from a base)."""
  name = path.rsplit('/', 1)[-1]
  return ('_lora_' in name or path == 'soft_prompt' or
          any(part.endswith('_adapter') for part in path.split('/')))


def _is_bias(path: str) -> bool:
  name = path.rsplit('/', 1)[-1]
  return name.endswith('bias') or name.startswith('b_')


def is_trainable(path: str, peft_cfg) -> bool:
  method = peft_cfg.method
  if method == 'none' or path.split('/', 1)[0] == 'scalar_head':
    return True
  if peft_cfg.train_also and re.fullmatch(peft_cfg.train_also, path):
    return True
  if method == 'bitfit':
    return _is_bias(path)
  return is_peft_param(path)


def labels(params, peft_cfg):
  """TRAIN / FROZEN per leaf of `params` (boxed or not)."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, _: TRAIN if is_trainable(path_of(kp), peft_cfg) else FROZEN, params)


def trainable_mask(params, peft_cfg):
  """True per trainable leaf of (unboxed) `params`."""
  return jax.tree.map(lambda label: label == TRAIN, labels(params, peft_cfg))


def wrap_optimizer(tx: optax.GradientTransformation, peft_cfg) -> optax.GradientTransformation:
  """`tx` on the trainable parameters; set_to_zero (no state) on the frozen ones. Unchanged
  for full fine-tuning."""
  if peft_cfg.method == 'none' and not peft_cfg.train_also:
    return tx
  return optax.multi_transform({TRAIN: tx, FROZEN: optax.set_to_zero()},
                               lambda params: labels(params, peft_cfg))


def check_trainable(params, peft_cfg) -> None:
  """A method that would train nothing is a configuration error, not a silent no-op."""
  if not any(jax.tree.leaves(trainable_mask(params, peft_cfg))):
    fix = ('the model has no biases: pre-train with model.use_bias=True, or set peft.train_also'
           if peft_cfg.method == 'bitfit' else 'set peft.train_also to a parameter regex')
    raise ConfigError('peft.method', peft_cfg.method, f'leaves no parameter to train: {fix}')


def count_params(params, peft_cfg) -> dict[str, int]:
  """Trainable and total parameter counts (shapes only; abstract trees work)."""
  mask = trainable_mask(params, peft_cfg)
  sizes = jax.tree.map(lambda x: int(np.prod(x.shape)), nn.meta.unbox(params))
  total = sum(jax.tree.leaves(sizes))
  trainable = sum(s for s, m in zip(jax.tree.leaves(sizes), jax.tree.leaves(mask)) if m)
  return {'trainable_params': trainable, 'total_params': total}


def merged_model(config, params):
  """(config, params) of a LoRA run as its plain model (deltas folded in, peft.method 'none');
  other configs as they are. research.export and research.convert --to=hf both export this."""
  if config.peft.method != 'lora':
    return config, params
  from research import config_lib  # pylint: disable=g-import-not-at-top
  params = merge_lora(params, float(config.peft.alpha))
  config.peft.method = 'none'
  return config_lib.finalize(config), params


def merge_lora(params, alpha: float):
  """Folds every `NAME_lora_a` / `NAME_lora_b` pair into `NAME` and drops the pairs: the plain
  model whose outputs equal the LoRA model's (to float rounding)."""
  def merge(node):
    if not isinstance(node, dict):
      return node
    out = {}
    for name, value in node.items():
      if '_lora_' in name:
        continue
      if f'{name}_lora_a' in node:
        a, b = node[f'{name}_lora_a'], node[f'{name}_lora_b']
        value = value + peft_lib.lora_merged(a, b, alpha).astype(value.dtype)
      out[name] = merge(value)
    return out
  return merge(dict(params))
