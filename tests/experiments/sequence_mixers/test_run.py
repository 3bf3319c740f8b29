"""The sequence-mixer study: the MQAR generator, the kernel fix, and tiny runs of the command."""

import csv
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.sequence_mixers import cost, mqar, run, variants
from research import config_lib
from research.errors import ConfigError
from research.layers import recurrent
from tests import helpers

CONFIGS = 'configs/experiments/sequence_mixers'
KIND_FILES = {kind: f'{CONFIGS}/{kind}.py' for kind in run.KINDS}


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _command(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.sequence_mixers.run', *args],
                        capture_output=True, text=True, env=helpers.subprocess_env(),
                        check=False, timeout=180)


def test_mqar_answers_are_the_values_of_earlier_keys():
  data = mqar.MQARDataset(kv_pairs=(4, 8, 16), num_keys=32, num_values=16, seed=3)
  tok = data.tokenizer
  windows = data.train_batch(0, 5, 64, 64)
  assert windows.shape == (64, 65)
  np.testing.assert_array_equal(windows, data.train_batch(0, 5, 64, 64))  # pure
  batch = mqar.make_batch(windows, tokenizer=tok)
  for row in range(64):
    w, weights = windows[row], batch['weights'][row]
    n = int(weights.sum())
    assert n in (4, 8, 16)
    keys, values = w[0:2 * n:2], w[1:2 * n:2]
    assert len(set(keys.tolist())) == n and tok.is_key(keys).all()  # distinct keys first
    assert ((values >= tok.first_value) & (values < tok.vocab_size)).all()
    answer = dict(zip(keys.tolist(), values.tolist()))
    queries = np.flatnonzero(weights)
    assert queries.min() >= 2 * n  # after the pairs
    assert sorted(w[queries].tolist()) == sorted(keys.tolist())  # every key queried once
    for t in queries:  # the target is the queried key's value
      assert batch['targets'][row, t] == answer[int(w[t])]
    others = np.setdiff1d(np.arange(2 * n, 64), np.concatenate([queries, queries + 1]))
    assert (w[others] == tok.filler_id).all()
  sets = data.eval_sets()
  assert list(sets) == ['kv4', 'kv8', 'kv16']
  one = mqar.make_batch(sets['kv8'].eval_batch(0, 8, 64), tokenizer=tok)
  assert (one['weights'].sum(axis=1) == 8).all()
  with pytest.raises(ConfigError, match='kv_pairs'):
    mqar.MQARDataset(kv_pairs=(17,), num_keys=32).train_batch(0, 0, 2, 64)  # 4 x 17 > 65


def test_chunked_delta_rule_matches_the_step_form():
  """The matmul inverse that replaced solve_triangular keeps chunked == recurrent."""
  args, _, delta = cost.inputs('gated_deltanet', 40, batch=2, heads=2, head_dim=8,
                               state_dim=8, dtype=jnp.float32)
  seg = jnp.asarray(np.repeat([[1] * 13 + [2] * 27], 2, axis=0))  # a boundary inside a chunk
  o1, s1 = recurrent.chunked(*args, delta=delta, chunk_size=16, segment_ids_BT=seg)
  o2, s2 = recurrent.recurrent(*args, delta=delta, segment_ids_BT=seg)
  np.testing.assert_allclose(o1, o2, atol=1e-5)
  np.testing.assert_allclose(s1, s2, atol=1e-5)
  a = jnp.tril(jax.random.uniform(jax.random.key(0), (2, 16, 16), minval=-1, maxval=1), -1)
  np.testing.assert_allclose(recurrent.unit_lower_inverse(a) @ (a + jnp.eye(16)),
                             jnp.broadcast_to(jnp.eye(16), a.shape), atol=1e-4)


