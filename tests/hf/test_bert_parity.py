"""A random HF BERT masked LM, converted, gives the same logits (float32, 1e-4): with token types,
and with padding given as HF's attention mask and as lmforge's segment id 0."""

import numpy as np
import pytest

from research import models
from research.models import hf

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

pytestmark = pytest.mark.hf



def _reference(tmp_path):
  torch.manual_seed(0)
  reference = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
  with torch.no_grad():  # HF initialises biases to 0 and norms to 1: make every weight count
    for p in reference.parameters():
      p.add_(0.1 * torch.randn_like(p))
  reference.save_pretrained(tmp_path)
  return reference


def _build(config):
  return models.build_model(config)


def test_bert_logits_match(tmp_path):
  reference = _reference(tmp_path)
  config, params = hf.convert(str(tmp_path))
  assert (config.model.family, config.objective.name) == ('encoder', 'mlm')
  config.model.dtype = 'float32'
  model = _build(config)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 99, (2, 24))
  types = (np.arange(24) >= rng.integers(4, 20, (2, 1))).astype(np.int64)  # segment A, then B
  lengths = np.array([24, 15])  # row 1 is padded after 15 tokens
  valid = np.arange(24)[None] < lengths[:, None]
  with torch.no_grad():
    expected = reference(torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)),
                         token_type_ids=torch.tensor(types)).logits.numpy()
  got = np.asarray(model.apply({'params': params}, tokens, None, valid.astype(np.int32), types))
  assert got.shape == expected.shape == (2, 24, 99) and got.dtype == np.float32
  # Padded positions' outputs are meaningless on both sides (lmforge lets padding attend to
  # padding, HF to the real tokens); every real position must agree.
  np.testing.assert_allclose(got[valid], expected[valid], atol=1e-4, rtol=1e-4)
  assert np.abs(expected).max() > 1.0  # the comparison is not between near-zero logits
