"""Sweep grids and recipes: IsoFLOP and token budgets, per-size learning rates, schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.scaling_laws import sweep
from research import config_lib
from research.errors import ConfigError
from research.training import flops as flops_lib
from research.training import optimizers
from tests import helpers
from tests.experiments.scaling_laws import conftest

SIZES = ((32, 1, 2), (48, 2, 3), (64, 2, 4))


def _config(**sweep_fields):
  c = helpers.tiny_config()
  c.name = 'test_sweep'
  fields = dict(sizes=SIZES, budgets=(2e10, 6e10), min_steps=1, ffn_ratio=4.0)
  fields.update(sweep_fields)
  return sweep.with_sweep(c, **fields)


def test_isoflop_grid_spends_each_budget_to_within_one_step():
  c = _config()
  grid = sweep.build_grid(c)
  assert len(grid.runs) == 6 and not grid.skipped
  assert [r.name for r in grid.runs] == ['d32_l1_C2e10', 'd48_l2_C2e10', 'd64_l2_C2e10',
                                         'd32_l1_C6e10', 'd48_l2_C6e10', 'd64_l2_C6e10']
  for r in grid.runs:
    cfg = sweep.run_config(c, r)
    from research import models  # pylint: disable=g-import-not-at-top
    per_step = flops_lib.flops_per_step(models.transformer_config(cfg.model, seq_len=32), cfg)
    assert r.flops_per_step == pytest.approx(per_step)
    assert r.flops == pytest.approx(per_step * r.steps)  # the FLOPs actually spent
    assert abs(r.flops - r.budget) <= per_step / 2  # rounding to whole steps only
    assert r.tokens == r.steps * 16 * 32
  # Smaller models train on more tokens at the same budget.
  first = grid.runs[:3]
  assert first[0].tokens > first[1].tokens > first[2].tokens


def test_6nd_rule_spends_6nd_to_within_one_step():
  grid = sweep.build_grid(_config(flops_rule='6nd'))
  for r in grid.runs:
    assert abs(6 * r.params * r.tokens - r.budget) <= 6 * r.params * r.tokens_per_step / 2
    assert r.flops_6nd == pytest.approx(6 * r.params * r.tokens)


def test_token_budgets_train_every_size_on_each_token_count():
  grid = sweep.build_grid(_config(budgets=(), tokens=(10_000, 40_000)))
  assert len(grid.runs) == 6
  assert {r.tokens for r in grid.runs} == {round(10_000 / 512) * 512, round(40_000 / 512) * 512}
  assert grid.runs[0].name == 'd32_l1_D1e4' and grid.runs[0].budget_kind == 'tokens'
  ratio = sweep.build_grid(_config(budgets=(), tokens_per_param=(5,)))
  for r in ratio.runs:
    assert abs(r.tokens - 5 * r.params) <= r.tokens_per_step / 2


def test_recipe_per_size_lr_warmup_and_a_10x_cosine_decay_at_the_last_step():
  c = _config(lr_ref_width=64, lr_width_power=1.0, warmup_fraction=0.1)
  grid = sweep.build_grid(c)
  by_width = {r.size.d_model: r for r in grid.runs[:3]}
  assert by_width[64].lr == pytest.approx(3e-3)
  assert by_width[32].lr == pytest.approx(6e-3)  # lr x (64 / 32)
  for r in grid.runs:
    cfg = sweep.run_config(c, r)
    assert cfg.train.steps == r.steps and cfg.train.lr == pytest.approx(r.lr)
    assert cfg.train.schedule == 'cosine' and cfg.train.min_lr_ratio == 0.1
    assert cfg.train.warmup_steps == max(1, round(0.1 * r.steps)) == r.warmup_steps
    assert cfg.train.eval_every == r.steps  # one evaluation, at the end
    assert (cfg.model.d_model, cfg.model.num_layers, cfg.model.num_heads) == (
        r.size.d_model, r.size.num_layers, r.size.num_heads)
    assert cfg.model.d_ff == 4 * r.size.d_model
    assert cfg.name == f'test_sweep/{r.name}'
    schedule = optimizers.make_schedule(cfg.train)
    assert float(schedule(r.warmup_steps)) == pytest.approx(r.lr, rel=1e-5)
    assert float(schedule(r.steps)) == pytest.approx(r.lr / 10, rel=1e-5)
  explicit = sweep.build_grid(_config(lrs=(1e-2, 5e-3, 2e-3), warmup_steps=3))
  assert [r.lr for r in explicit.runs[:3]] == [1e-2, 5e-3, 2e-3]
  assert {r.warmup_steps for r in explicit.runs} == {3}


def test_width_depth_rule_and_kv_groups():
  s = sweep.default_sweep()
  s.widths, s.aspect_ratio, s.head_dim = (64, 128, 256), 32.0, 32
  assert sweep.model_sizes(s) == [sweep.Size(64, 2, 2), sweep.Size(128, 4, 4),
                                  sweep.Size(256, 8, 8)]
  s.depths = (1, 3, 5)
  assert [z.num_layers for z in sweep.model_sizes(s)] == [1, 3, 5]
  c = _config(sizes=((64, 1, 4),), kv_group_size=2)
  grid = sweep.build_grid(c)
  assert grid.runs[0].num_kv_heads == 2
  assert sweep.run_config(c, grid.runs[0]).model.num_kv_heads == 2


def test_too_few_or_too_many_steps_are_skipped_with_a_reason():
  grid = sweep.build_grid(_config(min_steps=100, max_steps=300))
  skipped = dict(grid.skipped)
  assert skipped and all('sweep.min_steps=100' in v or 'sweep.max_steps=300' in v
                         for v in skipped.values())
  assert all(100 <= r.steps <= 300 for r in grid.runs)
  assert {r.name for r in grid.runs}.isdisjoint(skipped)


def test_tokens_per_param_window_keeps_sizes_near_each_budgets_optimum():
  full = sweep.build_grid(_config())
  ratios = {r.name: r.tokens / r.params for r in full.runs}
  low, high = sorted(ratios.values())[1], sorted(ratios.values())[-2]
  grid = sweep.build_grid(_config(min_tokens_per_param=low, max_tokens_per_param=high))
  assert len(grid.runs) == len(full.runs) - 2
  reasons = dict(grid.skipped)
  assert len(reasons) == 2 and all('tokens per parameter' in v for v in reasons.values())
  assert all(low <= ratios[r.name] <= high for r in grid.runs)


def test_parameter_counts_separate_embeddings():
  c = _config()
  info = sweep.resolve_size(c, c.sweep, 0, sweep.Size(64, 2, 4))
  vocab, d, d_ff = 128, 64, 256
  per_layer = 4 * d * d + 3 * d * d_ff + 2 * d  # attention, SwiGLU MLP, two RMSNorm scales
  assert info.non_embedding_params == 2 * per_layer + d  # + the final norm
  assert info.params == info.non_embedding_params + vocab * d  # tied embeddings


@pytest.mark.parametrize('fields, message', [
    (dict(budgets=(), tokens=()), 'exactly one'),
    (dict(tokens=(1e4,)), 'exactly one'),
    (dict(budgets=(-1.0,)), 'positive'),
    (dict(lrs=(1e-3,)), 'one learning rate per size'),
    (dict(sizes=((64, 2),)), '(d_model, num_layers, num_heads)'),
    (dict(sizes=(), widths=()), 'give model sizes'),
    (dict(flops_rule='kaplan'), 'flops_rule'),
    (dict(kv_group_size=3), 'kv_group_size'),
    (dict(min_steps=10**9), 'every run of the grid was skipped'),
])
def test_bad_sweeps_are_config_errors(fields, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    sweep.build_grid(_config(**fields))


def test_unknown_sweep_fields_are_errors():
  with pytest.raises(ConfigError, match='unknown field'):
    _config(budget=(1e10,))
  c = _config()
  c.sweep.extra = 1
  with pytest.raises(ConfigError, match='unknown field'):
    sweep.build_grid(c)


def test_shakespeare_config_is_3_budgets_by_5_sizes_on_budget():
  c = config_lib.load_config(str(conftest.REPO / 'configs/experiments/scaling_laws/'
                                 'shakespeare_isoflop.py'))
  grid = sweep.build_grid(c)
  assert len(grid.runs) == 15 and len(grid.skipped) == 6
  assert all('tokens per parameter' in reason for _, reason in grid.skipped)
  budgets = sorted({r.budget for r in grid.runs})
  sizes = sorted({r.params for r in grid.runs})
  assert len(budgets) == 3 and budgets[-1] / budgets[0] >= 9
  assert sizes[-1] / sizes[0] >= 10
  assert [len([r for r in grid.runs if r.budget == b]) for b in budgets] == [5, 5, 5]
  for r in grid.runs:
    assert math.isclose(r.flops, r.budget, rel_tol=0.02)
  # Every IsoFLOP group is within the fit's grouping tolerance (0.02 dex).
  for b in budgets:
    log_c = np.log10([r.flops for r in grid.runs if r.budget == b])
    assert log_c.max() - log_c.min() < 0.02
  tiny = sweep.build_grid(config_lib.load_config(
      str(conftest.REPO / 'configs/experiments/scaling_laws/shakespeare_isoflop.py') + ':tiny'))
  assert len(tiny.runs) == 4 and max(r.steps for r in tiny.runs) <= 60


def test_c4_config_loads_and_generates_its_grid():
  c = config_lib.load_config(str(conftest.REPO / 'configs/experiments/scaling_laws/c4_isoflop.py'))
  assert c.data.source.startswith('prepared:') and c.mesh.preset == 'fsdp'
  grid = sweep.build_grid(c)
  sizes = sorted({r.params for r in grid.runs})
  assert sizes[0] < 50e6 and sizes[-1] > 1e9
  assert sorted({r.budget for r in grid.runs}) == [1e18, 3e18, 1e19, 3e19, 1e20]
  assert len(grid.runs) == 34 and len(grid.skipped) == 6
  assert all('max_steps' in reason for _, reason in grid.skipped)
  for b in (1e18, 3e18, 1e19, 3e19, 1e20):
    assert len([r for r in grid.runs if r.budget == b]) >= 4
  for r in grid.runs:
    assert 200 <= r.steps <= 150_000
    assert math.isclose(r.flops, r.budget, rel_tol=0.01)


def test_a_parameterization_replaces_the_per_size_rules():
  c = _config(parameterization='mup', base_width=48, base_lr=1e-2)  # 48: 2, 3 or 4 heads
  grid = sweep.build_grid(c)
  assert [r.lr for r in grid.runs] == [1e-2] * 6
  for r in grid.runs:
    cfg = sweep.run_config(c, r)
    assert cfg.model.parameterization == 'mup' and cfg.model.base_width == 48
    assert cfg.train.lr == 1e-2 and cfg.model.d_model == r.size.d_model
  default = sweep.run_config(_config(), sweep.build_grid(_config()).runs[0])
  assert default.model.parameterization == 'sp' and default.model.base_width == 0
  # An lr grid: every size at every rate, named by it (the learning-rate transfer study).
  study = sweep.build_grid(_config(parameterization='sp', base_width=48, lr_grid=(1e-3, 1e-2),
                                   budgets=(2e10,)))
  assert [r.name for r in study.runs[:2]] == ['d32_l1_C2e10_lr0.001', 'd32_l1_C2e10_lr0.01']
  assert [r.lr for r in study.runs] == [1e-3, 1e-2] * 3


@pytest.mark.parametrize('fields, message', [
    (dict(parameterization='ntk', base_width=48, base_lr=1e-2), 'ntk'),
    (dict(parameterization='mup', base_lr=1e-2), 'sweep.base_width'),
    (dict(parameterization='mup', base_width=48), 'sweep.base_lr'),
    (dict(parameterization='mup', base_width=48, base_lr=1e-2, lr_width_power=1.0),
     'do not combine'),
    (dict(parameterization='mup', base_width=32, base_lr=1e-2), 'multiple of model.num_heads'),
    (dict(lr_grid=(1e-3, 1e-3)), 'distinct positive'),
])
def test_bad_parameterization_recipes_are_config_errors(fields, message):
  with pytest.raises(ConfigError, match=message):
    sweep.build_grid(_config(**fields))


def test_shakespeare_mup_variant_is_the_same_grid_under_mup():
  path = str(conftest.REPO / 'configs/experiments/scaling_laws/shakespeare_isoflop.py')
  sp, mup = sweep.build_grid(config_lib.load_config(path)), config_lib.load_config(path + ':mup')
  grid = sweep.build_grid(mup)
  assert [r.name for r in grid.runs] == [r.name for r in sp.runs]
  for r in grid.runs:
    cfg = sweep.run_config(mup, r)
    assert (cfg.model.parameterization, cfg.model.base_width, cfg.train.lr) == ('mup', 32, 6e-3)
