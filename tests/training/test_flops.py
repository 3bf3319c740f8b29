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


# --- Recurrent mixers (model.mixer). ----------------------------------------------------------

RECURRENT = ('linear_attention', 'mamba2', 'gated_deltanet')


def _mixer_cfg(pattern, **kw):
  from research.layers import mixers
  return _cfg(mixer=mixers.MixerConfig(pattern=tuple(pattern.split(',')), chunk_size=16),
              **kw)


def _initialised_mixer(kind):
  """One initialised 1-layer decoder with `kind` as its mixer: (cfg, its mixer's params)."""
  import jax
  import jax.numpy as jnp
  from research import models
  from tests import helpers
  config = helpers.tiny_config(**{'model.mixer.pattern': kind, 'model.mixer.chunk_size': 16,
                                  'model.num_layers': 1})
  cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  tokens = jnp.zeros((1, 16), jnp.int32)
  params = jax.eval_shape(lambda: models.build_model(config).init(jax.random.key(0), tokens))
  return cfg, params['params']['stack']['layer_0']['mixer']


@pytest.mark.parametrize('kind', RECURRENT)
def test_mixer_matmul_params_and_conv_channels_match_the_initialised_layer(kind):
  """Matmul parameters: every projection from d_model and the out-projection, i.e. every leaf
  but the convolutions' taps, the gated norm's scale and the per-head vectors (A, dt bias, D)."""
  import jax
  cfg, mixer = _initialised_mixer(kind)
  not_matmul = ('norm', 'a_log', 'dt_bias', 'skip')
  sizes = {jax.tree_util.keystr(path): leaf.value.size
           for path, leaf in jax.tree_util.tree_leaves_with_path(
               mixer, is_leaf=lambda x: hasattr(x, 'value'))}
  matmul = sum(n for path, n in sizes.items()
               if 'conv' not in path and not any(f"'{name}'" in path for name in not_matmul))
  conv_taps = sum(n for path, n in sizes.items() if 'conv' in path)
  assert flops.mixer_params(cfg, kind) == matmul
  shape = flops.mixer_shape(cfg, kind)
  assert cfg.mixer.conv_width * shape.conv_channels == conv_taps


def test_mixer_flops_by_hand():
  cfg = _mixer_cfg('gated_deltanet')  # d 64, 4 heads of 16, chunk 16, conv width 4
  h, k, c = 4, 16, 8.5  # mean causal context in a chunk of 16: (16 + 1) / 2
  assert flops.mixer_params(cfg, 'gated_deltanet') == 64 * (4 * h * k + 2 * h) + h * k * 64
  kernel = h * (2 * c * 2 * k + 4 * k * k + 2 * (c - 1) * 3 * k + 2 * k * k)
  conv = 2 * 4 * 3 * h * k
  assert flops.recurrent_flops(cfg, 'gated_deltanet', 128) == 3 * (conv + kernel)
  assert flops.recurrent_flops(cfg, 'gated_deltanet', 128, causal=False) == 3 * (conv + 2 * kernel)
  # Linear attention's values carry the normaliser's column; no convolution, additive rule.
  la = flops.mixer_shape(cfg, 'linear_attention')
  assert (la.key_dim, la.value_dim, la.conv_channels) == (16, 17, 0)
  assert flops.recurrent_flops(cfg, 'linear_attention', 128) == 3 * h * (
      2 * c * (16 + 17) + 4 * 16 * 17)
  # Mamba-2: K = state_dim, V = expand x d_model / heads.
  mamba = flops.mixer_shape(_mixer_cfg('mamba2'), 'mamba2')
  assert (mamba.key_dim, mamba.value_dim, mamba.conv_channels) == (64, 32, 4 * 32 + 2 * 64)


def test_hybrid_flops_are_the_sum_of_its_layers():
  """A 4-layer hybrid against four 1-layer models, one per kind (each with the unembedding)."""
  kinds = ('gated_deltanet', 'mamba2', 'linear_attention', 'attention')
  hybrid = _mixer_cfg(','.join(kinds), num_layers=4)
  unembed = 6 * 1000 * 64
  for causal in (True, False):
    layers = [flops.flops_per_token(_mixer_cfg(kind, num_layers=1), 256, causal=causal) - unembed
              for kind in kinds]
    assert flops.flops_per_token(hybrid, 256, causal=causal) == pytest.approx(
        unembed + sum(layers))
  assert flops.matmul_params(hybrid) == 1000 * 64 + sum(
      flops.matmul_params(_mixer_cfg(kind, num_layers=1)) - 1000 * 64 for kind in kinds)
  # Only the attention layer attends to keys; a window applies to it alone.
  assert flops.layer_contexts(hybrid, 256) == [0.0, 0.0, 0.0, 128.5]
  window = flops.attention_context(256, window=16)
  assert flops.flops_per_token(hybrid, 256, window=16) == pytest.approx(
      flops.flops_per_token(hybrid, 256) + 12 * 64 * (window - 128.5))


