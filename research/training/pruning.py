"""Sparsity masks: magnitude and 2:4 pruning, the gradual schedule, and masked optimizer steps.

What is pruned: the hidden weight matrices (attention and feed-forward projections, experts),
never embeddings, the unembedding, a scalar head, norms, biases, MoE routers or PEFT
parameters. Each matrix is pruned by itself (per layer, per expert: a scanned stack's layer axis
and an expert axis index separate matrices), so every one ends at exactly the target sparsity,
as in Zhu & Gupta 2017.

- magnitude: the round(sparsity x n) entries of smallest |w| in each matrix are zero.
- 2:4: in every group of 4 consecutive *input* weights (along the axes the matrix contracts
  with its input: `embed` for the query/key/value and feed-forward input projections, heads x
  head_dim or `mlp` for the output projections) the 2 of smallest |w| are zero. The input axis
  because that is the pattern sparse tensor cores (NVIDIA Ampere and later) accelerate: each
  output's dot product skips 2 of every 4 products along its reduction dimension.

Gradual pruning (`train.pruning`) follows the cubic schedule of Zhu & Gupta 2017: at step t in
[start_step, end_step], every update_every steps (and at end_step), the masks are recomputed for
s_t = s_f + (s_i - s_f) (1 - (t - start) / (end - start))^3. Masks only ever lose entries (the
new mask is ANDed with the old), so a weight once pruned stays pruned. Gradual 2:4 prunes, of
each group's 2 smallest weights (the candidates), the fraction s_t / 0.5 of smallest magnitude
in the matrix: it ends at exactly 2 of every 4.

Where the masks live: `TrainState.model_state['pruning_masks']`, a tree of booleans shaped like
the pruned parameters (True: kept). So they are sharded like their parameters, saved in every
checkpoint (a resume continues with them) and restored by research.load with the rest of the
state; `init_from` a pruned workdir brings them back (research/training/restore.py).

How the optimizer honours them (`masked_update`): gradients of pruned weights are zeroed before
the optimizer, so AdamW's moments never see them, and its updates are zeroed after it, so
neither momentum left from before a weight was pruned nor decoupled weight decay moves it: a
pruned weight stays exactly 0.0 after every step.
"""

from __future__ import annotations

import dataclasses
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.errors import ConfigError
from research.training import optimizers, peft

MASKS = 'pruning_masks'  # the model_state entry
METHODS = ('none', 'magnitude', '2:4')  # gradual (train.pruning.method)
LEADING_AXES = ('layers', 'expert')  # each index of these is a matrix of its own
GROUP = 4  # 2:4: groups of 4 consecutive input weights, 2 kept


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a parameter is read as matrices: `leading` axes (layers, experts) index separate
  matrices; `inputs` are the axes contracted with the layer's input."""
  leading: int
  inputs: tuple[int, ...]


def layout_of(path: tuple[str, ...], names: tuple[str, ...]) -> Layout | None:
  """The Layout of a prunable parameter from its path and logical axis names; None for the
  parameters that are never pruned (see the module docstring)."""
  if (optimizers.param_class(path, jax.ShapeDtypeStruct((1,) * len(names), jnp.float32))
      != 'hidden' or 'router' in path or peft.is_peft_param('/'.join(path))):
    return None
  lead = 0
  while lead < len(names) and names[lead] in LEADING_AXES:
    lead += 1
  rest = names[lead:]
  if len(rest) < 2:
    return None
  if rest[-1] == 'embed':  # an output projection: reads every axis but the residual one
    return Layout(lead, tuple(range(lead, len(names) - 1)))
  if rest[0] == 'embed':  # an input projection: reads the residual stream
    return Layout(lead, (lead,))
  return None


def layouts(boxed_params) -> dict[tuple[str, ...], Layout]:
  """{path: Layout} of the prunable parameters of a tree with logical axis names (what
  `model.init` returns, or its eval_shape)."""
  flat = flax.traverse_util.flatten_dict(boxed_params)
  out = {}
  for path, leaf in flat.items():
    names = getattr(leaf, 'names', None)
    layout = layout_of(path, tuple(names)) if names is not None else None
    if layout is not None:
      out[path] = layout
  return out


