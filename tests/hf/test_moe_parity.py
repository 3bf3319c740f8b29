"""Random HF Mixtral and Qwen3-MoE models, 4 experts top-2 (Mixtral: a sliding window shorter
than the test sequence; Qwen3-MoE: MoE on every layer with renormalised gates and a sliding
window, or on every other layer, dense ones between, with the raw probabilities as gates),
imported: transformers' float32 logits and greedy generations; exports bit-identical both ways
that transformers loads; imports on an expert-parallel mesh (scanned and not) read each expert
into its shard and give the same logits."""

import json

import jax
import numpy as np
import pytest

from research import config_lib, convert, models
from research.errors import UserError
from research.inference import decoding
from research.models import hf
from research.models.hf import checkpoint as checkpoint_lib
from tests.hf import parity

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
safetensors_numpy = pytest.importorskip('safetensors.numpy')

pytestmark = pytest.mark.hf

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
              num_experts_per_tok=2, router_aux_loss_coef=0.02, tie_word_embeddings=False,
              # large weights spread the logits (greedy choices are never near-ties) and the
              # router's (generations vary, so routing does)
              initializer_range=0.2, bos_token_id=None, eos_token_id=None)
VARIANTS = {
    'mixtral': (transformers.MixtralConfig, dict(
        intermediate_size=48, num_local_experts=4, sliding_window=12, rope_theta=500.0)),
    'qwen3_moe': (transformers.Qwen3MoeConfig, dict(
        intermediate_size=48, moe_intermediate_size=24, num_experts=4, head_dim=16,
        decoder_sparse_step=1, norm_topk_prob=True, use_sliding_window=True, sliding_window=12)),
    'qwen3_moe_sparse': (transformers.Qwen3MoeConfig, dict(
        intermediate_size=40, moe_intermediate_size=24, num_experts=4, decoder_sparse_step=2,
        norm_topk_prob=False, tie_word_embeddings=True, sliding_window=12)),
}
TOKENS_BT = np.random.default_rng(0).integers(0, VOCAB, (8, 24))  # 24 > the window of 12
PROMPT_BP = TOKENS_BT[:2, :8]
NEW_TOKENS = 32


def _reference(variant):
  config_cls, extra = VARIANTS[variant]
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config_cls(**{**COMMON, **extra})).eval()
  with torch.no_grad():  # norms start at 1: make them count (a swapped norm would not show)
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """variant -> (HF model, its save_pretrained directory)."""
  return parity.save_references(VARIANTS, _reference, tmp_path_factory)


@pytest.fixture(scope='module')
def imported(saved):
  """variant -> (config, host params) of the import."""
  return parity.import_all(saved)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_logits_and_greedy_generation_match(variant, saved, imported):
  """The forward pass, and KV-cache decoding (the prompt's prefill, then one token at a time)
  with the logits of every step."""
  reference, _ = saved[variant]
  config, params = imported[variant]
  model = models.build_model(config)
  expected = parity.hf_logits(reference, TOKENS_BT[:2])
  got = np.asarray(jax.jit(model.apply)({'params': params}, TOKENS_BT[:2]))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  assert np.abs(expected).max() > 1.0  # not a comparison of near-zero logits
  with torch.no_grad():
    out = reference.generate(
        torch.tensor(PROMPT_BP), do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0,
        attention_mask=torch.ones(PROMPT_BP.shape, dtype=torch.long), output_logits=True,
        return_dict_in_generate=True)
  expected_new = out.sequences.numpy()[:, PROMPT_BP.shape[1]:]
  got_new, got_logits = decoding.generate_with_logits(
      model, params, PROMPT_BP, jax.random.key(0), max_new_tokens=NEW_TOKENS, temperature=0.0)
  np.testing.assert_allclose(np.asarray(got_logits), torch.stack(out.logits, dim=1).numpy(),
                             atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(got_new), expected_new)
  assert len(np.unique(expected_new)) >= 8  # a varied continuation, not one token repeated


