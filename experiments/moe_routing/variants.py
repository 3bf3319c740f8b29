"""The variant grid of the MoE routing study: one dense baseline and MoE routers at equal active
FLOPs per token.

A study config is a training config (the dense baseline's model, data and recipe) plus a
`moe_routing` section (`with_moe_routing`)::

  variants                       comma-separated names from VARIANTS, in the order to train
  num_experts                    E of every MoE variant (8)
  capacity_factor                top1, top2, aux_free: expert capacity factor (1.25)
  expert_choice_capacity_factor  expert_choice: tokens per expert = factor x T x 2 / E (1.0)
  load_balance_coef              the Switch loss's weight (aux-loss variants; 0.01)
  bias_update_rate               aux_free: the selection-bias step (1e-3)

Every variant keeps the dense model's d_model, layers, attention, data and recipe and differs
only in its feed-forward layers (MoE in the layers that `model.moe.every` picks, every layer by
default). With F the dense model's d_ff (`model.d_ff`, resolved), the variants are:

  name           router          active experts per token   expert width   balance
  dense          (dense MLP)     -                          F              -
  top1           top_k, k = 1    1                          F              Switch loss
  top2           top_k, k = 2    2                          F / 2          Switch loss
  dropless       dropless, k = 2 2                          F / 2          Switch loss
  aux_free       top_k, k = 2    2                          F / 2          DeepSeek-V3 bias
  expert_choice  expert_choice   cf x 2 on average          F / (cf x 2)   by construction

so every token passes through F of expert width, as through the dense MLP: the active matmul
parameters, hence the FLOPs per token (`research.training.flops`, which counts top_k experts,
or capacity_factor x top_k for expert choice), equal the dense model's plus the router's
d_model x E per MoE layer. The FLOP count is of useful work: capacity padding (top_k routers
compute E x C slots, capacity_factor x k x T per sequence) and dropped assignments are not in it.

Expert choice is NOT causal (an expert picks among all tokens of a sequence, later ones
included), so in a decoder it sees the future and its loss is not comparable with the others.
It is left out of the default grid; naming it trains it with `model.moe.allow_noncausal=True`
and the table marks it as leaking the future.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import ml_collections

from research import config_lib, models, objectives
from research.errors import ConfigError
from research.training import flops as flops_lib

VARIANTS = ('dense', 'top1', 'top2', 'dropless', 'aux_free', 'expert_choice')
DEFAULT_VARIANTS = 'dense,top1,top2,dropless,aux_free'
EXPERT_LEAVES = ('w_in', 'w_gate', 'w_out', 'b_in', 'b_out')


def default_section() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.variants = DEFAULT_VARIANTS
  s.num_experts = 8
  s.capacity_factor = 1.25
  s.expert_choice_capacity_factor = 1.0
  s.load_balance_coef = 0.01
  s.bias_update_rate = 1e-3
  return s


def with_moe_routing(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Adds the `moe_routing` section (defaults updated with `fields`) to a training config."""
  return config_lib.add_section(config, 'moe_routing', default_section(), fields)


def section(config) -> ml_collections.ConfigDict:
  if 'moe_routing' not in config:
    raise ConfigError('moe_routing', None, 'the config has no `moe_routing` section: build it '
                      'with experiments.moe_routing.variants.with_moe_routing(config, ...)')
  s = config.moe_routing
  unknown = sorted(set(s.keys()) - set(default_section().keys()))
  if unknown:
    raise ConfigError(f'moe_routing.{unknown[0]}', s[unknown[0]],
                      f'unknown field: valid are {sorted(default_section().keys())}')
  return s


def variant_names(s) -> list[str]:
  names = [n.strip() for n in str(s.variants).split(',') if n.strip()]
  if not names:
    raise ConfigError('moe_routing.variants', s.variants, f'name at least one of {VARIANTS}')
  for n in names:
    if n not in VARIANTS:
      raise ConfigError('moe_routing.variants', s.variants,
                        f'unknown variant {n!r}: choose from {", ".join(VARIANTS)}')
  if len(set(names)) != len(names):
    raise ConfigError('moe_routing.variants', s.variants, 'a variant is named twice')
  return names


@dataclasses.dataclass(frozen=True)
class Variant:
  """One trained model of the study, resolved against the base config."""
  name: str
  label: str  # for legends and the table
  router: str  # 'dense' for the baseline
  top_k: int  # experts per token (0 for dense; expert choice: its capacity's k)
  num_experts: int
  expert_d_ff: int  # the dense d_ff for the baseline
  balance: str  # '-' for dense, 'aux_loss', 'aux_free', 'construction' (expert choice)
  capacity_factor: float | None
  active_experts: float  # average experts a token passes through (0 for dense)
  causal: bool
  overrides: tuple  # (key, value) pairs applied to the study config
  config: ml_collections.ConfigDict  # finalized training config
  total_params: int
  active_params: int  # parameters one token uses: inactive experts' parameters left out
  router_params: int  # d_model x E per MoE layer (matmul parameters the dense model lacks)
  flops_per_token: float  # training FLOPs per token (research.training.flops, as the trainer)

  @property
  def is_moe(self) -> bool:
    return self.num_experts > 0


def _finalized(config, overrides: Sequence[tuple[str, object]]):
  c = copy.deepcopy(config)
  for key, value in overrides:
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ConfigError(key, value, 'unknown config key')
    with node.ignore_type():
      node[leaf] = value
  return config_lib.finalize(c)


