"""The sparse-attention experiment: configs, the retrieval probe, and tiny runs of the command."""

import csv
import math
import os

import numpy as np
import pytest

from experiments.sparse_attention import cost, quality, retrieval, run
from research import config_lib
from research.errors import ConfigError
from tests import helpers

COST = 'configs/experiments/sparse_attention/cost.py'
QUALITY = 'configs/experiments/sparse_attention/quality.py'


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_configs_load_and_validate():
  for spec in (COST, COST + ':gpu', COST + ':tiny', QUALITY, QUALITY + ':tiny'):
    config = config_lib.load_config(spec)
    run.section(config)
  with pytest.raises(ConfigError, match='sparse_attention.kind'):
    run.section(config_lib.load_config(COST, [('sparse_attention.kind', 'speed')]))
  with pytest.raises(ConfigError, match='PATTERN:IMPLEMENTATION'):
    run.section(config_lib.load_config(COST, [('sparse_attention.cases', 'sliding:fast')]))
  with pytest.raises(ConfigError, match='PATTERN@WINDOW'):
    quality.parse_variant('sliding')


def test_retrieval_probe_puts_the_value_far_back():
  probe = retrieval.RetrievalDataset(num_values=16, num_filler=32, value_repeats=8)
  windows = probe.train_batch(0, 3, 64, 128)
  assert windows.shape == (64, 129)
  tok = probe.tokenizer
  assert np.all(windows[:, 0] == tok.key_id) and np.all(windows[:, -2] == tok.query_id)
  np.testing.assert_array_equal(windows[:, 1:9], np.repeat(windows[:, -1:], 8, axis=1))
  assert np.all((windows[:, -1] >= tok.first_value) & (windows[:, -1] < tok.first_filler))
  # Elsewhere only filler: the nearest copy of the value is 119 positions before the query.
  assert np.all(windows[:, 9:-2] >= tok.first_filler) and probe.distance(128) == 119
  np.testing.assert_array_equal(windows, probe.train_batch(0, 3, 64, 128))  # pure
  assert not np.array_equal(probe.eval_batch(0, 64, 128), windows)
  batch = retrieval.make_batch(windows, tokenizer=tok)  # scored at the answer alone
  assert batch['weights'].sum() == 64 and np.all(batch['weights'][:, -1] == 1)
  np.testing.assert_array_equal(batch['targets'][:, -1], windows[:, -1])
  assert quality.receptive_field(quality.parse_variant('sliding*3,full@8'), 4) == math.inf
  assert quality.receptive_field(quality.parse_variant('sliding@8'), 4) == 28


def test_cost_command_writes_tables_and_plots(tmp_path):
  config = config_lib.load_config(COST + ':tiny', [
      ('sparse_attention.cases', 'full:xla,sliding:xla,sliding:blockwise,sliding:cudnn'),
      ('sparse_attention.max_dense_bytes', '2e6')])
  rows = run.run_cost(config, str(tmp_path), log=lambda _: None)
  by = {(r['case'], r['length']): r for r in rows}
  assert by[('sliding/blockwise', 512)]['time_s'] > 0
  assert by[('full/xla', 256)]['memory_bytes'] > 0
  assert 'max_dense_bytes' in by[('full/xla', 512)]['note']  # 3 x 2 x 512^2 x 4 > 2 MB
  assert by[('sliding/cudnn', 256)]['note'] == 'cuDNN needs a GPU'
  for name in ('results.csv', 'results.md', 'time_vs_length.png', 'memory_vs_length.png'):
    assert os.path.getsize(tmp_path / name) > 0
  assert len(_rows(tmp_path / 'results.csv')) == 8
  text = (tmp_path / 'results.md').read_text()
  assert '## Targets' in text and 'sliding/blockwise: time growth 256 -> 512' in text


