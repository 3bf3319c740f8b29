"""FLOP accounting against hand-computed values."""

import pytest

from research.models.transformer import TransformerConfig
from research.training import flops


def _cfg(**kw):
  base = dict(vocab_size=1000, d_model=64, num_layers=2, num_heads=4, num_kv_heads=4,
              head_dim=16, d_ff=256, activation='gelu')
  base.update(kw)
  return TransformerConfig(**base)


def test_matmul_params_by_hand():
  # attention 4 x 64 x 64 + MLP 2 x 64 x 256, per layer, x 2 layers; unembedding 1000 x 64.
  assert flops.matmul_params(_cfg()) == 2 * (4 * 64 * 64 + 2 * 64 * 256) + 64_000
  # GQA: key and value shrink to G x K columns; SwiGLU has three matrices.
  gqa = _cfg(num_kv_heads=1, activation='swiglu')
  assert flops.matmul_params(gqa) == 2 * (2 * 64 * 64 + 2 * 64 * 16 + 3 * 64 * 256) + 64_000


def test_flops_per_token_by_hand():
  cfg = _cfg()
  n = flops.matmul_params(cfg)
  # Bidirectional: 12 x L x H x K x T.
  assert flops.flops_per_token(cfg, 128, causal=False) == 6 * n + 12 * 2 * 64 * 128
  # Causal: the mean query sees (T + 1) / 2 keys.
  assert flops.flops_per_token(cfg, 128) == 6 * n + 12 * 2 * 64 * 64.5
  # A window of 16 keys: (16 x 17 / 2 + 112 x 16) / 128 keys on average.
  window = (16 * 17 / 2 + 112 * 16) / 128
  assert flops.flops_per_token(cfg, 128, window=16) == pytest.approx(6 * n + 12 * 2 * 64 * window)


def test_6nd():
  assert flops.flops_6nd(1e9, 2e10) == 1.2e20


def test_encoder_decoder_by_hand():
  cfg = _cfg(encoder_layers=2, decoder_layers=1)
  attn, mlp = 4 * 64 * 64, 2 * 64 * 256
  # Encoder: 2 layers over S=10 tokens; decoder: 1 layer (self + cross attention, MLP) and the
  # unembedding over T=4 tokens; attention: S^2 per encoder layer, T(T+1)/2 + T*S per decoder.
  matmuls = 10 * 2 * (attn + mlp) + 4 * (1 * (2 * attn + mlp) + 1000 * 64)
  attention = 2 * 100 + 1 * (10 + 40)
  assert flops.encoder_decoder_flops(cfg, 10, 4) == 6 * matmuls + 12 * 64 * attention


def test_flops_per_step_follows_the_family():
  from tests import helpers
  from research.models import transformer_config
  dec = helpers.tiny_config()
  enc = helpers.tiny_config(**{'model.family': 'encoder', 'objective.name': 'mlm'})
  cfg = transformer_config(dec.model, seq_len=32)
  tokens = dec.train.batch_size * 32
  assert flops.flops_per_step(cfg, dec) == tokens * flops.flops_per_token(cfg, 32)
  assert flops.flops_per_step(cfg, enc) == tokens * flops.flops_per_token(cfg, 32, causal=False)
