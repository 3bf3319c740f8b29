"""Encoder (MLM) family: bidirectional within segments, sharding-invariant, learns, fills masks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.data import tokenizer as tokenizer_lib
from research.inference import fill_mask as fill_mask_lib
from research.training import metrics as metrics_lib, trainer
from tests import helpers

BERT_OPTIONS = {'type_vocab_size': 2, 'embed_norm': True, 'head_transform': True,
                'output_bias': True}
# The BERT shape on the tiny model: every encoder-only parameter exists.
BERT_OVERRIDES = {'model.norm_position': 'post', 'model.norm': 'layernorm',
                  'model.position': 'learned', 'model.activation': 'gelu_exact',
                  'model.use_bias': True, 'model.num_kv_heads': 0,
                  **{f'model.{k}': v for k, v in BERT_OPTIONS.items()}}
ENCODER = {'model.family': 'encoder', 'objective.name': 'mlm', 'model.dtype': 'float32'}
VARIANTS = {'modern': {}, 'bert': BERT_OVERRIDES}


def _config(variant, **overrides):
  return helpers.tiny_config(**ENCODER, **VARIANTS[variant], **overrides)


def _model(config):
  return models.build_model(config)


def _host_params(abstract, seed=0):
  """Random parameters drawn with numpy, placed like `abstract` (ShapeDtypeStructs).

  XLA's CPU compile of a model's initialisers (a threefry kernel per parameter) takes seconds;
  these tests need parameters, not the initialisation. Norm scales stay near one.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    value = rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
    value += 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    sharding = getattr(leaf, 'sharding', None)
    return value if sharding is None else jax.device_put(value, sharding)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _abstract_params(model, *args):
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)['params'])


@functools.cache
def _init(variant):
  """(jitted apply, params, tokens [2, 16]) of the tiny encoder, built once per variant."""
  model = _model(_config(variant))
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 5, 128)
  return jax.jit(model.apply), _host_params(_abstract_params(model, tokens)), tokens


@pytest.mark.parametrize('variant', VARIANTS)
def test_shapes_dtypes_and_parameters(variant):
  apply, params, tokens = _init(variant)
  logits = apply({'params': params}, tokens)
  assert logits.shape == (2, 16, 128) and logits.dtype == jnp.float32
  bert = variant == 'bert'
  for name in ('token_types', 'embed_norm', 'head_transform', 'output_bias', 'positions'):
    assert (name in params) == bert, name
  assert ('final_norm' in params) == (not bert)  # post-norm blocks end normalised
  assert 'unembed' not in params  # tied to the embedding table


@pytest.mark.parametrize('variant', VARIANTS)
def test_attention_is_bidirectional(variant):
  apply, params, tokens = _init(variant)
  base = apply({'params': params}, tokens)
  changed = apply({'params': params}, tokens.at[:, 12].set(tokens[:, 12] % 100 + 5))
  # A later token changes the earliest position's logits: nothing is causal.
  assert float(jnp.abs(changed[:, 0] - base[:, 0]).max()) > 1e-4


@pytest.mark.parametrize('variant', VARIANTS)
def test_packed_segments_do_not_see_each_other(variant):
  apply, params, tokens = _init(variant)
  first, second = 6, 10
  segment_ids = jnp.array([[1] * first + [2] * second])
  positions = jnp.array([list(range(first)) + list(range(second))])
  types = jnp.array([[0] * 3 + [1] * 3 + [0] * 4 + [1] * 6]) if variant == 'bert' else None
  packed = apply({'params': params}, tokens[:1], positions, segment_ids, types)
  alone = apply({'params': params}, tokens[:1, first:], None, None,
                      None if types is None else types[:, first:])
  np.testing.assert_allclose(packed[:, first:], alone, atol=1e-5, rtol=1e-5)
  # Padding (segment 0) after a segment leaves that segment's logits unchanged.
  padded = apply({'params': params}, tokens[:1], None, jnp.array([[1] * first + [0] * second]))
  just_first = apply({'params': params}, tokens[:1, :first])
  np.testing.assert_allclose(padded[:, :first], just_first, atol=1e-5, rtol=1e-5)


def test_token_types_without_a_table_are_an_error():
  apply, params, tokens = _init('modern')
  with pytest.raises(Exception, match='model.type_vocab_size'):
    apply({'params': params}, tokens, None, None, jnp.zeros_like(tokens))


class MaskTokenizer(helpers.SyntheticTokenizer):
  mask_id = 4


class MaskPatternDataset(helpers.PatternDataset):
  """PatternDataset whose tokenizer stand-in has a [MASK] id (4) for the MLM objective."""

  def __init__(self, vocab_size=128, **kwargs):
    super().__init__(vocab_size, **kwargs)
    self.tokenizer = MaskTokenizer(vocab_size)


