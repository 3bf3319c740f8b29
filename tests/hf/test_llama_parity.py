"""Random HF Llama (tied and untied, GQA) and Mistral (a sliding window shorter than the test
sequence) models, imported, give transformers' float32 logits and its greedy generations; a
sharded (index + shards) or torch checkpoint imports as the single file does, and the scanned
layout on a sharded mesh equals the unscanned one."""

import jax
import numpy as np
import pytest

from research import convert, models
from research.inference import decoding
from research.models import hf
from research.models.hf import checkpoint as checkpoint_lib
from research.models.hf import streaming
from tests.hf import parity

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

pytestmark = pytest.mark.hf

VOCAB = 128
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             rms_norm_eps=1e-5, rope_theta=500.0, bos_token_id=None, eos_token_id=None)
VARIANTS = {
    'llama_tied': (transformers.LlamaConfig, dict(tie_word_embeddings=True)),
    'llama_untied': (transformers.LlamaConfig, dict(tie_word_embeddings=False, head_dim=24)),
    'mistral': (transformers.MistralConfig, dict(tie_word_embeddings=False, sliding_window=6)),
}
TOKENS_BT = np.random.default_rng(0).integers(0, VOCAB, (2, 20))  # 20 > the window of 6
PROMPT_BP = TOKENS_BT[:, :8]
NEW_TOKENS = 32


def _reference(variant):
  config_cls, extra = VARIANTS[variant]
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config_cls(**SHAPE, **extra)).eval()
  with torch.no_grad():  # large weights spread the logits: greedy choices are never near-ties
    for name, p in model.named_parameters():
      p.copy_(1 + 0.1 * torch.randn_like(p) if 'norm' in name else 0.15 * torch.randn_like(p))
  return model


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """variant -> (HF model, its save_pretrained directory)."""
  return parity.save_references(VARIANTS, _reference, tmp_path_factory)


@pytest.fixture(scope='module')
def imported(saved):
  """variant -> (config, host params) of the import."""
  return parity.import_all(saved, dtype='float32')


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_logits_and_greedy_generation_match(variant, saved, imported):
  reference, _ = saved[variant]
  config, params = imported[variant]
  assert config.model.num_kv_heads == 2
  model = models.build_model(config)
  with torch.no_grad():
    expected = reference(torch.tensor(TOKENS_BT)).logits.numpy()
    continued = reference.generate(torch.tensor(PROMPT_BP), do_sample=False,
                                   attention_mask=torch.ones(PROMPT_BP.shape, dtype=int),
                                   max_new_tokens=NEW_TOKENS, pad_token_id=0).numpy()
  got = np.asarray(jax.jit(model.apply)({'params': params}, TOKENS_BT))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  assert np.abs(expected).max() > 1.0  # not a comparison of near-zero logits
  got_BN = decoding.generate(model, params, PROMPT_BP, jax.random.key(0),
                             max_new_tokens=NEW_TOKENS, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(got_BN), continued[:, PROMPT_BP.shape[1]:])


def test_config_fields(imported):
  tied, untied, mistral = (imported[v][0].model for v in VARIANTS)
  assert tied.tie_embeddings and not untied.tie_embeddings
  assert (untied.head_dim, tied.head_dim) == (24, 16)
  assert (mistral.attention.pattern, mistral.attention.window) == ('sliding', 6)
  assert tied.attention.pattern == 'full' and tied.rope_theta == 500.0
  assert (tied.norm_eps, tied.activation, tied.d_ff) == (1e-5, 'swiglu', 96)


def _assert_trees_equal(a, b):
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(b)}
  assert flat_a.keys() == flat_b.keys()
  for key, value in flat_a.items():
    assert np.array_equal(np.asarray(value), np.asarray(flat_b[key])), key


