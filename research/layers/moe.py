"""Mixture-of-experts feed-forward layer: routers by name, capacity, balancing losses, metrics.

`MoE` replaces the dense `MLP` in the layers `MoEConfig.is_moe_layer` picks (`model.moe`). The
experts are one stacked FFN, weights w_in/w_gate [E, D, F] and w_out [E, F, D] on the logical
axes ('expert', 'embed', 'mlp'), so the default rules shard the experts over the `expert` mesh
axis. The router is a float32 [D, E] matrix ('embed', None) and computes in float32.

Routers (`model.moe.router`, the `ROUTERS` registry):

* 'top_k' -- token choice with a capacity (k = 1 Switch, k = 2 GShard/Mixtral). Tokens are
  routed in groups; a group is one sequence (one batch row, T tokens), so routing never crosses
  rows and keeps the batch sharding. Each expert takes at most C assignments per group, first
  choices before second choices (choice-major priority, as GShard), earlier tokens first within
  a choice. An assignment past capacity is dropped: it contributes nothing, and a token with all
  its k assignments dropped gets exactly zero from the layer, so the residual connection passes
  it through unchanged. Dispatch and combine are one-hot [B, T, E, C] einsums (GShard, Switch,
  T5X).
* 'dropless' -- token choice with no capacity: the (token, choice) assignments of the whole batch
  are sorted by expert and the experts run as one grouped matmul (`jax.lax.ragged_dot`), then
  unsorted and combined with the gates (MegaBlocks style). Never drops.
* 'expert_choice' -- each expert takes its top-C tokens of the group by router probability
  (Zhou et al. 2022); balanced by construction, a token may get zero or several experts. A
  token's routing depends on the other tokens of its sequence, later ones included, so the layer
  is NOT causal: in a decoder it leaks the future into the training loss.
  `transformer_config` refuses it for the decoder and encoder-decoder families unless
  `model.moe.allow_noncausal=True`, and incremental decoding refuses it outright.

Capacity convention (`capacity`, one formula for 'top_k' and 'expert_choice')::

    C = ceil(capacity_factor x T x (top_k if capacity_per_choice else 1) / E), clamped to [1, T]

with T the tokens of a group (the sequence length). With `capacity_per_choice=True` (GShard,
T5X, MaxText) capacity_factor = 1 gives room for exactly the k x T assignments if the load were
perfectly balanced; with False (the Switch paper's formula, which has k = 1) the k assignments
share the room of one. The clamp: an expert can receive at most T assignments from T tokens
(each token picks an expert at most once), and always at least one. In incremental decoding
(`decode=True`) the top-k router uses C = T, so decoding never drops a token.

Gates (`softmax_order`): 'before_top_k' takes the softmax over all E experts and uses the chosen
experts' probabilities as they are (Switch; they sum to less than 1 for k < E); 'after_top_k'
takes the softmax over the k chosen logits only (Mixtral), which is the same as renormalising
the chosen probabilities to sum to 1. With k = 1, 'after_top_k' makes the gate 1 and the router
learns only from the auxiliary losses.

Balancing (`balance`):

* 'aux_loss' -- the Switch load-balancing loss E x sum_e f_e P_e, f_e the fraction of the
  (token, choice) assignments routed to e (before capacity), P_e the mean router probability of
  e; it is 1.0 under uniform routing and is scaled by `load_balance_coef` (the expert-choice
  router is balanced by construction and adds no balancing loss).
* 'aux_free' -- DeepSeek-V3's auxiliary-loss-free balancing: a per-expert bias is added to the
  router probabilities for the top-k selection only (the gates use the unbiased ones). It lives
  in the 'moe_state' collection, outside the parameters and the gradient, and whenever that
  collection is mutable (`model.apply(..., mutable=['moe_state', ...])`) the layer updates it
  from the batch's load: bias_e += bias_update_rate x sign(mean load - load_e). Applied with
  'params' only (evaluation, sampling before the trainer carries the state) the bias reads 0.

Every router also has the router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2, scaled
by `z_loss_coef`. Optional router jitter (Switch): in training (deterministic=False) the router
input is multiplied by uniform noise in [1 - jitter, 1 + jitter] from the 'dropout' stream.
Optional shared experts (DeepSeek-MoE): `num_shared_experts` x F of dense MLP every token passes
through, added to the routed output.

Losses and metrics, all float32, are sown per layer into the 'moe_aux' collection as one dict
(`STAT_NAMES`); `aux_loss` there is the layer's already-scaled contribution to the objective.
`moe_aux(collection)` sums `aux_loss` over layers and flattens the metrics for logging;
`apply_model` and `add_to_loss` are what objectives call to include them.

Expert parallelism: the dispatched tokens x_EBCD are constrained to experts over the mesh axes
of 'expert' and groups over the remaining batch axes ('expert_batch', see `_constrain`), so
GSPMD moves tokens to their experts' devices with all-to-alls and back. The dropless router is
exact under any mesh but left to GSPMD's defaults (it gathers the global sort); an expert-parallel
grouped matmul (shard_map with a ragged all-to-all) is future work.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import ConfigError, UserError
from research.layers import mlp as mlp_lib
from research.parallel import mesh as mesh_lib

AUX_COLLECTION = 'moe_aux'  # per-layer losses and metrics (sown)
STATE_COLLECTION = 'moe_state'  # non-gradient state: the aux-free selection bias
ROUTING_COLLECTION = 'moe_routing'  # per-token probabilities and choices, sown only when asked

SOFTMAX_ORDERS = ('before_top_k', 'after_top_k')
BALANCES = ('aux_loss', 'aux_free')
# Sown per layer; all scalars except tokens_per_expert [E].
STAT_NAMES = ('aux_loss', 'load_balance_loss', 'z_loss', 'tokens_per_expert', 'load_cv',
              'max_violation', 'dropped_fraction', 'router_entropy', 'router_confidence')


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """Resolved `model.moe` (hashable; part of TransformerConfig). num_experts=0: dense model."""
  num_experts: int = 0
  every: int = 1  # layer i (0-based) is MoE when (i + 1) % every == 0
  router: str = 'top_k'  # a key of ROUTERS
  top_k: int = 2
  softmax_order: str = 'before_top_k'
  capacity_factor: float = 1.25
  capacity_per_choice: bool = True
  d_ff: int = 0  # expert width F (resolved: never 0 once transformer_config has run)
  num_shared_experts: int = 0
  jitter: float = 0.0
  balance: str = 'aux_loss'
  load_balance_coef: float = 0.01
  z_loss_coef: float = 1e-3
  bias_update_rate: float = 1e-3
  allow_noncausal: bool = False

  @property
  def enabled(self) -> bool:
    return self.num_experts > 0

  def is_moe_layer(self, i: int) -> bool:
    """Layer i (0-based, within its stack) is MoE when (i + 1) % every == 0: every=1 all
    layers, every=2 layers 1, 3, 5, ... (the last layer of each pair, as GShard and Switch)."""
    return self.enabled and (i + 1) % self.every == 0


def capacity(tokens: int, num_experts: int, capacity_factor: float, top_k: int = 1,
             per_choice: bool = True) -> int:
  """Expert capacity C per group of `tokens` (see the module docstring's convention)."""
  choices = top_k if per_choice else 1
  c = math.ceil(capacity_factor * tokens * choices / num_experts - 1e-9)
  return int(min(tokens, max(1, c)))


# ----------------------------------------------------------------------------------------------
# Validation


def check_moe(moe_cfg, *, family: str, num_layers: int, scan_layers: bool) -> None:
  """Validates `model.moe` (a ConfigDict or mapping); raises ConfigError naming the field."""
  m = moe_cfg
  if m['num_experts'] < 0:
    raise ConfigError('model.moe.num_experts', m['num_experts'],
                      'must be >= 0 (0: dense feed-forward layers everywhere)')
  if m['num_experts'] == 0:
    return
  if m['every'] < 1:
    raise ConfigError('model.moe.every', m['every'],
                      'must be >= 1 (1: every layer MoE; 2: every other layer)')
  if m['every'] > num_layers:
    raise ConfigError('model.moe.every', m['every'],
                      f'no layer of the {num_layers} would be MoE: use <= {num_layers}, or '
                      'model.moe.num_experts=0 for a dense model')
  if scan_layers and m['every'] != 1:
    raise ConfigError('model.moe.every', m['every'],
                      'model.scan_layers=True scans one layer type: use model.moe.every=1 '
                      '(all layers MoE) or model.scan_layers=False')
  if m['router'] not in ROUTERS:
    raise ConfigError('model.moe.router', m['router'], f'choose one of {sorted(ROUTERS)}')
  if not 1 <= m['top_k'] <= m['num_experts']:
    raise ConfigError('model.moe.top_k', m['top_k'],
                      f"must be in [1, model.moe.num_experts={m['num_experts']}]")
  if m['softmax_order'] not in SOFTMAX_ORDERS:
    raise ConfigError('model.moe.softmax_order', m['softmax_order'],
                      f'choose one of {list(SOFTMAX_ORDERS)}')
  if m['capacity_factor'] <= 0:
    raise ConfigError('model.moe.capacity_factor', m['capacity_factor'], 'must be > 0')
  for field in ('d_ff', 'num_shared_experts'):
    if m[field] < 0:
      raise ConfigError(f'model.moe.{field}', m[field], 'must be >= 0')
  if not 0 <= m['jitter'] < 1:
    raise ConfigError('model.moe.jitter', m['jitter'],
                      'must be in [0, 1): router inputs are scaled by U[1 - jitter, 1 + jitter]')
  if m['balance'] not in BALANCES:
    raise ConfigError('model.moe.balance', m['balance'], f'choose one of {list(BALANCES)}')
  for field in ('load_balance_coef', 'z_loss_coef', 'bias_update_rate'):
    if m[field] < 0:
      raise ConfigError(f'model.moe.{field}', m[field], 'must be >= 0')
  if m['router'] == 'expert_choice':
    if m['balance'] == 'aux_free':
      raise ConfigError('model.moe.balance', 'aux_free',
                        "expert-choice routing is balanced by construction: use 'aux_loss' "
                        '(which then adds only the z-loss)')
    if family in ('decoder', 'encoder_decoder') and not m['allow_noncausal']:
      raise ConfigError('model.moe.router', 'expert_choice',
                        f'is not causal (an expert picks among all tokens of the sequence, '
                        f'later ones included) and would leak the future into a {family} '
                        "model's loss: use 'top_k' or 'dropless', or set "
                        'model.moe.allow_noncausal=True to study it anyway')


def resolve(moe_cfg, *, d_ff: int) -> MoEConfig:
  """`model.moe` (validated) -> MoEConfig, the expert width filled in from the model's d_ff."""
  if moe_cfg is None:
    return MoEConfig()
  fields = {f.name for f in dataclasses.fields(MoEConfig)}
  values = {k: moe_cfg[k] for k in fields if k in moe_cfg}
  values['d_ff'] = values.get('d_ff') or d_ff
  return MoEConfig(**values)


# ----------------------------------------------------------------------------------------------
# Losses and metrics (float32)


def load_balance_loss(probs_NE: jax.Array, counts_E: jax.Array) -> jax.Array:
  """Switch loss E x sum_e f_e x P_e: f_e = counts_e / sum(counts) (assignments before capacity),
  P_e = mean router probability. 1.0 under uniform routing; E at worst (all on one expert)."""
  e = probs_NE.shape[-1]
  f_E = counts_E / jnp.maximum(jnp.sum(counts_E), 1.0)
  p_E = jnp.mean(probs_NE, axis=0)
  return e * jnp.sum(f_E * p_E)


def z_loss(logits_NE: jax.Array) -> jax.Array:
  """Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits_NE, axis=-1)))


def routing_metrics(probs_NE: jax.Array, counts_E: jax.Array) -> dict[str, jax.Array]:
  """Load (tokens per expert, its coefficient of variation, max violation = max/mean - 1) and
  router entropy and confidence (mean over tokens of the entropy and of the largest prob)."""
  mean = jnp.maximum(jnp.mean(counts_E), 1e-9)
  entropy_N = -jnp.sum(jax.scipy.special.xlogy(probs_NE, probs_NE), axis=-1)
  return dict(tokens_per_expert=counts_E, load_cv=jnp.std(counts_E) / mean,
              max_violation=jnp.max(counts_E) / mean - 1.0,
              router_entropy=jnp.mean(entropy_N),
              router_confidence=jnp.mean(jnp.max(probs_NE, axis=-1)))


def moe_aux(collection) -> tuple[jax.Array, dict[str, jax.Array]]:
  """'moe_aux' collection (from `apply(..., mutable=['moe_aux'])`) -> (aux loss, metrics).

  The aux loss is the sum over MoE layers of each layer's scaled losses
  (load_balance_coef x load-balancing loss + z_loss_coef x z-loss), to add to the objective's
  mean loss. Metrics: 'moe/<layer path>/<name>' per layer (scanned stacks are expanded to
  'layer_<i>'), and 'moe/<name>' averaged over layers; all scalars except tokens_per_expert [E].
  An empty or missing collection gives (0.0, {}).
  """
  layers = {}

  def walk(node, path):
    if isinstance(node, collections.abc.Mapping) and 'stats' in node:
      stats = node['stats']
      stats = stats[0] if isinstance(stats, (tuple, list)) else stats
      prefix = '/'.join(p for p in path if p != 'moe')
      scanned = jnp.ndim(stats['aux_loss']) == 1
      if scanned:  # nn.scan stacked the layers on axis 0
        parent = '/'.join(p for p in path if p not in ('moe', 'layers'))
        for i in range(stats['aux_loss'].shape[0]):
          name = f'{parent}/layer_{i}' if parent else f'layer_{i}'
          layers[name] = {k: v[i] for k, v in stats.items()}
      else:
        layers[prefix or 'layer'] = stats  # 'layer': an MoE applied on its own
      return
    if isinstance(node, collections.abc.Mapping):
      for key, child in node.items():
        walk(child, path + (key,))

  walk(dict(collection or {}), ())
  if not layers:
    return jnp.zeros((), jnp.float32), {}
  total = sum(s['aux_loss'] for s in layers.values())
  metrics = {}
  for name, stats in sorted(layers.items()):
    for k, v in stats.items():
      metrics[f'moe/{name}/{k}'] = v
  for k in STAT_NAMES:
    if k != 'tokens_per_expert':
      metrics[f'moe/{k}'] = jnp.mean(jnp.stack([s[k] for s in layers.values()]))
  return total, metrics


def scalar_metrics(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """`moe_aux` metrics with every [E] array split into scalars '<name>/<e>' (for loggers that
  take floats: metrics.jsonl, TensorBoard scalars)."""
  out = {}
  for name, value in metrics.items():
    if jnp.ndim(value) == 0:
      out[name] = value
    else:
      for i in range(value.shape[0]):
        out[f'{name}/{i}'] = value[i]
  return out


def routing_of(model, variables, *args, **kwargs) -> dict[str, dict[str, jax.Array]]:
  """Per-token routing of every MoE layer for one forward pass of `model`.

  Returns {'stack/layer_0': {'probs_BTE': router probabilities (float32), 'experts_BTK': the
  top_k experts each token selects (aux-free bias included), best first}, ...}. For the
  token-choice routers ('top_k', 'dropless') these are the token's assignments before capacity;
  for 'expert_choice' only the preference (experts choose tokens there). A scanned stack gives
  one entry with a leading layer axis. `variables` is {'params': ..., **model_state}.
  """
  _, new = model.apply(variables, *args, mutable=[ROUTING_COLLECTION], **kwargs)
  flat = flax.traverse_util.flatten_dict(new[ROUTING_COLLECTION], sep='/')
  return {key.removesuffix('/moe/routing'): value[0] for key, value in flat.items()}


def has_experts(model) -> bool:
  """Whether `model` (a family module with a TransformerConfig `cfg`) has MoE layers."""
  moe_cfg = getattr(getattr(model, 'cfg', None), 'moe', None)
  return isinstance(moe_cfg, MoEConfig) and moe_cfg.enabled


def apply_model(model, variables, *args, update_state: bool | None = None, **kwargs):
  """`model.apply(variables, *args, **kwargs)` -> (output, moe).

  For a dense model moe is None and this is plain `apply`. Otherwise moe is
  dict(aux_loss=scalar to add to the mean loss, metrics=scalar metrics for logging,
  state=the new {'moe_state': ...} (empty unless `variables` holds 'moe_state' and
  `update_state`, which defaults to training mode: `not model.deterministic`)).
  """
  if not has_experts(model):
    return model.apply(variables, *args, **kwargs), None
  if update_state is None:
    update_state = not getattr(model, 'deterministic', True)
  mutable = [AUX_COLLECTION]
  if update_state and STATE_COLLECTION in variables:
    mutable.append(STATE_COLLECTION)
  out, new = model.apply(variables, *args, mutable=mutable, **kwargs)
  aux_loss, metrics = moe_aux(new.get(AUX_COLLECTION))
  state = {STATE_COLLECTION: new[STATE_COLLECTION]} if STATE_COLLECTION in new else {}
  return out, dict(aux_loss=aux_loss, metrics=scalar_metrics(metrics), state=state)


def add_to_loss(loss_sum, aux: dict, moe: dict | None):
  """An objective's (loss_sum, aux) with the MoE terms: the differentiated loss becomes
  loss_sum + weight_sum x aux_loss (so that dividing by the summed weights, as the trainer does
  over micro-batches and hosts, adds aux_loss to the mean loss), and aux gains 'moe_loss_sum',
  'moe_metrics' and 'model_state'. aux['loss_sum'] stays the pure cross-entropy."""
  if moe is None:
    return loss_sum, aux
  moe_loss_sum = aux['weight_sum'] * moe['aux_loss']
  aux = dict(aux, moe_loss_sum=moe_loss_sum, moe_metrics=moe['metrics'],
             model_state=moe['state'])
  return loss_sum + moe_loss_sum, aux


# ----------------------------------------------------------------------------------------------
# Sharding of the dispatched (expert-major) activations


def _constrain(x, logical_axes):
  """Like nn.with_logical_constraint, with one more logical axis, 'expert_batch': the mesh axes
  of 'batch' minus those of 'expert'. Dispatched tokens x_EBCD are laid out experts over the
  expert axis and groups over the remaining batch axes, so moving them there is the all-to-all
  of expert parallelism. Mesh axes that do not divide their dimension are left out."""
  rules = tuple(nn.get_logical_axis_rules())
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh is None or mesh.empty:
    return x
  lookup = dict(rules)
  expert_axes = set(mesh_lib.axes_of(lookup.get('expert')))
  batch_axes = tuple(a for a in mesh_lib.axes_of(lookup.get('batch')) if a not in expert_axes)
  extended = (('expert_batch', batch_axes or None),) + rules
  spec = nn.logical_to_mesh_axes(logical_axes, extended)
  spec = mesh_lib.fit_spec(spec, x.shape, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)


# ----------------------------------------------------------------------------------------------
# The layer


@dataclasses.dataclass
class _Routing:
  """What every router returns to the layer: output and float32 statistics."""
  y_BTD: jax.Array
  counts_E: jax.Array  # assignments per expert (before capacity)
  dropped_fraction: jax.Array


class MoE(nn.Module):
  """x_BTD -> y_BTD: routed experts (+ shared experts); see the module docstring."""
  cfg: MoEConfig
  activation: str = 'gelu'
  use_bias: bool = False
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Any = jnp.float32
  decode: bool = False
  deterministic: bool = True

  # -- parameters ------------------------------------------------------------------------------

  def _param(self, name, shape, axes, init):
    return self.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)

  def _expert_params(self, d):
    e, f = self.cfg.num_experts, self.cfg.d_ff
    normal = nn.initializers.normal
    p = dict(w_in=self._param('w_in', (e, d, f), ('expert', 'embed', 'mlp'),
                              normal(self.init_std)),
             w_out=self._param('w_out', (e, f, d), ('expert', 'mlp', 'embed'),
                               normal(self.out_init_std)))
    if self.activation in mlp_lib.GATED:
      p['w_gate'] = self._param('w_gate', (e, d, f), ('expert', 'embed', 'mlp'),
                                normal(self.init_std))
    if self.use_bias:
      zeros = nn.initializers.zeros
      p['b_in'] = self._param('b_in', (e, f), ('expert', 'mlp'), zeros)
      p['b_out'] = self._param('b_out', (e, d), ('expert', 'embed'), zeros)
    return {k: v.astype(self.dtype) for k, v in p.items()}

  # -- experts ---------------------------------------------------------------------------------

  def _experts_dense(self, p, x_EBCD):
    """Every expert on its [B, C] slots (capacity and expert-choice routers)."""
    h_EBCF = jnp.einsum('ebcd,edf->ebcf', x_EBCD, p['w_in'])
    if self.use_bias:
      h_EBCF += p['b_in'][:, None, None, :]
    gate_EBCF = (jnp.einsum('ebcd,edf->ebcf', x_EBCD, p['w_gate']) if 'w_gate' in p else None)
    h_EBCF = mlp_lib.apply_activation(h_EBCF, self.activation, gate_EBCF)
    h_EBCF = _constrain(h_EBCF, ('expert', 'expert_batch', None, 'mlp'))
    y_EBCD = jnp.einsum('ebcf,efd->ebcd', h_EBCF, p['w_out'])
    if self.use_bias:
      y_EBCD += p['b_out'][:, None, None, :]
    return _constrain(y_EBCD, ('expert', 'expert_batch', None, 'act_embed'))

  def _experts_ragged(self, p, x_MD, group_sizes_E, expert_M):
    """The experts as grouped matmuls over rows sorted by expert (dropless router)."""
    h_MF = jax.lax.ragged_dot(x_MD, p['w_in'], group_sizes_E)
    if self.use_bias:
      h_MF += p['b_in'][expert_M]
    gate_MF = (jax.lax.ragged_dot(x_MD, p['w_gate'], group_sizes_E) if 'w_gate' in p else None)
    h_MF = mlp_lib.apply_activation(h_MF, self.activation, gate_MF)
    y_MD = jax.lax.ragged_dot(h_MF, p['w_out'], group_sizes_E)
    if self.use_bias:
      y_MD += p['b_out'][expert_M]
    return y_MD

  # -- routing helpers -------------------------------------------------------------------------

  def _select(self, logits_NE, probs_NE, bias_E):
    """Top-k experts per token (selection scores: probs + aux-free bias) and their gates."""
    k = self.cfg.top_k
    scores_NE = probs_NE + jax.lax.stop_gradient(bias_E)
    _, idx_NK = jax.lax.top_k(scores_NE, k)
    if self.cfg.softmax_order == 'before_top_k':
      gates_NK = jnp.take_along_axis(probs_NE, idx_NK, axis=-1)
    else:
      gates_NK = jax.nn.softmax(jnp.take_along_axis(logits_NE, idx_NK, axis=-1), axis=-1)
    return idx_NK, gates_NK

  def capacity(self, tokens: int) -> int:
    """C for a group of `tokens` (T for 'top_k' in decode mode: never drops)."""
    c = self.cfg
    if self.decode and c.router == 'top_k':
      return tokens
    return capacity(tokens, c.num_experts, c.capacity_factor, c.top_k, c.capacity_per_choice)

  # -- routers ---------------------------------------------------------------------------------

  def _route_top_k(self, p, x_BTD, logits_BTE, probs_BTE, bias_E) -> _Routing:
    b, t, _ = x_BTD.shape
    e, k = self.cfg.num_experts, self.cfg.top_k
    cap = self.capacity(t)
    idx_NK, gates_NK = self._select(logits_BTE.reshape(b * t, e), probs_BTE.reshape(b * t, e),
                                    bias_E)
    idx_BTK, gates_BTK = idx_NK.reshape(b, t, k), gates_NK.reshape(b, t, k)
    onehot_BTKE = jax.nn.one_hot(idx_BTK, e, dtype=jnp.int32)
    # Slot of each assignment in its expert's buffer: choice-major, then token order.
    onehot_BQE = onehot_BTKE.transpose(0, 2, 1, 3).reshape(b, k * t, e)
    slot_BQ = jnp.sum((jnp.cumsum(onehot_BQE, axis=1) - 1) * onehot_BQE, axis=-1)
    slot_BTK = slot_BQ.reshape(b, k, t).transpose(0, 2, 1)
    kept_BTK = slot_BTK < cap
    # one_hot of a slot >= C is all zeros: the dropped assignment vanishes from both tensors.
    slot_BTKC = jax.nn.one_hot(slot_BTK, cap, dtype=jnp.float32)
    onehot_f_BTKE = onehot_BTKE.astype(jnp.float32)
    dispatch_BTEC = jnp.einsum('btke,btkc->btec', onehot_f_BTKE, slot_BTKC)
    combine_BTEC = jnp.einsum('btke,btkc,btk->btec', onehot_f_BTKE, slot_BTKC, gates_BTK)
    x_EBCD = jnp.einsum('btec,btd->ebcd', dispatch_BTEC.astype(self.dtype), x_BTD)
    x_EBCD = _constrain(x_EBCD, ('expert', 'expert_batch', None, 'act_embed'))
    y_EBCD = self._experts_dense(p, x_EBCD)
    y_BTD = jnp.einsum('btec,ebcd->btd', combine_BTEC.astype(self.dtype), y_EBCD)
    counts_E = jnp.sum(onehot_f_BTKE, axis=(0, 1, 2))
    dropped = jnp.mean((~kept_BTK).astype(jnp.float32))
    return _Routing(y_BTD, counts_E, dropped)

  def _route_dropless(self, p, x_BTD, logits_BTE, probs_BTE, bias_E) -> _Routing:
    b, t, d = x_BTD.shape
    e, k = self.cfg.num_experts, self.cfg.top_k
    n = b * t
    idx_NK, gates_NK = self._select(logits_BTE.reshape(n, e), probs_BTE.reshape(n, e), bias_E)
    expert_M = idx_NK.reshape(n * k)  # assignment m = token m // k, choice m % k
    order_M = jnp.argsort(expert_M, stable=True)
    x_MD = x_BTD.reshape(n, d)[order_M // k]
    counts_E = jnp.sum(jax.nn.one_hot(expert_M, e, dtype=jnp.int32), axis=0)
    y_sorted_MD = self._experts_ragged(p, x_MD, counts_E, expert_M[order_M])
    y_MD = jnp.zeros_like(y_sorted_MD).at[order_M].set(y_sorted_MD, unique_indices=True)
    y_ND = jnp.einsum('nkd,nk->nd', y_MD.reshape(n, k, d), gates_NK.astype(self.dtype))
    return _Routing(y_ND.reshape(b, t, d), counts_E.astype(jnp.float32),
                    jnp.zeros((), jnp.float32))

  def _route_expert_choice(self, p, x_BTD, logits_BTE, probs_BTE, bias_E) -> _Routing:
    del logits_BTE, bias_E
    if self.decode:
      raise UserError('model.moe.router=expert_choice is not causal: incremental decoding with '
                      "it is undefined; train with router 'top_k' or 'dropless' to sample")
    _, t, _ = x_BTD.shape
    cap = self.capacity(t)
    gates_BEC, token_BEC = jax.lax.top_k(probs_BTE.transpose(0, 2, 1), cap)
    dispatch_BECT = jax.nn.one_hot(token_BEC, t, dtype=jnp.float32)
    x_EBCD = jnp.einsum('bect,btd->ebcd', dispatch_BECT.astype(self.dtype), x_BTD)
    x_EBCD = _constrain(x_EBCD, ('expert', 'expert_batch', None, 'act_embed'))
    y_EBCD = self._experts_dense(p, x_EBCD)
    combine_BECT = dispatch_BECT * gates_BEC[..., None]
    y_BTD = jnp.einsum('bect,ebcd->btd', combine_BECT.astype(self.dtype), y_EBCD)
    counts_E = jnp.sum(dispatch_BECT, axis=(0, 2, 3))
    experts_per_token_BT = jnp.sum(dispatch_BECT, axis=(1, 2))
    dropped = jnp.mean((experts_per_token_BT == 0).astype(jnp.float32))
    return _Routing(y_BTD, counts_E, dropped)

  # -- forward ---------------------------------------------------------------------------------

  def _selection_bias(self):
    """The aux-free bias variable (or None) and its value (zeros when absent and read-only)."""
    e = self.cfg.num_experts
    if self.cfg.balance != 'aux_free':
      return None, jnp.zeros((e,), jnp.float32)
    if self.is_mutable_collection(STATE_COLLECTION) or self.has_variable(
        STATE_COLLECTION, 'selection_bias'):
      var = self.variable(STATE_COLLECTION, 'selection_bias', jnp.zeros, (e,), jnp.float32)
      return var, var.value
    return None, jnp.zeros((e,), jnp.float32)

  @nn.compact
  def __call__(self, x_BTD):
    c = self.cfg
    mlp_lib.check_activation(self.activation)
    d, e = x_BTD.shape[-1], c.num_experts
    router_DE = self._param('router', (d, e), ('embed', None),
                            nn.initializers.normal(self.init_std))
    p = self._expert_params(d)
    bias_var, bias_E = self._selection_bias()

    # Router, float32 throughout.
    xr_BTD = x_BTD.astype(jnp.float32)
    if c.jitter > 0 and not self.deterministic:
      noise = jax.random.uniform(self.make_rng('dropout'), xr_BTD.shape, jnp.float32,
                                 1.0 - c.jitter, 1.0 + c.jitter)
      xr_BTD = xr_BTD * noise
    # A matmul, not an einsum: quantization (Qwix intercepts einsums) leaves the router float32.
    logits_BTE = jnp.matmul(xr_BTD, router_DE)
    probs_BTE = jax.nn.softmax(logits_BTE, axis=-1)

    routing = ROUTERS[c.router](self, p, x_BTD, logits_BTE, probs_BTE, bias_E)
    if self.is_mutable_collection(ROUTING_COLLECTION) and not self.is_initializing():
      # Only when asked for (plots, notebooks): see `routing_of`.
      b, t, _ = x_BTD.shape
      idx_NK, _ = self._select(logits_BTE.reshape(b * t, e), probs_BTE.reshape(b * t, e),
                               bias_E)
      self.sow(ROUTING_COLLECTION, 'routing',
               dict(probs_BTE=probs_BTE, experts_BTK=idx_NK.reshape(b, t, c.top_k)))
    y_BTD = nn.with_logical_constraint(routing.y_BTD.astype(self.dtype),
                                       ('batch', 'length', 'act_embed'))
    if c.num_shared_experts:
      y_BTD += mlp_lib.MLP(d_ff=c.d_ff * c.num_shared_experts, activation=self.activation,
                           use_bias=self.use_bias, init_std=self.init_std,
                           out_init_std=self.out_init_std, dtype=self.dtype,
                           name='shared')(x_BTD)

    # Losses and metrics (float32).
    logits_NE, probs_NE = logits_BTE.reshape(-1, e), probs_BTE.reshape(-1, e)
    lb = load_balance_loss(probs_NE, routing.counts_E)
    zl = z_loss(logits_NE)
    lb_coef = c.load_balance_coef if (c.balance == 'aux_loss' and
                                      c.router != 'expert_choice') else 0.0
    stats = dict(aux_loss=lb_coef * lb + c.z_loss_coef * zl, load_balance_loss=lb, z_loss=zl,
                 dropped_fraction=routing.dropped_fraction,
                 **routing_metrics(probs_NE, routing.counts_E))
    self.sow(AUX_COLLECTION, 'stats', stats)

    if (bias_var is not None and self.is_mutable_collection(STATE_COLLECTION)
        and not self.is_initializing()):
      load_E = jax.lax.stop_gradient(routing.counts_E)
      bias_var.value = bias_E + c.bias_update_rate * jnp.sign(jnp.mean(load_E) - load_E)
    return y_BTD


ROUTERS = {
    'top_k': MoE._route_top_k,
    'dropless': MoE._route_dropless,
    'expert_choice': MoE._route_expert_choice,
}