def test_recurrent_flops_grow_linearly_in_length_and_attention_superlinearly():
  lengths = (256, 1024, 4096)
  for kind in RECURRENT:  # the same per token at every multiple of the chunk: linear in T
    per_token = [flops.flops_per_token(_mixer_cfg(kind), t) for t in lengths]
    assert per_token[0] == per_token[1] == per_token[2]
    # A row shorter than a chunk sees fewer keys, as causal attention does.
    assert flops.recurrent_flops(_mixer_cfg(kind), kind, 8) < flops.recurrent_flops(
        _mixer_cfg(kind), kind, 16)
  attention = [flops.flops_per_token(_cfg(), t) for t in lengths]
  assert attention[0] < attention[1] < attention[2]  # per token: quadratic in total
  assert attention[2] * 4096 > 4.5 * attention[1] * 1024


def test_encoder_decoder_flops_with_mixers():
  """The encoder's recurrent layers run both ways over S; the decoder's causally over T, next
  to cross-attention to all S."""
  cfg = _mixer_cfg('mamba2,attention', encoder_layers=2, decoder_layers=2)
  attn, mlp = 4 * 64 * 64, 2 * 64 * 256
  mamba = flops.mixer_params(cfg, 'mamba2')
  s, t = 32, 16
  matmuls = s * (mamba + attn + 2 * mlp) + t * (mamba + attn + 2 * (attn + mlp) + 64_000)
  attention = s * 32 + t * (t + 1) / 2 + 2 * t * s
  recurrent = (s * flops.recurrent_flops(cfg, 'mamba2', s, causal=False) +
               t * flops.recurrent_flops(cfg, 'mamba2', t))
  assert flops.encoder_decoder_flops(cfg, s, t) == pytest.approx(
      6 * matmuls + 12 * 64 * attention + recurrent)


@pytest.mark.parametrize('delta', (False, True), ids=('additive', 'delta'))
def test_kernel_flops_against_xla_cost_analysis(delta):
  """The chunkwise kernel's forward, recurrent.chunked, against XLA's own count (CPU) of one
  chunk: XLA's cost analysis counts a while loop's body once whatever its trip count (measured:
  the count per token falls as chunks are added), so a row of one chunk is the only honest
  comparison; the state is an argument, so nothing folds away.

  XLA counts what the kernel computes: full C x C squares (QK^T, scores x delta; KK^T; the
  inverse of I + A applied to U and W), no causal halving, the block inverse's matmuls
  (recurrent.unit_lower_inverse, 2 (C^2 - 1) / 3 per token), plus elementwise ops (about 2 %).
  So it lies within 5 % of that dense count, and above the model count (flops.kernel_flops) by
  1.35x (additive) and 1.56x (delta rule) at C = 64, K = V = 64."""
  import jax
  import jax.numpy as jnp
  from research.layers import recurrent
  b, t, h, k, v, c = 2, 64, 4, 64, 64, 64
  shapes = [(b, t, h, k), (b, t, h, k), (b, t, h, v), (b, t, h), (b, t, h), (b, h, k, v)]

  def forward(q, key, value, log_alpha, beta, state):
    return recurrent.chunked(q, key, value, log_alpha, beta, delta=delta, chunk_size=c,
                             initial_state_BHKV=state)

  lowered = jax.jit(forward).lower(*[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
  cost = lowered.compile().cost_analysis()
  xla = (cost[0] if isinstance(cost, list) else cost)['flops'] / (b * t)
  dense = h * (2 * c * (k + v) + 4 * k * v +
               delta * (2 * c * k + 2 * k * v + 2 * (c * c - 1) / 3 + 2 * c * (k + v)))
  assert xla == pytest.approx(dense, rel=0.05)
  shape = flops.MixerShape(h, k, k, v, proj_per_head=0, proj_shared=0, conv_per_head=0,
                           conv_shared=0, convs=0, delta=delta)
  model = flops.kernel_flops(shape, (c + 1) / 2)
  assert 0.5 < xla / model < 2
  assert xla / model == pytest.approx(1.56 if delta else 1.35, abs=0.02)


def test_cache_bytes_match_init_cache_for_a_hybrid():
  """Every leaf of the decoding cache: attention keys, values and slot bookkeeping (a sliding
  window's rolling slots), recurrent states and convolution windows, in bfloat16."""
  import jax
  from research import models
  from research.inference import decoding
  from tests import helpers
  config = helpers.tiny_config(**{
      'model.mixer.pattern': 'attention,gated_deltanet,mamba2,attention,linear_attention',
      'model.num_layers': 5, 'model.mixer.chunk_size': 16, 'model.dtype': 'bfloat16',
      'model.attention.pattern': 'sliding,full', 'model.attention.window': 8})
  cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  decoder = models.build_model(config).clone(decode=True)
  for length in (4, 24):
    cache = jax.eval_shape(lambda n=length: decoding.init_cache(decoder, 3, n))
    real = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    assert flops.cache_bytes(cfg, 3, length) == real
  # The recurrent layers' share does not grow with the length; attention's does.
  recurrent_only = helpers.tiny_config(**{'model.mixer.pattern': 'gated_deltanet',
                                          'model.mixer.chunk_size': 16})
  cfg = models.transformer_config(recurrent_only.model, seq_len=32)
  assert flops.cache_bytes(cfg, 3, 10) == flops.cache_bytes(cfg, 3, 10_000)