LAYOUTS = {'data8': dict(data=8), 'fsdp8': dict(data=1, fsdp=8),
           'data2_fsdp2_tensor2': dict(data=2, fsdp=2, tensor=2)}


def _loss_and_grads(mesh, devices):
  """Loss and gradients of one MLM batch, parameters placed by the mesh's rules."""
  config = _config('bert', **{'model.num_layers': 1},  # one layer: compile time is the cost
                   **{f'mesh.{axis}': size for axis, size in mesh.items()})
  run = trainer.build_run(config, devices=jax.devices()[:devices])
  params = _host_params(trainer.abstract_state(run).params)  # same values in every layout
  value, grads = helpers.batch_loss_and_grads(run, params, MaskPatternDataset())
  return value, grads, params


def test_mesh_layouts_match_single_device():
  ref_loss, ref_grads, _ = _loss_and_grads(dict(data=1), devices=1)
  assert 4.0 < ref_loss < 7.0  # near ln(128): small random weights
  assert 'token_types' in ref_grads and 'head_transform' in ref_grads
  for layout, mesh in LAYOUTS.items():
    value, grads, params = _loss_and_grads(mesh, devices=8)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-5, err_msg=layout)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
      ref = ref_grads
      for key in path:
        ref = ref[key.key]
      if path[-1].key == 'key_bias':
        # Softmax ignores a shift shared by all keys: this gradient is zero but for rounding.
        assert np.linalg.norm(g) < 1e-6 and np.linalg.norm(ref) < 1e-6
        continue
      rel = np.linalg.norm(g - ref) / np.linalg.norm(ref)
      assert rel < 1e-5, f'{layout} {jax.tree_util.keystr(path)}: relative error {rel:.2e}'
  # The encoder's own parameters are sharded by their logical axes (last layout: fsdp, tensor).
  spec = lambda x: x.sharding.spec
  assert spec(params['head_transform']['kernel']) == jax.sharding.PartitionSpec('fsdp', 'tensor')
  assert spec(params['token_types']['embedding']) == jax.sharding.PartitionSpec(None, 'fsdp')
  assert spec(params['output_bias']) == jax.sharding.PartitionSpec('tensor')


def test_mlm_loss_falls(tmp_path):
  config = _config('modern', **{'model.num_layers': 1, 'train.steps': 40, 'train.eval_every': 40,
                                'train.checkpoint_every': 100, 'train.warmup_steps': 5})
  final = trainer.train(config, str(tmp_path), dataset=MaskPatternDataset())
  losses = [m['train/loss'] for m in metrics_lib.read_metrics(str(tmp_path)) if 'train/loss' in m]
  assert len(losses) == 40
  # Repeating patterns make a masked token predictable from its neighbours on both sides.
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
  assert final['eval/loss'] < losses[0] - 1.0


@pytest.fixture(scope='module')
def tiny_tokenizer(tmp_path_factory):
  text = 'To be, or not to be, that is the question.\nWhether tis nobler in the mind to suffer\n'
  path = tmp_path_factory.mktemp('tokenizer') / 'tiny.model'
  return tokenizer_lib.train_tokenizer([text * 20], 300, str(path), num_sentinels=2)


def test_fill_mask_lists_candidates_at_every_mask(tiny_tokenizer):
  tok = tiny_tokenizer
  ids = tok.encode('to be [MASK]')
  assert [tok.id_to_piece(i) for i in ids[-2:]] == ['\u2581', '[MASK]']  # the stray space
  text = 'to be [MASK] or [MASK]'
  encoded = fill_mask_lib.encode_with_masks(tok, text)
  assert len(encoded) == len(tok.encode(text)) - 2  # each mask absorbed the space before it
  before_masks = encoded[np.flatnonzero(encoded == tok.mask_id) - 1]
  assert all(tok.id_to_piece(i) != '\u2581' for i in before_masks)
  config = _config('modern', **{'data.vocab_size': 300, 'model.vocab_size': 320})
  model = _model(config)
  params = _host_params(_abstract_params(model, jnp.zeros((1, 8), jnp.int32)))
  results = fill_mask_lib.fill_mask(model, params, tok, text, top_k=3)
  masks = [int(i) for i in np.flatnonzero(encoded == tok.mask_id)]
  assert [position for position, _ in results] == masks
  for _, candidates in results:
    assert len(candidates) == 3
    probs = [p for _, p in candidates]
    assert probs == sorted(probs, reverse=True) and 0 < probs[-1] and probs[0] < 1
    assert not {'[MASK]', '<extra_id_0>'} & {text for text, _ in candidates}