def test_configs_and_variants_validate():
  for kind, path in KIND_FILES.items():
    for spec in (path, path + ':tiny'):
      assert run.section(config_lib.load_config(spec)).kind == kind
  with pytest.raises(ConfigError, match='sequence_mixers.kind'):
    run.section(config_lib.load_config(KIND_FILES['cost'], [('sequence_mixers.kind', 'speed')]))
  with pytest.raises(ConfigError, match='recall.kv_pairs'):
    run.section(config_lib.load_config(KIND_FILES['recall'], [
        ('sequence_mixers.recall.kv_pairs', '(4, 17)')]))  # 4 x 17 > 65 tokens
  with pytest.raises(ConfigError, match="unknown mixer 'rwkv'"):
    variants.parse('rwkv*3,attention')
  assert variants.parse('gated_deltanet*7,attention/8') == variants.Variant(
      'gated_deltanet*7,attention', 8)
  assert variants.overrides(variants.parse('sliding@256'))['model.attention.window'] == 256


def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path):
  result = _command(f'--config={KIND_FILES["quality"]}', f'--workdir={tmp_path}',
                    "--config.sequence_mixers.variants=('attention', 'mamba3')")
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith('error')]
  assert len(errors) == 1 and "unknown mixer 'mamba3'" in errors[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


def test_cost_command_through_the_cli_and_decode(tmp_path):
  result = _command(f'--config={KIND_FILES["cost"]}:tiny', f'--workdir={tmp_path / "cost"}')
  assert result.returncode == 0, result.stderr[-2000:]
  by = {(r['case'], int(r['length'])): r for r in _rows(tmp_path / 'cost' / 'results.csv')}
  assert float(by[('gated_deltanet/chunked C=64', 512)]['time_s']) > 0
  assert 'max_dense_bytes' in by[('full/xla', 512)]['note']
  for name in ('results.md', 'time_vs_length.png', 'memory_vs_length.png'):
    assert os.path.getsize(tmp_path / 'cost' / name) > 0

  rows = run.run_decode(config_lib.load_config(KIND_FILES['decode'] + ':tiny'),
                        str(tmp_path / 'decode'), log=lambda _: None)
  cache = {(r['variant'], r['context']): r['cache_bytes'] for r in rows}
  # A recurrent state and a rolling window stay the same size; they do not grow with context.
  assert cache[('gated_deltanet', 48)] == cache[('gated_deltanet', 96)]
  assert cache[('sliding@16', 48)] == cache[('sliding@16', 96)]
  assert len(_rows(tmp_path / 'decode' / 'results.csv')) == 4
  assert os.path.getsize(tmp_path / 'decode' / 'decode.png') > 0


@pytest.mark.slow
def test_quality_and_recall_train_match_parameters_and_resume(tmp_path):
  config = config_lib.load_config(KIND_FILES['quality'] + ':tiny', [('data.vocab_size', '128')])
  dataset = helpers.PatternDataset(vocab_size=128, num_tokens=20_000)
  rows = run.run_quality(config, str(tmp_path / 'q'), dataset=dataset, log=lambda _: None)
  assert [r['variant'] for r in rows] == ['attention', 'gated_deltanet*1,attention']
  assert abs(rows[1]['params_vs_first']) < 0.01  # d_ff matched the parameters
  logs = []
  again = run.run_quality(config, str(tmp_path / 'q'), dataset=dataset, log=logs.append)
  assert again == rows and not any('steps of' in line for line in logs)  # read, not retrained

  rows = run.run_recall(config_lib.load_config(KIND_FILES['recall'] + ':tiny'),
                        str(tmp_path / 'r'), log=lambda _: None)
  assert [(r['variant'], r['kv_pairs']) for r in rows] == [
      ('gated_deltanet*1,attention', 2), ('gated_deltanet*1,attention', 4)]
  assert rows[0]['state_floats_per_layer'] == 2 * 8 * 8  # 2 heads of 8 x 8
  assert all(0 <= r['accuracy'] <= 1 for r in rows)
  for name in ('results.csv', 'results.md', 'recall.png'):
    assert os.path.getsize(tmp_path / 'r' / name) > 0
