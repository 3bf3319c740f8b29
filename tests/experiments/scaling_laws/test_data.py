"""Reading results CSVs: both layouts, derived tokens, dropped points and user errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from experiments.scaling_laws import data as data_lib
from research.errors import UserError


def _write(path, header, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def test_lmforge_layout_reads_columns_and_ignores_others(tmp_path):
  path = _write(tmp_path / 'results.csv',
                ['name', 'params', 'non_embedding_params', 'tokens', 'flops', 'loss'],
                [['a', 1e6, 8e5, 2e7, 1.3e14, 4.0], ['b', 2e6, 1.6e6, 3e7, 4e14, 3.5],
                 ['c', 4e6, 3.2e6, 5e7, 1.3e15, 3.1]])
  d = data_lib.read_csv(path)
  assert d.format == data_lib.LMFORGE and len(d) == 3
  np.testing.assert_array_equal(d.N, [1e6, 2e6, 4e6])
  np.testing.assert_array_equal(d.D, [2e7, 3e7, 5e7])
  np.testing.assert_array_equal(d.C, [1.3e14, 4e14, 1.3e15])
  np.testing.assert_array_equal(d.L, [4.0, 3.5, 3.1])
  kaplan_counts = data_lib.read_csv(path, params_column='non_embedding_params')
  np.testing.assert_array_equal(kaplan_counts.N, [8e5, 1.6e6, 3.2e6])


def test_lmforge_without_flops_uses_six_n_d_and_counts_unfinished_runs(tmp_path):
  path = _write(tmp_path / 'results.csv', ['params', 'tokens', 'loss'],
                [[1e6, 2e7, 4.0], [2e6, 3e7, ''], [4e6, 5e7, 'nan'], [8e6, 1e8, 3.0],
                 [1.6e7, 2e8, 2.9]])
  d = data_lib.read_csv(path)
  assert len(d) == 3 and d.skipped_rows == 2
  np.testing.assert_allclose(d.C, 6 * d.N * d.D)
  assert '2 rows without a finite loss skipped' in d.describe()


def test_epoch_layout_derives_tokens_and_drops_the_five_highest(epoch_csv):
  full = data_lib.read_csv(epoch_csv)
  assert full.format == data_lib.EPOCH and len(full) == 245
  np.testing.assert_allclose(full.D, full.C / (6 * full.N), rtol=1e-12)
  d = data_lib.read_csv(epoch_csv, drop_highest=5)
  assert len(d) == 240 and d.dropped_highest == 5
  dropped = np.sort(full.L)[-5:]
  assert d.L.max() <= dropped.min()
  np.testing.assert_allclose(np.sort(d.L), np.sort(full.L)[:240])


def test_missing_column_names_the_column_and_the_layouts(tmp_path):
  path = _write(tmp_path / 'x.csv', ['params', 'tokens', 'lost'], [[1, 2, 3]])
  with pytest.raises(UserError) as e:
    data_lib.read_csv(path, label='--data=x.csv')
  message = str(e.value)
  assert message.startswith("--data=x.csv has no column 'loss'")
  assert "'Model Size','Training FLOP','loss'" in message and '\n' not in message


@pytest.mark.parametrize('value, expected', [
    ('abc', "line 3: column 'tokens' holds 'abc', not a number"),
    ('-5', "line 3: column 'tokens' holds '-5': expected a positive"),
])
def test_bad_values_name_line_and_column(tmp_path, value, expected):
  path = _write(tmp_path / 'x.csv', ['params', 'tokens', 'loss'],
                [[1e6, 2e7, 4.0], [2e6, value, 3.0], [4e6, 5e7, 3.1]])
  with pytest.raises(UserError, match=expected):
    data_lib.read_csv(path)


@pytest.mark.parametrize('content, expected', [
    ('', 'is empty'),
    ('params,tokens,loss\n1,2,3\n', 'a fit needs at least 3'),
])
def test_empty_and_tiny_files(tmp_path, content, expected):
  path = tmp_path / 'x.csv'
  path.write_text(content)
  with pytest.raises(UserError, match=expected):
    data_lib.read_csv(path)


def test_missing_and_binary_files(tmp_path):
  with pytest.raises(UserError, match='no such file'):
    data_lib.read_csv(tmp_path / 'nope.csv')
  binary = tmp_path / 'x.csv'
  binary.write_bytes(b'\xff\xfe\x00params')
  with pytest.raises(UserError, match='not UTF-8'):
    data_lib.read_csv(binary)


def test_drop_highest_rejects_dropping_almost_everything():
  d = data_lib.from_arrays([1e6, 2e6, 4e6, 8e6], [1e8] * 4, [4.0, 3.0, 2.5, 2.0])
  assert data_lib.drop_highest_loss(d, 1).L.max() == 3.0
  with pytest.raises(UserError, match='fewer than 3'):
    data_lib.drop_highest_loss(d, 2)