def _param_counts(config) -> tuple[int, int]:
  """(all parameters, parameters of routed experts) of `config`'s model, from an abstract init."""
  model = models.build_model(config)
  args = objectives.get_objective(config.objective.name).init_args(1, config)
  shapes = jax.eval_shape(lambda rng: model.init({'params': rng}, *args), jax.random.key(0))
  total = experts = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(shapes['params']))[0]:
    n = math.prod(leaf.shape)
    total += n
    keys = [getattr(p, 'key', '') for p in path]
    if 'moe' in keys and 'shared' not in keys and keys[-1] in EXPERT_LEAVES:
      experts += n
  return total, experts


def _spec(name: str, s, d_ff: int) -> dict:
  e = s.num_experts
  def halve(k, what):
    if d_ff % k:
      raise ConfigError('model.d_ff', d_ff, f'must divide by {k} for the {what} variant\'s '
                        f'experts of width d_ff / {k}')
    return d_ff // k
  if name == 'dense':
    return dict(router='dense', top_k=0, num_experts=0, expert_d_ff=d_ff, balance='-',
                capacity_factor=None, active_experts=0, causal=True,
                label=f'dense (F={d_ff})')
  cf = float(s.capacity_factor)
  if name == 'top1':
    return dict(router='top_k', top_k=1, num_experts=e, expert_d_ff=d_ff, balance='aux_loss',
                capacity_factor=cf, active_experts=1, causal=True,
                label=f'top-1 (E={e}, F={d_ff}, cf {cf:g})')
  if name == 'top2':
    f = halve(2, name)
    return dict(router='top_k', top_k=2, num_experts=e, expert_d_ff=f, balance='aux_loss',
                capacity_factor=cf, active_experts=2, causal=True,
                label=f'top-2 (E={e}, F={f}, cf {cf:g})')
  if name == 'dropless':
    f = halve(2, name)
    return dict(router='dropless', top_k=2, num_experts=e, expert_d_ff=f, balance='aux_loss',
                capacity_factor=None, active_experts=2, causal=True,
                label=f'dropless top-2 (E={e}, F={f})')
  if name == 'aux_free':
    f = halve(2, name)
    return dict(router='top_k', top_k=2, num_experts=e, expert_d_ff=f, balance='aux_free',
                capacity_factor=cf, active_experts=2, causal=True,
                label=f'aux-free top-2 (E={e}, F={f}, cf {cf:g})')
  if name == 'expert_choice':
    ecf = float(s.expert_choice_capacity_factor)
    active = ecf * 2
    f = d_ff / active
    if f != int(f):
      raise ConfigError('moe_routing.expert_choice_capacity_factor', ecf,
                        f'd_ff={d_ff} / ({ecf:g} x 2) is not a whole expert width')
    return dict(router='expert_choice', top_k=2, num_experts=e, expert_d_ff=int(f),
                balance='construction', capacity_factor=ecf, active_experts=active,
                causal=False, label=f'expert choice (E={e}, F={int(f)}, cf {ecf:g}; non-causal)')
  raise ConfigError('moe_routing.variants', name, f'choose from {VARIANTS}')


def _overrides(spec: dict, s, name: str, base_name: str) -> tuple:
  o = [('name', f'{base_name}/{name}')]
  if spec['router'] == 'dense':
    return tuple(o + [('model.moe.num_experts', 0)])
  o += [('model.moe.num_experts', spec['num_experts']), ('model.moe.router', spec['router']),
        ('model.moe.top_k', spec['top_k']), ('model.moe.d_ff', spec['expert_d_ff']),
        ('model.moe.balance', 'aux_free' if spec['balance'] == 'aux_free' else 'aux_loss'),
        ('model.moe.load_balance_coef', float(s.load_balance_coef)),
        ('model.moe.bias_update_rate', float(s.bias_update_rate)),
        ('model.moe.allow_noncausal', not spec['causal'])]
  if spec['capacity_factor'] is not None:
    o.append(('model.moe.capacity_factor', spec['capacity_factor']))
    o.append(('model.moe.capacity_per_choice', True))
  return tuple(o)


def build_grid(config) -> list[Variant]:
  """The study's variants, in the order `moe_routing.variants` names them."""
  s = section(config)
  names = variant_names(s)
  if s.num_experts < 2:
    raise ConfigError('moe_routing.num_experts', s.num_experts, 'must be >= 2')
  base = _finalized(config, [('model.moe.num_experts', 0)])
  d_ff = models.transformer_config(base.model, seq_len=base.data.seq_len).d_ff
  grid = []
  for name in names:
    spec = _spec(name, s, d_ff)
    overrides = _overrides(spec, s, name, config.name)
    cfg = _finalized(config, overrides)
    tcfg = models.transformer_config(cfg.model, seq_len=cfg.data.seq_len)
    total, experts = _param_counts(cfg)
    moe_layers = sum(tcfg.moe.is_moe_layer(i) for i in range(tcfg.num_layers))
    e = spec['num_experts']
    inactive = experts * (1 - spec['active_experts'] / e) if e else 0
    tokens = cfg.train.batch_size * cfg.data.seq_len
    label = spec.pop('label')
    grid.append(Variant(
        name=name, label=label, overrides=overrides, config=cfg, total_params=total,
        active_params=int(round(total - inactive)),
        router_params=moe_layers * tcfg.d_model * e,
        flops_per_token=flops_lib.flops_per_step(tcfg, cfg) / tokens, **spec))
  return grid


def describe(v: Variant) -> str:
  return (f'{v.label}: {v.active_params / 1e6:.3g}M active of {v.total_params / 1e6:.3g}M '
          f'parameters, {v.flops_per_token / 1e6:.4g} MFLOP/token')
