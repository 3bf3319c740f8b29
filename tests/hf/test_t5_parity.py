"""Randomly initialised HF T5 1.0 and T5 v1.1 models, converted, give the same logits (float32)."""

import jax
import numpy as np
import pytest

from research import models
from research.layers import relative_bias
from research.models import hf

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

pytestmark = pytest.mark.hf

VOCAB = 97
# Distances up to 19 against max_distance 12: exact, logarithmic and clipped buckets all occur.
SHAPE = dict(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=48, dropout_rate=0.0,
             relative_attention_num_buckets=8, relative_attention_max_distance=12)
VARIANTS = {
    't5_1_0': dict(feed_forward_proj='relu', tie_word_embeddings=True, num_layers=2),
    't5_1_1': dict(feed_forward_proj='gated-gelu', tie_word_embeddings=False, num_layers=2),
    'unequal_depths': dict(feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                           num_layers=1, num_decoder_layers=3),
}


def reference_model(variant):
  torch.manual_seed(0)
  config = transformers.T5Config(**SHAPE, **VARIANTS[variant])
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not config.scale_decoder_outputs:
    # T5 v1.1 has its own output layer (Transformers 5 ties it at construction).
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, SHAPE['d_model']))
  return model


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_t5_logits_match(variant, tmp_path):
  reference = reference_model(variant)
  reference.save_pretrained(tmp_path)
  config, params = hf.convert(str(tmp_path))
  assert config.model.tie_embeddings == (variant == 't5_1_0')
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, VOCAB, (2, 20))
  inputs[1, 14:] = 0  # right padding, masked on both sides
  targets = rng.integers(1, VOCAB, (2, 17))
  decoder_inputs = np.concatenate([np.zeros((2, 1), np.int64), targets[:, :-1]], axis=1)
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(inputs),
                         attention_mask=torch.tensor(inputs != 0).long(),
                         decoder_input_ids=torch.tensor(decoder_inputs)).logits.numpy()
  model = models.build_model(config)
  got = jax.jit(model.apply)({'params': params}, inputs.astype(np.int32),
                             decoder_inputs.astype(np.int32))
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 12)])
def test_buckets_match_hugging_face(bidirectional, num_buckets, max_distance):
  rel = np.arange(-400, 401)
  attention_cls = transformers.models.t5.modeling_t5.T5Attention
  expected = attention_cls._relative_position_bucket(
      torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance).numpy()
  got = relative_bias.relative_position_bucket(rel, bidirectional=bidirectional,
                                               num_buckets=num_buckets, max_distance=max_distance)
  np.testing.assert_array_equal(np.asarray(got), expected)
