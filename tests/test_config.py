"""Config loading, overrides and validation: bad input fails before compiling, in one line."""

import os
import subprocess
import sys

import pytest

from research import config_lib
from research.errors import ConfigError
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, 'configs/decoder/shakespeare.py')


def test_overrides_are_typed():
  c = config_lib.load_config(SHAKESPEARE, [('train.steps', '7'), ('train.lr', '1e-3'),
                                           ('model.tie_embeddings', 'false'),
                                           ('model.position', 'learned')])
  assert c.train.steps == 7 and isinstance(c.train.steps, int)
  assert c.train.lr == 1e-3 and c.model.tie_embeddings is False
  assert c.model.vocab_size == c.data.vocab_size  # derived field filled


def test_variant_argument():
  assert config_lib.load_config(SHAKESPEARE + ':tiny').model.d_model == 64


@pytest.mark.parametrize('key,value,needle', [
    ('train.stepz', '5', "unknown key 'stepz'"),
    ('trian.steps', '5', "unknown key 'trian'"),
    ('train.steps', 'many', 'expected a int'),
    ('model.num_heads', '5', 'does not divide model.d_model=256'),
    ('model.num_kv_heads', '3', 'must divide model.num_heads=4'),
    ('model.activation', 'tanh', "choose one of ['geglu', 'gelu', 'gelu_exact', 'relu', 'swiglu']"),
    ('train.micro_batches', '5', 'must divide train.batch_size=16'),
])
def test_bad_overrides_name_field_value_and_fix(key, value, needle):
  with pytest.raises(ConfigError) as e:
    config_lib.load_config(SHAKESPEARE, [(key, value)])
  assert needle in str(e.value)


def test_mesh_must_match_devices():
  from research.parallel import mesh as mesh_lib
  c = config_lib.load_config(SHAKESPEARE, [('mesh.data', '4'), ('mesh.tensor', '4')])
  with pytest.raises(ConfigError, match='mesh=.*data=4 x tensor=4.*needs 16 devices, found 8'):
    mesh_lib.mesh_shape(c.mesh, 8)
  assert mesh_lib.mesh_shape(config_lib.load_config(SHAKESPEARE, [('mesh.tensor', '2')]).mesh,
                             8) == (4, 1, 1, 1, 1, 2)


def _cli(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'research.train', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=helpers.subprocess_env(**(env or {})))


@pytest.mark.parametrize('args,needle', [
    (['--config.train.stepz=5'], "config.train.stepz='5': unknown key 'stepz'"),
    (['--config.model.num_heads=5'], 'model.num_heads=5: does not divide model.d_model=256'),
    (['--config.mesh.data=3'], 'needs 3 devices, found 1'),
    (['--config.data.source=text:/nonexistent/*.txt'], 'data.source'),
])
def test_cli_errors_are_one_line_without_traceback(tmp_path, args, needle):
  result = _cli(f'--config={SHAKESPEARE}', f'--workdir={tmp_path}', *args,
                env={'LMFORGE_CACHE': str(tmp_path / 'cache')})
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  error_lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(error_lines) == 1 and needle in error_lines[0], result.stderr


def test_cli_empty_text_source(tmp_path):
  (tmp_path / 'a.txt').write_text('')
  result = _cli(f'--config={SHAKESPEARE}', f'--workdir={tmp_path / "w"}',
                f'--config.data.source=text:{tmp_path}/*.txt',
                env={'LMFORGE_CACHE': str(tmp_path / 'cache')})
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'data.source' in result.stderr
