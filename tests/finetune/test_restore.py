"""init_from: restore rules, clear errors on mismatched or missing parameters, a fresh
optimizer, and the architecture inherited from the source."""

import types

import jax
import numpy as np
import pytest

from research.errors import ConfigError
from research.training import restore, trainer
from tests.finetune.conftest import ONE_DEVICE, sft_config, source_config


def _tree():
  return {'embed': {'embedding': np.zeros((8, 4))},
          'stack': {'layer_0': {'attn': {'query': np.zeros((4, 2, 2)),
                                         'query_lora_a': np.zeros((4, 1))}}}}


def test_rules_load_init_and_peft_params():
  target = _tree()
  source = jax.tree.map(lambda x: x + 1, _tree())
  del source['stack']['layer_0']['attn']['query_lora_a']  # a base model has no LoRA
  params, report = restore.select(target, source, (('embed/.*', 'init'), ('.*', 'load')))
  assert (params['embed']['embedding'] == 0).all()  # 'init': kept fresh
  assert (params['stack']['layer_0']['attn']['query'] == 1).all()  # loaded
  assert (params['stack']['layer_0']['attn']['query_lora_a'] == 0).all()  # PEFT: always init
  assert report == {'loaded': 1, 'initialised': 2, 'unused_source': ['embed/embedding']}


def test_mismatched_shape_names_path_and_both_shapes():
  source = _tree()
  source['stack']['layer_0']['attn']['query'] = np.zeros((4, 3, 2))
  with pytest.raises(ConfigError, match=r"'stack/layer_0/attn/query' has shape \(4, 3, 2\) in "
                     r'the source but \(4, 2, 2\) in this model'):
    restore.select(_tree(), source, (('.*', 'load'),))


def test_missing_source_parameter_and_unmatched_rules():
  source = _tree()
  del source['embed']
  with pytest.raises(ConfigError, match="'embed/embedding' is to be loaded but the source has"):
    restore.select(_tree(), source, (('.*', 'load'),))
  with pytest.raises(ConfigError, match='no rule matches parameter'):
    restore.select(_tree(), _tree(), (('stack/.*', 'load'),))
  with pytest.raises(ConfigError, match=r'finetune.restore\[0\]'):
    restore.check_rules((('.*', 'copy'),))


def test_init_from_loads_the_source_with_a_fresh_optimizer(decoder_source, copy_data):
  source, source_params = decoder_source
  config = sft_config(source, *copy_data, **{'model.d_model': 48, 'seed': 5})
  assert config.model.d_model == 32  # inherited from the source's config.json
  assert not config.finetune.inherit_model  # so the saved config stands alone
  run = trainer.build_run(config, devices=ONE_DEVICE())
  fresh = trainer.init_state(run, config.seed)
  state, report = restore.init_from(run, fresh, source)
  assert report['loaded'] == len(jax.tree.leaves(source_params)) and not report['unused_source']
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), source_params)
  mu = state.opt_state[1][0].mu  # clip, then adamw's scale_by_adam state
  assert all(float(abs(x).max()) == 0 for x in jax.tree.leaves(mu))
  # Without inheritance, a different architecture fails by name.
  bad = sft_config(source, *copy_data, **{'finetune.inherit_model': False, 'model.d_ff': 96})
  run = trainer.build_run(bad, devices=ONE_DEVICE())
  with pytest.raises(ConfigError, match=r"'stack/layer_0/mlp/b_in' has shape \(256,\) in the "
                     r'source but \(96,\)'):
    restore.init_from(run, trainer.init_state(run, 0), source)


def test_pretraining_from_a_source_tokenizes_with_its_tokenizer(decoder_source, tmp_path,
                                                                monkeypatch):
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  source, _ = decoder_source
  seen = []
  monkeypatch.setattr(pipeline, 'load_dataset', lambda data, workdir: seen.append(data.tokenizer))
  config = source_config()
  config.init_from = source
  run = types.SimpleNamespace(config=config, objective=types.SimpleNamespace())
  trainer.load_dataset(run, str(tmp_path))
  config.data.tokenizer = '/given/tokenizer.model'  # a tokenizer given explicitly stays
  trainer.load_dataset(run, str(tmp_path))
  assert seen == [source, '/given/tokenizer.model']


def test_init_from_into_an_offloaded_run_on_one_device(decoder_source, copy_data, tmp_path):
  # One device: where jax.device_put cannot change an array's memory kind.
  source, source_params = decoder_source
  config = sft_config(source, *copy_data, **{'train.offload': 'optimizer_and_params',
                                             'train.steps': 2})
  run = trainer.build_run(config, devices=ONE_DEVICE())
  state, _ = restore.init_from(run, trainer.init_state(run, 0), source)
  for field in ('params', 'opt_state'):
    kinds = {x.sharding.memory_kind for x in jax.tree.leaves(getattr(state, field))}
    assert kinds == {'pinned_host'}, field
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), source_params)
  assert trainer.train(config, str(tmp_path), devices=ONE_DEVICE())['step'] == 2