def enabled(config) -> bool:
  return config.train.pruning.method != 'none'


def check_config(config) -> None:
  """train.pruning fields that cannot work are errors (ConfigError)."""
  p = config.train.pruning
  if p.method not in METHODS:
    raise ConfigError('train.pruning.method', p.method,
                      f'choose one of {list(METHODS)} (heads and channels prune once: python -m '
                      'research.compress prune)')
  if p.method == 'none':
    return
  if not 0 < p.sparsity < 1:
    raise ConfigError('train.pruning.sparsity', p.sparsity, 'must be in (0, 1)')
  if p.method == '2:4' and p.sparsity != 0.5:
    raise ConfigError('train.pruning.sparsity', p.sparsity, "is 0.5 for method '2:4'")
  if not 0 <= p.initial_sparsity <= p.sparsity:
    raise ConfigError('train.pruning.initial_sparsity', p.initial_sparsity,
                      f'must be in [0, train.pruning.sparsity={p.sparsity}]')
  if p.start_step < 0 or p.end_step < p.start_step:
    raise ConfigError('train.pruning.end_step', p.end_step,
                      f'must be >= train.pruning.start_step={p.start_step} >= 0')
  if p.update_every <= 0:
    raise ConfigError('train.pruning.update_every', p.update_every, 'must be a positive integer')


# ------------------------------------------------------------------------------------------------
# Masks of one matrix.


def _matrices(w, layout: Layout):
  """w as [S, I, O]: S matrices (leading axes), I inputs, O outputs."""
  rest = [a for a in range(layout.leading, w.ndim) if a not in layout.inputs]
  order = tuple(range(layout.leading)) + layout.inputs + tuple(rest)
  moved = jnp.transpose(w, order)
  s = math.prod(w.shape[:layout.leading])
  i = math.prod(w.shape[a] for a in layout.inputs)
  return moved.reshape(s, i, -1), moved.shape, order


def _unmatrices(m_SIO, shape, order):
  inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
  return jnp.transpose(m_SIO.reshape(shape), inverse)


def _keep_smallest_pruned(score_SN, count):
  """True except the `count` entries of smallest score in each row (ties by position)."""
  rank_SN = jnp.argsort(jnp.argsort(score_SN, axis=-1, stable=True), axis=-1, stable=True)
  return rank_SN >= count


def magnitude_mask(w, layout: Layout, sparsity):
  """Keeps all but the round(sparsity x n) smallest |w| of each matrix."""
  w_SIO, shape, order = _matrices(w, layout)
  n = w_SIO.shape[1] * w_SIO.shape[2]
  count = jnp.round(sparsity * n).astype(jnp.int32)
  keep_SN = _keep_smallest_pruned(jnp.abs(w_SIO).reshape(w_SIO.shape[0], n), count)
  return _unmatrices(keep_SN.reshape(w_SIO.shape), shape, order)