def test_config_fields(imported):
  mixtral, qwen, sparse = (imported[v][0].model for v in VARIANTS)
  assert (mixtral.moe.num_experts, mixtral.moe.top_k, mixtral.moe.every) == (4, 2, 1)
  assert (mixtral.moe.router, mixtral.moe.softmax_order) == ('dropless', 'after_top_k')
  assert (mixtral.moe.d_ff, mixtral.attention.pattern, mixtral.attention.window) == (
      48, 'sliding', 12)
  assert not mixtral.qk_norm and mixtral.rope_theta == 500.0
  # 0.02 x top_k 2 / 2 MoE layers: HF's pooled loss and lmforge's per-layer sum agree at uniform
  assert mixtral.moe.load_balance_coef == pytest.approx(0.02)
  assert mixtral.moe.z_loss_coef == 0.0
  assert qwen.qk_norm and qwen.moe.every == 1 and qwen.moe.softmax_order == 'after_top_k'
  assert (qwen.attention.pattern, qwen.attention.window) == ('sliding', 12)
  assert sparse.attention.pattern == 'full'  # a sliding_window without use_sliding_window
  assert (sparse.moe.every, sparse.d_ff, sparse.moe.d_ff) == (2, 40, 24)
  assert sparse.moe.softmax_order == 'before_top_k' and sparse.tie_embeddings
  assert sparse.moe.load_balance_coef == pytest.approx(0.04)  # one MoE layer


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_export_round_trips_and_loads_in_transformers(variant, saved, imported, tmp_path):
  reference, path = saved[variant]
  config, params = imported[variant]
  # HF -> lmforge -> HF: every tensor, bit for bit (the tied lm_head is not written).
  summary = convert.export_params(config, params, str(tmp_path / 'out'))
  assert summary['model_type'] == variant.removesuffix('_sparse')
  original = safetensors_numpy.load_file(f'{path}/model.safetensors')
  written = safetensors_numpy.load_file(str(tmp_path / 'out/model.safetensors'))
  assert written.keys() == original.keys() - ({'lm_head.weight'} if config.model.tie_embeddings
                                              else set())
  for name, array in written.items():
    assert array.dtype == original[name].dtype and np.array_equal(array, original[name]), name
  # transformers reads the export: every key, no stray one, the same logits.
  loaded = parity.load_export(str(tmp_path / 'out'), summary['architecture'])
  np.testing.assert_array_equal(parity.hf_logits(loaded, TOKENS_BT[:2]),
                                parity.hf_logits(reference, TOKENS_BT[:2]))
  # lmforge -> HF -> lmforge: arbitrary parameters come back bit for bit, and so does the config.
  rng = np.random.default_rng(1)
  random = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                        hf.abstract_params(config))
  convert.export_params(config, random, str(tmp_path / 'random'))
  config_back, params_back = hf.convert(str(tmp_path / 'random'))
  parity.assert_trees_equal(params_back, random)
  assert config_back.model.to_dict() == config.model.to_dict()


def _stacked_layers(params):
  """Unscanned parameters in the scanned layout: stack/layer_i/X -> stack/layers/X [L, ...]."""
  out = {k: v for k, v in params.items() if k != 'stack'}
  out['stack'] = {'layers': jax.tree.map(lambda *layers: np.stack(layers),
                                         *params['stack'].values())}
  return out


