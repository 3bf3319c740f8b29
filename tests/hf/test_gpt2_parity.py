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


def test_convert_cli_writes_a_workdir_that_restores(tmp_path):
  import json
  import os
  import subprocess
  import sys
  import research
  torch.manual_seed(0)
  reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4)).eval()
  reference.save_pretrained(tmp_path / 'hf')
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, '-m', 'research.convert', '--from=hf',
                           f'--hf_dir={tmp_path / "hf"}', f'--workdir={tmp_path / "w"}'],
                          cwd=repo, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.splitlines()[-1])['family'] == 'decoder'
  lm = research.load(str(tmp_path / 'w'), overrides=[('model.dtype', 'float32')])
  assert lm.step == 0
  tokens = np.random.default_rng(1).integers(0, 97, (1, 16))
  with torch.no_grad():
    expected = reference(torch.tensor(tokens)).logits.numpy()
  got = lm(tokens)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_generation_matches_transformers(tmp_path):
  """Prompts of three lengths, left-padded in one batch on both sides (transformers counts each
  row's positions from its attention mask), decode to the same greedy tokens."""
  import jax  # pylint: disable=g-import-not-at-top
  from research.inference import decoding  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=97, n_positions=48, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
      embd_pdrop=0.0, attn_pdrop=0.0)).eval()
  with torch.no_grad():  # large weights spread the logits: greedy choices are never near-ties
    for name, p in reference.named_parameters():
      is_scale = '.ln_' in name and name.endswith('weight')
      p.copy_(1 + 0.1 * torch.randn_like(p) if is_scale else 0.3 * torch.randn_like(p))
  reference.save_pretrained(tmp_path)
  config, params = hf.convert(str(tmp_path))
  config.model.dtype = 'float32'
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 97, n).tolist() for n in (4, 15, 9)]
  prompt_BP, lengths_B = decoding.left_pad(prompts)
  mask_BP = (np.arange(prompt_BP.shape[1]) >= prompt_BP.shape[1] - lengths_B[:, None])
  with torch.no_grad():
    expected = reference.generate(torch.tensor(prompt_BP), do_sample=False,
                                  attention_mask=torch.tensor(mask_BP.astype(np.int64)),
                                  max_new_tokens=8, pad_token_id=0).numpy()[:, prompt_BP.shape[1]:]
  got = decoding.generate_rows(models.build_model(config), params, prompts, jax.random.key(0),
                               max_new_tokens=8, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(got), expected)
  assert len(set(expected.ravel().tolist())) > 3  # not one token repeated
