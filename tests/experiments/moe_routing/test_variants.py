"""The MoE routing study's variant grid: equal active FLOPs per token, parameter counts, configs."""

from __future__ import annotations

import os

import pytest

from experiments.moe_routing import variants
from research import config_lib
from research.errors import ConfigError
from research.training import flops as flops_lib
from research import models
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))


def study_config(**section):
  c = helpers.tiny_config(**{'model.d_model': 32, 'model.d_ff': 64, 'model.dtype': 'float32'})
  c.name = 'test_moe_routing'
  return variants.with_moe_routing(c, **{'num_experts': 4, **section})


def test_every_variant_has_the_dense_models_active_flops_per_token():
  c = study_config(variants=','.join(variants.VARIANTS))
  grid = {v.name: v for v in variants.build_grid(c)}
  assert list(grid) == list(variants.VARIANTS)
  dense = grid['dense']
  assert dense.router_params == 0 and dense.active_params == dense.total_params
  for v in grid.values():
    cfg = models.transformer_config(v.config.model, seq_len=v.config.data.seq_len)
    # The trainer's own count (flops.py) ...
    assert v.flops_per_token == pytest.approx(
        flops_lib.flops_per_step(cfg, v.config) / (v.config.train.batch_size *
                                                   v.config.data.seq_len))
    # ... equals the dense model's plus exactly 6 x the router's d_model x E per MoE layer.
    assert v.flops_per_token - 6 * v.router_params == pytest.approx(dense.flops_per_token)
    assert v.active_params - v.router_params == dense.active_params, v.name
    if v.is_moe:
      assert v.router_params == 2 * 32 * 4  # 2 MoE layers of d_model x E
      assert v.total_params > v.active_params
      assert cfg.moe.num_experts == 4 and cfg.moe.router == {
          'top1': 'top_k', 'top2': 'top_k', 'aux_free': 'top_k'}.get(v.name, v.name)
  assert grid['top1'].expert_d_ff == 64 and grid['top1'].top_k == 1
  for name in ('top2', 'dropless', 'aux_free', 'expert_choice'):
    assert grid[name].expert_d_ff == 32
  assert grid['aux_free'].config.model.moe.balance == 'aux_free'
  assert not grid['expert_choice'].causal
  assert grid['expert_choice'].config.model.moe.allow_noncausal
  assert all(v.causal for n, v in grid.items() if n != 'expert_choice')
  # Every variant keeps the base recipe: same data, seed, steps and attention.
  for v in grid.values():
    assert (v.config.seed, v.config.train.steps, v.config.data.seq_len,
            v.config.model.num_heads) == (c.seed, c.train.steps, c.data.seq_len, 4)


def test_expert_choice_capacity_factor_sets_experts_per_token():
  c = study_config(variants='dense,expert_choice', expert_choice_capacity_factor=0.5)
  dense, ec = variants.build_grid(c)
  assert ec.active_experts == 1.0 and ec.expert_d_ff == 64  # one expert of width F on average
  assert ec.flops_per_token - 6 * ec.router_params == pytest.approx(dense.flops_per_token)


@pytest.mark.parametrize('section,field', [
    ({'variants': 'dense,top3'}, 'moe_routing.variants'),
    ({'variants': 'dense,dense'}, 'moe_routing.variants'),
    ({'variants': ''}, 'moe_routing.variants'),
    ({'num_experts': 1}, 'moe_routing.num_experts'),
    ({'expert_choice_capacity_factor': 0.3, 'variants': 'expert_choice'},
     'moe_routing.expert_choice_capacity_factor'),
])
def test_bad_sections_name_the_field(section, field):
  with pytest.raises(ConfigError) as err:
    variants.build_grid(study_config(**section))
  assert err.value.field == field


def test_study_configs_load_and_pod_config_is_equal_flops_at_scale():
  shakespeare = config_lib.load_config(
      os.path.join(REPO, 'configs/experiments/moe_routing/shakespeare.py'))
  assert variants.variant_names(shakespeare.moe_routing) == [
      'dense', 'top1', 'top2', 'dropless', 'aux_free']
  pod = config_lib.load_config(os.path.join(REPO, 'configs/experiments/moe_routing/pod.py'))
  assert pod.mesh.preset == 'fsdp_ep' and pod.data.source.startswith('tfds:c4')
  grid = variants.build_grid(pod)  # abstract shapes only: nothing of 18B parameters allocated
  dense = grid[0]
  assert 0.9e9 < dense.active_params < 1.1e9
  for v in grid[1:]:
    assert v.num_experts == 64
    assert v.flops_per_token - 6 * v.router_params == pytest.approx(dense.flops_per_token)


def test_moe_benchmark_config_variants_have_the_dense_active_flops():
  path = os.path.join(REPO, 'configs/decoder/shakespeare_moe.py')
  per_token = {}
  for arg in ('', ':dense', ':top1', ':dropless', ':aux_free', ':expert_choice', ':tiny'):
    c = config_lib.load_config(path + arg)
    cfg = models.transformer_config(c.model, seq_len=c.data.seq_len)
    per_token[arg] = flops_lib.flops_per_token(cfg, c.data.seq_len)
  router = 6 * 4 * 256 * 8  # 6 x layers x d_model x E
  for arg in ('', ':top1', ':dropless', ':aux_free', ':expert_choice'):
    assert per_token[arg] - router == pytest.approx(per_token[':dense']), arg
  with pytest.raises(ConfigError):
    config_lib.load_config(path + ':top3')
