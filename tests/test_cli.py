"""Discoverable flags and no silent no-ops: --help documents every config field, an unknown
flag names what was meant, options that do not apply to a run exit 2 with one line."""

import os
import subprocess
import sys

import pytest

from research import cli, config_docs, config_lib, sample
from research.errors import UserError
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(*argv, cwd=REPO):
  return subprocess.run([sys.executable, '-m', *argv], cwd=cwd, env=helpers.subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def test_every_config_field_is_listed_with_its_documentation():
  fields = {f.path: f for f in config_docs.base_fields()}
  leaves = config_docs.all_paths(config_lib.base_config())
  assert sorted(p for p, f in fields.items() if not f.is_section) == sorted(leaves)
  assert fields['train.steps'].default == 1000 and 'optimizer steps' in fields['train.steps'].doc
  assert 'whole split' in fields['train.eval_batches'].doc  # a comment block above the field
  assert fields['model.attention'].is_section and 'patterns' in fields['model.attention'].doc
  text = config_docs.config_help(config_lib.load_config_file(
      'configs/decoder/shakespeare.py:tiny'))
  assert '--config.train.steps=20' in text  # the file's value, not the base default


def test_suggestions():
  assert config_docs.suggest('steps', ['workdir']) == ['--config.train.steps']
  assert config_docs.suggest('beam', ['beam_size', 'workdir'])[0] == '--beam_size'
  assert config_docs.suggest('wrkdir', ['workdir']) == ['--workdir']


def test_train_help_and_unknown_flag():
  result = _command('research.train', '--help')
  assert result.returncode == 0, result.stderr
  for expected in ('--workdir', '--config.train.steps=1000', 'optimizer steps in total',
                   '--config.model.attention.pattern', 'data:', 'model.moe:'):
    assert expected in result.stdout, expected
  result = _command('research.train', '--config=configs/decoder/shakespeare.py', '--steps=60',
                    '--workdir=/nonexistent')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      'error: unknown flag --steps; did you mean --config.train.steps=60? (python -m '
      'research.train --help lists the flags and config fields)']


@pytest.fixture(name='decoder_workdir')
def _decoder_workdir(tmp_path):
  """A workdir with a decoder's config.json: enough for the option checks, which run before
  anything is restored."""
  config = config_lib.base_config()
  config_lib.save_config(config, str(tmp_path / 'config.json'))
  os.makedirs(tmp_path / 'checkpoints')
  return tmp_path


def test_sample_rejects_options_its_family_ignores(decoder_workdir):
  result = _command('research.sample', f'--workdir={decoder_workdir}', '--beam_size=4')
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
  assert '--beam_size: not used by this decoder run' in result.stderr
  result = _command('research.sample', f'--workdir={decoder_workdir}', '--beam=4')
  assert result.returncode == 2 and 'did you mean --beam_size=4?' in result.stderr


@pytest.mark.parametrize('family, objective, prompt, given, beam, error', [
    ('decoder', 'causal_lm', 'ROMEO:', {'length_penalty'}, 1, '--length_penalty: not used'),
    ('decoder', 'causal_lm', 'To be [MASK]', set(), 1, 'does not fill masks'),
    ('decoder', 'prefix_lm', 'ROMEO:', {'beam_size'}, 4, '--beam_size: not used'),
    ('encoder', 'mlm', 'To be [MASK]', {'temperature', 'seed'}, 1, '--seed, --temperature'),
    ('encoder_decoder', 'span_corruption', 'To be [MASK]', set(), 1, '<extra_id_0>'),
    ('encoder_decoder', 'span_corruption', 'Good night', set(), 1, 'no sentinel'),
    ('encoder_decoder', 'span_corruption', 'to <extra_id_0>', {'temperature'}, 4,
     '--temperature: not used'),
    ('encoder_decoder', 'span_corruption', 'to <extra_id_0>', {'length_penalty'}, 1,
     '--length_penalty'),
])
def test_inapplicable_options_are_errors(family, objective, prompt, given, beam, error):
  config = config_lib.base_config()
  config.model.family, config.objective.name = family, objective
  with pytest.raises(UserError, match=error.replace('[', r'\[')):
    sample.check_applicable(config, prompt, given, beam_size=beam)


@pytest.mark.parametrize('family, objective, prompt, given, beam', [
    ('decoder', 'causal_lm', 'ROMEO:', {'temperature', 'top_p', 'seed', 'max_new_tokens'}, 1),
    ('encoder', 'mlm', 'To be [MASK]', {'top_k'}, 1),
    ('encoder_decoder', 'span_corruption', 'to <extra_id_0>', {'beam_size', 'length_penalty',
                                                                'max_new_tokens'}, 4),
    ('encoder_decoder', 'sft', 'Which play?', {'temperature'}, 1),
])
def test_applicable_options_pass(family, objective, prompt, given, beam):
  config = config_lib.base_config()
  config.model.family, config.objective.name = family, objective
  sample.check_applicable(config, prompt, given, beam_size=beam)


def test_quiet_backends_only_without_a_tpu(monkeypatch):
  from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
  from research import xla_flags  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(xla_flags, '_find_spec', lambda name: object() if name == 'libtpu' else None)
  monkeypatch.setattr(hardware_utils, 'num_available_tpu_chips_and_device_id', lambda: (0, None))
  environ = {}
  assert cli.quiet_backends(environ) == 'cpu' and environ == {'JAX_PLATFORMS': 'cpu'}
  assert cli.quiet_backends({'JAX_PLATFORMS': 'tpu'}) is None  # the user's choice stands
  monkeypatch.setattr(hardware_utils, 'num_available_tpu_chips_and_device_id', lambda: (4, 5))
  assert cli.quiet_backends({}) is None  # a TPU VM keeps its TPU


def test_span_corruption_targets_show_the_gaps_on_one_line():
  prompt = 'But soft, what light through <extra_id_0> window breaks?'
  assert sample.gap_fillers('<extra_id_0> yonder<extra_id_1> more', prompt) == '<extra_id_0> yonder'
  assert sample.gap_fillers('<extra_id_0>.\n\n', prompt) == r'<extra_id_0>.\n\n'