@pytest.mark.parametrize('variant,scanned', [('mixtral', True), ('qwen3_moe_sparse', False)])
def test_import_on_an_expert_parallel_mesh(variant, scanned, saved, imported, tmp_path,
                                           monkeypatch):
  """Experts over 4 devices (data over 2): each expert's tensor is read once, into its shard;
  the placed model gives transformers' logits and exports the checkpoint back bit for bit."""
  reference, path = saved[variant]
  reads = []
  read = checkpoint_lib.Checkpoint.read
  monkeypatch.setattr(checkpoint_lib.Checkpoint, 'read',
                      lambda self, name: reads.append(name) or read(self, name))
  config, run, params = convert.load_hf(
      path, (('model.scan_layers', str(scanned).lower()), ('mesh.expert', '4')))
  assert config.model.scan_layers == scanned
  w_gate = (params['stack']['layers'] if scanned else params['stack']['layer_1'])['moe']['w_gate']
  assert w_gate.shape[-3:] == (4, 32, 24 if variant.startswith('qwen') else 48)  # [(L,) E, D, F]
  assert {s.data.shape[-3] for s in w_gate.addressable_shards} == {1}  # one expert per shard
  expert_reads = [name for name in reads if '.experts.' in name]
  moe_layers = 2 if scanned else 1
  assert len(expert_reads) == len(set(expert_reads)) == moe_layers * 4 * 3  # E x 3 matrices
  unscanned = imported[variant][1]
  parity.assert_trees_equal(params, _stacked_layers(unscanned) if scanned else unscanned)
  with run.context():
    got = jax.jit(run.eval_model.apply)({'params': params}, TOKENS_BT)
  np.testing.assert_allclose(np.asarray(got), parity.hf_logits(reference, TOKENS_BT),
                             atol=1e-4, rtol=1e-4)
  convert.export_params(config, params, str(tmp_path))  # from the devices, expert by expert
  original = safetensors_numpy.load_file(f'{path}/model.safetensors')
  for name, array in safetensors_numpy.load_file(str(tmp_path / 'model.safetensors')).items():
    assert np.array_equal(array, original[name]), name


def test_rope_scaling_goes_both_ways(saved):
  """llama.py's RoPE fields: a scaled Mixtral imports, exports and is picked by its family."""
  _, path = saved['mixtral']
  with open(f'{path}/config.json') as f:
    fields = json.load(f)
  fields['rope_parameters'] = {'rope_type': 'linear', 'factor': 4.0, 'rope_theta': 500.0}
  config = hf.FAMILIES['mixtral'].lmforge_config(fields)
  assert (config.model.rope_scaling.kind, config.model.rope_scaling.factor) == ('linear', 4.0)
  assert hf.export_family(config).model_type == 'mixtral'
  assert hf.FAMILIES['mixtral'].hf_config(config)['rope_parameters'] == fields['rope_parameters']


def _qwen_config(**extra):
  return {**COMMON, **VARIANTS['qwen3_moe'][1], 'model_type': 'qwen3_moe', **extra}


def test_mlp_only_layers():
  family = hf.FAMILIES['qwen3_moe']
  # Dense layers that decoder_sparse_step already makes dense, or every other one: expressible.
  assert family.lmforge_config(_qwen_config(mlp_only_layers=[0])).model.moe.every == 2
  four = _qwen_config(num_hidden_layers=4, decoder_sparse_step=2, mlp_only_layers=[0, 2])
  assert family.lmforge_config(four).model.moe.every == 2
  with pytest.raises(UserError, match=r'mlp_only_layers=\[1\].*layers \[0\] MoE'):
    family.lmforge_config(_qwen_config(mlp_only_layers=[1]))


def test_export_refuses_what_hf_computes_differently(imported):
  config = imported['mixtral'][0]
  assert hf.export_family(config).model_type == 'mixtral'
  changes = {
      'model.moe.router=top_k': "router='top_k' (needs 'dropless', or 'top_k' with "
                                'capacity_factor >= 2',
      'model.moe.num_shared_experts=1': 'num_shared_experts=1 (needs 0)',
      'model.moe.balance=aux_free': "balance='aux_free' (needs 'aux_loss')",
      'model.moe.softmax_order=before_top_k': "softmax_order='before_top_k'"}
  for override, reason in changes.items():
    changed = config.copy_and_resolve_references()
    config_lib.apply_override(changed, *override.split('='))
    assert reason in ' '.join(hf.FAMILIES['mixtral'].unsupported(changed)), override
    with pytest.raises(UserError, match='no Hugging Face family expresses this model'):
      hf.export_family(changed)
  never_drops = config.copy_and_resolve_references()
  never_drops.model.moe.router, never_drops.model.moe.capacity_factor = 'top_k', 2.0
  assert hf.export_family(never_drops).model_type == 'mixtral'