def test_sharded_and_torch_checkpoints_import_as_the_single_file(saved, imported, tmp_path):
  reference, _ = saved['llama_untied']
  reference.save_pretrained(tmp_path / 'sharded', max_shard_size='40KB')
  with checkpoint_lib.Checkpoint(str(tmp_path / 'sharded')) as checkpoint:
    assert len(set(checkpoint.weight_map.values())) > 3  # several shards, by the index
  _assert_trees_equal(hf.convert(str(tmp_path / 'sharded'))[1], imported['llama_untied'][1])
  (tmp_path / 'torch').mkdir()
  (tmp_path / 'torch/config.json').write_text((tmp_path / 'sharded/config.json').read_text())
  torch.save(reference.state_dict(), tmp_path / 'torch/pytorch_model.bin')
  _assert_trees_equal(hf.convert(str(tmp_path / 'torch'))[1], imported['llama_untied'][1])


def test_scanned_sharded_placement_equals_unscanned(saved, imported, tmp_path):
  """Shards over fsdp and tensor: each device's callback reads and slices only its part. The
  scanned, sharded parameters export layer by layer to the same checkpoint."""
  _, path = saved['mistral']
  mesh = (('mesh.fsdp', '2'), ('mesh.tensor', '2'))
  config, _, params = convert.load_hf(path, mesh + (('model.scan_layers', 'true'),))
  assert config.model.scan_layers
  query = params['stack']['layers']['attn']['query']
  assert query.shape[0] == 2 and not query.sharding.is_fully_replicated
  unscanned = imported['mistral'][1]
  stacked = {k: v for k, v in unscanned.items() if k != 'stack'}
  stacked['stack'] = {'layers': jax.tree.map(lambda *layers: np.stack(layers),
                                             *unscanned['stack'].values())}
  _assert_trees_equal(params, stacked)
  convert.export_params(config, params, str(tmp_path))
  _assert_trees_equal(hf.convert(str(tmp_path))[1], unscanned)
  _, _, unscanned_placed = convert.load_hf(path, mesh)
  _assert_trees_equal(unscanned_placed, unscanned)


@pytest.mark.parametrize('variant,model_type', [('llama_tied', 'llama'), ('mistral', 'mistral')])
def test_export_loads_in_transformers(variant, model_type, saved, imported, tmp_path):
  """The tied head is not written; Mistral keeps its window. Logits: the source model's."""
  reference, _ = saved[variant]
  config, params = imported[variant]
  summary = convert.export_params(config, params, str(tmp_path))
  assert summary['model_type'] == model_type
  exported, info = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, output_loading_info=True)
  assert not any(info.values()), info
  assert exported.config.model_type == model_type
  assert getattr(exported.config, 'sliding_window', None) == (6 if variant == 'mistral' else None)
  with torch.no_grad():
    np.testing.assert_allclose(exported.eval()(torch.tensor(TOKENS_BT)).logits.numpy(),
                               reference(torch.tensor(TOKENS_BT)).logits.numpy(), atol=1e-5)
  _assert_trees_equal(hf.convert(str(tmp_path))[1], params)


def test_scanned_callback_reads_only_its_layers(saved, imported):
  """The layer axis sharded over 2 devices: each device's callback reads its own layer, once."""
  _, path = saved['mistral']
  config, unscanned = imported['mistral']
  config = config.copy_and_resolve_references()
  config.model.scan_layers = True
  shapes = hf.abstract_params(config)
  mesh = jax.make_mesh((2,), ('layers',), devices=jax.devices()[:2])
  with checkpoint_lib.Checkpoint(path) as checkpoint:
    source = streaming.plan(checkpoint, hf.FAMILIES['mistral'], config,
                            shapes)['stack/layers/mlp/w_in']
    reads, read = [], checkpoint.read
    checkpoint.read = lambda name: reads.append(name) or read(name)
    target = jax.ShapeDtypeStruct(shapes['stack']['layers']['mlp']['w_in'].shape, np.float32,
                                  sharding=jax.NamedSharding(mesh, jax.P('layers')))
    w_in = streaming.place_parameter(checkpoint, source, target)
  assert reads == ['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.up_proj.weight']
  assert [s.data.shape[0] for s in w_in.addressable_shards] == [1, 1]
  np.testing.assert_array_equal(np.asarray(w_in)[1], unscanned['stack']['layer_1']['mlp']['w_in'])
