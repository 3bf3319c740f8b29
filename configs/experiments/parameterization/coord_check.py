"""Coordinate check of μP against SP: mean |activation| per layer, widths 64 to 1024.

Run (this config is the command's default):
  python -m experiments.parameterization.coord_check --workdir=runs/coord_check

A 2-layer decoder (GELU, d_ff = 4 x d_model, RMSNorm, RoPE, 4 heads, tied 512-piece BPE
embeddings) at d_model 64, 128, 256, 512 and 1024, trained 4 steps of AdamW (lr 1e-2
constant, no warmup, clipping or weight decay) on 8 x 64-token batches of the embedded
Shakespeare corpus, once per parameterization: 'sp' and 'mup' with base width 64 (where the
two are the same model, bit for bit). Before each step and after the last, the mean |x| of the
embeddings, every attention and feed-forward output, every block output and the logits.
Writes results.csv, results.json (with the slopes of log2 mean |x| against log2 width) and
coord_check_sp.png, coord_check_mup.png: one panel per step, one line per layer, log-log.

Expected (measured 2026-12-04 on 2 shared CPU cores, 88 s for the whole command; results and
figures in benchmarks/results/parameterization_coord_check_shakespeare/). After step 4, from
d_model 64 to 1024:
  mup: logits 1.50 -> 1.65, block-1 output 2.19 -> 2.23, layer-0 attention 0.18 -> 0.25;
       slope per layer median 0.03, largest 0.15 (flat; at steps 1-3 the largest is 0.10-0.13).
  sp:  block-1 output 2.19 -> 154, layer-0 feed-forward 0.70 -> 121, attention 0.18 -> 20;
       slope median 1.67, largest 1.81 (a 16x wider model, ~100x larger activations).
At init (step 0) μP's logits fall as 1/sqrt(width) (slope -0.50: the 1/w readout multiplier on
O(sqrt(w)) dot products), as μP intends; SP's hidden outputs already grow there (slope ~1:
the init std is a constant 0.02, not 1/sqrt(fan_in)), and each step adds to it. The embeddings
stay flat under both. With `--config.coord_check.data=synthetic` (no corpus) the same command
measured mup median -0.15, largest 0.24 and sp median 1.62, largest 1.99 (97 s).

Variants: `:tiny` (widths 32, 64, 128, 2 steps of 2 x 32 synthetic tokens: a smoke test).
"""

from experiments.parameterization import coord_check
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'parameterization/coord_check'
  c.data.source = 'shakespeare'
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
  coord_check.with_section(c, widths=(64, 128, 256, 512, 1024), base_width=64, data='config')
  if arg == 'tiny':
    c.coord_check.data = 'synthetic'  # no corpus: tests build their own data
    c.data.seq_len = 32
    c.train.batch_size = 2
    c.train.steps = 2
    c.coord_check.widths = (32, 64, 128)
    c.coord_check.base_width = 32
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