def two_four_mask(w, layout: Layout, sparsity=0.5):
  """2:4 along the inputs: of each group of 4 consecutive inputs (per output), the 2 smallest
  |w| are candidates, and the fraction sparsity / 0.5 of candidates of smallest |w| in the
  matrix are pruned; at 0.5, exactly 2 of every 4."""
  w_SIO, shape, order = _matrices(w, layout)
  s, i, o = w_SIO.shape
  if i % GROUP:
    raise ConfigError('train.pruning.method', '2:4', f'a matrix with {i} inputs does not split '
                      f'into groups of {GROUP}: use magnitude')
  a_SGFO = jnp.abs(w_SIO).reshape(s, i // GROUP, GROUP, o)
  in_group = jnp.argsort(jnp.argsort(a_SGFO, axis=2, stable=True), axis=2, stable=True)
  candidate = in_group < GROUP // 2
  score_SN = jnp.where(candidate, a_SGFO, jnp.inf).reshape(s, -1)
  count = jnp.round(sparsity / 0.5 * (i * o // 2)).astype(jnp.int32)
  keep = _keep_smallest_pruned(score_SN, count)
  return _unmatrices(keep.reshape(s, i, o), shape, order)


MASK_FNS = {'magnitude': magnitude_mask, '2:4': two_four_mask}


# ------------------------------------------------------------------------------------------------
# Trees of masks.


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree)


def init_masks(boxed_params) -> dict:
  """All-True masks (logically partitioned like their parameters) for the prunable ones."""
  flat = _flat(boxed_params)
  ones = {path: jax.tree.map(lambda x: jnp.ones(x.shape, jnp.bool_), flat[path])
          for path in layouts(boxed_params)}
  return flax.traverse_util.unflatten_dict(ones)


def compute_masks(method: str, params, layout_of_path, sparsity, old_masks=None) -> dict:
  """Masks of `method` at `sparsity` for the prunable `params`, ANDed with `old_masks`."""
  flat, old = _flat(params), _flat(old_masks) if old_masks is not None else {}
  out = {}
  for path, layout in layout_of_path.items():
    mask = MASK_FNS[method](flat[path], layout, sparsity)
    out[path] = mask & old[path] if path in old else mask
  return flax.traverse_util.unflatten_dict(out)


def apply(tree, masks):
  """`tree` (parameters, gradients or updates) with the masked entries exactly 0."""
  if not masks:
    return tree
  flat = dict(_flat(tree))
  for path, mask in _flat(masks).items():
    flat[path] = jnp.where(mask, flat[path], jnp.zeros((), flat[path].dtype))
  return flax.traverse_util.unflatten_dict(flat)


def masked_update(tx: optax.GradientTransformation, grads, opt_state, params, masks):
  """(params, opt_state) after one optimizer step that leaves pruned weights at exactly 0: no
  gradient reaches the optimizer's moments, and no update (momentum, weight decay) reaches
  them. `params` must already be masked."""
  updates, opt_state = tx.update(apply(grads, masks), opt_state, params)
  return optax.apply_updates(params, apply(updates, masks)), opt_state


def sparsity_at(pruning_cfg, step):
  """Zhu & Gupta's cubic schedule: initial_sparsity at start_step to sparsity at end_step."""
  p = pruning_cfg
  span = max(p.end_step - p.start_step, 1)
  progress = jnp.clip((step - p.start_step) / span, 0.0, 1.0)
  if p.end_step == p.start_step:
    progress = jnp.ones_like(progress)
  return p.sparsity + (p.initial_sparsity - p.sparsity) * (1.0 - progress) ** 3


def is_due(pruning_cfg, step):
  """Masks are recomputed every update_every steps from start_step, and at end_step."""
  p = pruning_cfg
  inside = (step >= p.start_step) & (step <= p.end_step)
  return inside & (((step - p.start_step) % p.update_every == 0) | (step == p.end_step))


def prune_state(pruning_cfg, layout_of_path, state):
  """The train step's first move: new masks at the schedule's steps (from the weights as they
  are), and the parameters masked, so the forward pass sees the pruned model."""
  masks = state.model_state[MASKS]
  step = state.step
  masks = jax.lax.cond(
      is_due(pruning_cfg, step),
      lambda: compute_masks(pruning_cfg.method, state.params, layout_of_path,
                            sparsity_at(pruning_cfg, step), masks),
      lambda: masks)
  return state.replace(params=apply(state.params, masks),
                       model_state={**state.model_state, MASKS: masks})


def sparsity_of(params, layout_of_path) -> jax.Array:
  """The fraction of prunable weights that are exactly 0."""
  flat = _flat(params)
  zeros = sum(jnp.sum(flat[p] == 0) for p in layout_of_path)
  total = sum(flat[p].size for p in layout_of_path)
  return zeros / max(total, 1)


def unbox_names(boxed_params):
  """Logical axis names per path of a boxed tree (for callers holding unboxed parameters)."""
  return {path: tuple(leaf.names) for path, leaf in _flat(boxed_params).items()
          if isinstance(leaf, nn.Partitioned)}
