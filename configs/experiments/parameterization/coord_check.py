"""Coordinate check of μP against SP: mean |activation| per layer, widths 64 to 1024.

Run (the config is the command's default):
  python -m experiments.parameterization.coord_check --workdir=runs/coord_check

A 2-layer decoder (GELU, d_ff = 4 x d_model, RMSNorm, RoPE, 4 heads, tied 512-id embeddings)
at d_model 64, 128, 256, 512 and 1024, trained 4 steps of AdamW (lr 1e-2 constant, no warmup,
no clipping or weight decay) on 8 x 64 tokens of a synthetic stream (repeated random n-grams),
once per parameterization: 'sp' and 'mup' with base width 64. Before each step and after the
last, the mean |x| of the embeddings, every attention and feed-forward output, every block
output and the logits. Writes results.csv, results.json (with the slopes of log2 mean |x|
against log2 width) and coord_check_sp.png, coord_check_mup.png.

Expected: see experiments/parameterization/coord_check.py's docstring and the numbers below.

Variants: `:tiny` (widths 32, 64, 128, 2 steps, 2 x 32 tokens: a smoke test in seconds).
"""

from experiments.parameterization import coord_check
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'parameterization/coord_check'
  c.data.vocab_size = 512
  c.data.seq_len = 64
  c.model.family = 'decoder'
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.activation = 'gelu'
  c.model.norm = 'rmsnorm'
  c.model.position = 'rope'
  c.model.tie_embeddings = True
  c.train.steps = 4
  c.train.batch_size = 8
  c.train.lr = 1e-2  # large enough that SP's growth shows within a few steps
  c.train.schedule = 'constant'
  c.train.warmup_steps = 0
  c.train.grad_clip = 0.0
  c.train.weight_decay = 0.0
  coord_check.with_section(c, widths=(64, 128, 256, 512, 1024), base_width=64)
  if arg == 'tiny':
    c.data.seq_len = 32
    c.train.batch_size = 2
    c.train.steps = 2
    c.coord_check.widths = (32, 64, 128)
    c.coord_check.base_width = 32
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
