"""The study runner end to end on a tiny config: trains, skips finished variants, writes the table
and the figures; an aux-free variant's workdir evaluates with its trained selection bias."""

from __future__ import annotations

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.moe_routing import plot as plot_lib
from experiments.moe_routing import run as run_lib
from experiments.moe_routing import variants
import research
from research.evaluation import validation
from research.training import trainer
from tests import helpers


def study_config(names='dense,aux_free'):
  c = helpers.tiny_config(**{
      'model.d_model': 32, 'model.d_ff': 64, 'model.dtype': 'float32', 'train.steps': 4,
      'train.log_every': 2, 'train.eval_every': 2, 'train.checkpoint_every': 2,
      'train.async_checkpoints': False})
  c.name = 'test_moe_routing'
  # A large bias step, so that evaluating without the trained bias would route differently.
  return variants.with_moe_routing(c, variants=names, num_experts=4, bias_update_rate=0.05)


class _Steps:
  def __init__(self):
    self.steps = []

  def __call__(self, step, state, metrics):
    del state, metrics
    self.steps.append(step)


@pytest.mark.slow
def test_study_writes_table_and_figures_and_skips_finished_variants(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  dataset = helpers.PatternDataset()
  lines, counter = [], _Steps()
  rows = run_lib.run_study(study_config(), workdir, dataset=dataset, hooks=[counter],
                           log=lines.append)
  assert [r['variant'] for r in rows] == ['dense', 'aux_free']
  assert counter.steps == [1, 2, 3, 4] * 2
  assert any(l.startswith('[2/2] aux_free: step 4/4, loss') and 'study ETA' in l for l in lines)

  with open(os.path.join(workdir, 'results.csv'), newline='') as f:
    table = list(csv.DictReader(f))
  assert [r['variant'] for r in table] == ['dense', 'aux_free']
  dense, aux_free = table
  assert float(dense['flops_per_token']) + 6 * int(aux_free['router_params']) == pytest.approx(
      float(aux_free['flops_per_token']))
  for r in table:
    assert np.isfinite(float(r['final_val_loss'])) and float(r['wall_time_s']) > 0
    assert float(r['tokens_per_sec']) > 0
  assert dense['dropped_fraction'] == '' and 0 <= float(aux_free['dropped_fraction']) <= 1
  assert float(aux_free['load_cv']) >= 0
  md = open(os.path.join(workdir, 'results.md')).read()
  assert md.startswith('| variant | router |') and '| aux_free | top_k, aux-free | 2 | 4 |' in md
  timeline = run_lib.read_jsonl(os.path.join(workdir, 'aux_free', 'timeline.jsonl'))
  assert [e['step'] for e in timeline] == [2, 4]
  assert timeline[1]['wall_s'] > timeline[0]['wall_s'] > 0
  for name in plot_lib.FILES:
    path = os.path.join(workdir, name)
    assert os.path.getsize(path) > 10_000, name
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  layers, steps, shares = plot_lib.expert_shares(
      run_lib.read_jsonl(os.path.join(workdir, 'aux_free', 'metrics.jsonl')))
  assert layers == ['stack/layer_0', 'stack/layer_1'] and list(steps) == [2, 4]
  np.testing.assert_allclose(shares.sum(-1), 1.0, rtol=1e-5)

  # A rerun trains nothing and rewrites the same table.
  again = run_lib.run_study(study_config(), workdir, dataset=dataset, hooks=[counter],
                            log=lines.append, plot=False)
  assert counter.steps == [1, 2, 3, 4] * 2
  assert [r['final_val_loss'] for r in again] == [r['final_val_loss'] for r in rows]
  assert '2 of 2 variants already finished; 0 to train' in lines

  # research.evaluate restores the aux-free selection bias with the parameters: its loss is the
  # trainer's final evaluation, and evaluating without the bias (0) gives another loss.
  monkeypatch.setattr('research.data.pipeline.load_dataset', lambda *a, **k: dataset)
  directory = os.path.join(workdir, 'aux_free')
  result = validation.validation(directory, batches=2)
  assert result['step'] == 4
  assert result['loss'] == pytest.approx(rows[1]['final_val_loss'], rel=1e-5)
  lm = research.load(directory)
  bias = lm.model_state['moe_state']['stack']['layer_0']['moe']['selection_bias']
  assert np.abs(np.asarray(bias)).max() > 0.05
  zero_bias = jax.tree.map(jnp.zeros_like, lm.model_state)  # what params alone route with
  unbiased = trainer.evaluate(lm.run, lm.params, dataset, num_batches=2,
                              model_state=zero_bias)['eval/loss']
  assert abs(unbiased - result['loss']) > 1e-4


def test_study_rejects_a_config_without_its_section(tmp_path):
  from research.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError):
    run_lib.run_study(helpers.tiny_config(), str(tmp_path), dataset=helpers.PatternDataset())
