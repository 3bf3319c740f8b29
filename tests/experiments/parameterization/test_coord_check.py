"""The coordinate check on a tiny sweep: μP's activations flat in width, SP's growing."""

import csv
import json
import os

import jax
import pytest

from experiments.parameterization import coord_check
from research import config_lib
from research.errors import ConfigError

CONFIG = 'configs/experiments/parameterization/coord_check.py'


def tiny_sweep():
  """The ':tiny' variant cut to one layer and 4 x 16 tokens: widths 32 and 128, two steps."""
  c = config_lib.load_config_file(CONFIG + ':tiny')
  c.model.num_layers = 1
  c.data.seq_len = 16
  c.train.batch_size = 4
  c.coord_check.widths = (32, 128)
  return c


def test_mup_is_flat_in_width_and_sp_grows(tmp_path):
  """The statistic: per layer, the slope of log2 mean |x| against log2 width after the last
  step; their median over layers (robust to one noisy layer at these sizes). Measured over
  seeds 0-2: μP -0.29 to 0.04, SP 0.97 to 1.42."""
  config = tiny_sweep()
  result = coord_check.coord_check(config, str(tmp_path), devices=jax.devices()[:1],
                                   log=lambda _: None)
  last = str(config.train.steps)
  mup, sp = result['slopes']['mup'][last], result['slopes']['sp'][last]
  assert sp['median'] > 0.7, sp
  assert abs(mup['median']) < 0.4, mup
  assert sp['median'] - abs(mup['median']) > 0.5
  layers = set(mup['layers'])
  assert {'embed', 'stack/layer_0', 'stack/layer_0/attn', 'stack/layer_0/mlp',
          'logits'} <= layers
  # At the base width μP is SP: the same numbers at every step.
  at_base = lambda name: [r['mean_abs'] for r in result['rows']
                          if r['parameterization'] == name and r['width'] == 32]
  assert at_base('mup') == at_base('sp')
  with open(tmp_path / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(result['rows']) == 2 * 2 * (config.train.steps + 1) * len(layers)
  assert json.loads((tmp_path / 'results.json').read_text())['slopes'] == result['slopes']
  for name in ('sp', 'mup'):
    assert os.path.getsize(tmp_path / f'coord_check_{name}.png') > 10_000


@pytest.mark.parametrize('field, value, needle', [
    ('data', 'corpus', "coord_check.data='corpus'"),
    ('widths', (64,), 'two or more positive widths'),
])
def test_bad_sections_are_config_errors(field, value, needle):
  config = tiny_sweep()
  config.coord_check[field] = value
  with pytest.raises(ConfigError) as error:
    coord_check.coord_check(config)
  assert needle in str(error.value)


def test_the_default_config_loads_and_validates():
  config = config_lib.load_config(CONFIG)
  assert coord_check.check_section(config).widths == (64, 128, 256, 512, 1024)
