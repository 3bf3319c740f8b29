"""A randomly initialised HF GPT-2, converted, gives the same logits (float32, 1e-4)."""

import numpy as np
import pytest

from research import models
from research.models import hf

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

pytestmark = pytest.mark.hf


def test_gpt2_logits_match(tmp_path):
  torch.manual_seed(0)
  reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4, resid_pdrop=0.0,
      embd_pdrop=0.0, attn_pdrop=0.0)).eval()
  reference.save_pretrained(tmp_path)
  config, params = hf.convert(str(tmp_path))
  config.model.dtype = 'float32'
  tokens = np.random.default_rng(0).integers(0, 97, (2, 20))
  with torch.no_grad():
    expected = reference(torch.tensor(tokens)).logits.numpy()
  got = models.build_model(config).apply({'params': params}, tokens)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)