def test_plots_say_where_a_case_stops_and_show_the_spread_over_seeds(tmp_path):
  from experiments.sparse_attention import plot  # pylint: disable=g-import-not-at-top
  note = ('skipped: its T x T scores need about 24.0 GiB, more than '
          'sparse_attention.max_dense_bytes=7.5 GiB')
  rows = [{'case': 'full/xla', 'length': t, 'time_s': 0.1 * t} for t in (1024, 2048)]
  rows += [{'case': 'full/xla', 'length': 4096, 'time_s': None, 'note': note},
           {'case': 'sliding/blockwise', 'length': 4096, 'time_s': 0.2}]
  path = plot.log_log(rows, 'time_s', 's', 'title', str(tmp_path / 't.png'))
  assert os.path.getsize(path) > 0
  assert plot._stop_reason(note) == 'its T x T scores need\n  24.0 GiB > the 7.5 GiB limit'  # pylint: disable=protected-access

  lm = [{'variant': v, 'seed': s, 'eval_loss': loss} for v, s, loss in (
      ('full', 0, 3.0), ('full', 1, 3.2), ('sliding@16', 0, 3.1), ('sliding@16', 1, 3.1))]
  assert plot.by_variant(lm) == {'full': [3.0, 3.2], 'sliding@16': [3.1, 3.1]}
  mean, sd = plot.mean_std([3.0, 3.2])
  assert mean == pytest.approx(3.1) and sd == pytest.approx(0.1414, abs=1e-4)
  retrieval = [{'variant': 'full', 'retrieval_accuracy': 1.0, 'receptive_field': math.inf,
                'chance': 0.0625}]
  assert os.path.getsize(plot.quality_plot(lm, retrieval, str(tmp_path), 'sub')) > 0


def test_cost_cases_follow_the_backend():
  config = config_lib.load_config(COST)
  names = [c.name for c in run.cost_cases(config.sparse_attention, 'cpu')]
  assert 'sliding/xla (mask-only control)' in names and 'sliding/cudnn' not in names
  gpu = [c.name for c in run.cost_cases(config.sparse_attention, 'gpu')]
  assert gpu[-2:] == ['full/cudnn', 'sliding/cudnn']
  assert cost.unavailable(cost.Case('sliding', 'splash'), cost.pattern_of(
      cost.Case('sliding', 'splash'), config.model.attention), causal=True, backend='cpu')


@pytest.mark.slow
def test_quality_command_trains_evaluates_and_resumes(tmp_path):
  config = config_lib.load_config(QUALITY + ':tiny', [('data.vocab_size', '128')])
  dataset = helpers.PatternDataset(vocab_size=128, num_tokens=30_000)
  logs = []
  rows = run.run_quality(config, str(tmp_path), dataset=dataset, log=logs.append)
  assert [(r['task'], r['variant']) for r in rows] == [
      ('shakespeare', 'full'), ('shakespeare', 'sliding@8'), ('retrieval', 'sliding@4'),
      ('retrieval', 'sliding*1,full@4')]
  assert all(math.isfinite(r['eval_loss']) for r in rows)
  assert all(0 <= r['retrieval_accuracy'] <= 1 for r in rows[2:])
  assert rows[1]['flops_per_token'] < rows[0]['flops_per_token']  # the window's FLOPs
  for name in ('results.csv', 'results.md', 'quality.png'):
    assert os.path.getsize(tmp_path / name) > 0
  # A second invocation reads the finished runs instead of training them again.
  logs.clear()
  again = run.run_quality(config, str(tmp_path), dataset=dataset, log=logs.append)
  assert again == rows and not any('steps' in line for line in logs)


def test_a_run_stopped_by_a_signal_is_not_recorded_as_finished():
  """The trainer returns after saving on SIGTERM; the study must stop there (and rerun to
  resume), not score the partly trained model."""
  from research.errors import UserError  # pylint: disable=g-import-not-at-top
  run.check_finished({'step': 10, 'eval/loss': 2.0}, 10, '/w')  # finished: no error
  with pytest.raises(UserError, match=r'/w stopped at step 4 of 10 \(SIGTERM\): rerun'):
    run.check_finished({'step': 4, 'preempted_at': 4, 'preempted_by': 'SIGTERM'}, 10, '/w')
