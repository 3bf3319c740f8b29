"""Learning-rate transfer of μP against SP on the embedded Shakespeare corpus, on 2 CPU cores.

Run (this config is the command's default; a rerun continues where it stopped):
  python -m experiments.parameterization.run --workdir=runs/lr_transfer

A 2-layer decoder (GELU, d_ff = 4 x d_model, RMSNorm, RoPE, 4 heads, tied 512-piece BPE
embeddings) at five widths over 8x, d_model 32, 56, 88, 152 and 256 (log-spaced, factor
8^(1/4) = 1.68, rounded to multiples of 8), each trained at 7 learning rates 1e-3 x 10^(k/3),
k = 0..6 (1e-3 to 1e-1, 2 decades), once per parameterization: 'sp', and 'mup' with base width
32 (where the two are the same model). 70 runs of 400 steps of 8 x 64 tokens (205k tokens),
AdamW without weight decay (so the optimum is the learning rate's alone, not also the decay's),
gradient clipping at 1, 5% warmup and a cosine decay to lr / 10; the loss is the final
validation loss over the same 32 x 8 x 64 held-out tokens for every run.

Measured 2026-12-04 (the command above, 2 CPU cores shared with other jobs the whole time: a
benchmark, test runs and the IsoFLOP rerun; about 39 min wall with one restart, each half
reporting 14-15 min for its last 29-35 runs). Fitted lr* (parabola in log lr through each
curve's lowest point and its two neighbours) by width 32, 56, 88, 152, 256:
  sp:  3.75e-3, 3.87e-3, 3.32e-3, 2.02e-3, <= 1e-3 (at the grid's lower edge, not fitted);
       lr* ~ width^-0.39 over the bracketed widths, widest / narrowest 0.54 (or less)
  mup: 3.75e-3, 4.25e-3, 3.64e-3, 4.09e-3, 4.17e-3; lr* ~ width^0.03, widest / narrowest 1.11
μP's optimum holds still across 8x in width; SP's falls by 2x or more, already past the grid's
1e-3 at width 256, the direction of Yang et al. 2022's Figure 1 (SP with Adam), if less steep
than its -1. Best losses at the optimum: SP 3.49, 3.18, 3.01, 2.96, 2.91; μP 3.49, 3.33, 3.43,
3.31, 3.25 nats/token: at 400 steps SP's wider models, tuned per width, reach lower losses than
μP's at one shared rate (μP here has constant init at the base width and readout x 1/w; its
loss still falls with width, not monotonically at 88). The curves are bumpy at 1e-2 to 2e-2
(one seed, 400 steps). No run diverged. Table, lr* and plot:
benchmarks/results/parameterization_lr_transfer_shakespeare/.
What to look for: under μP the fitted lr* should hold still across widths (slope of
log2 lr* against log2 width near 0); under SP with Adam it should fall with width (Yang et al.
2022, Figure 1: an Adam step moves a hidden matrix's output by about lr x fan_in, so towards a
slope of -1). Everett et al. 2024 find SP with per-layer learning rates as good or better: rerun
with `--config.train.lr_exponents=...` (research/config_lib.py), in another workdir, to try it.

Variants: `:tiny` (widths 16 and 32, 2 learning rates, 3 steps of 2 x 16 tokens: a smoke test).
"""

from experiments.parameterization import run
from experiments.scaling_laws import sweep
from research import config_lib

WIDTHS = (32, 56, 88, 152, 256)
LRS = tuple(1e-3 * 10 ** (k / 3) for k in range(7))
STEPS, BATCH, SEQ_LEN = 400, 8, 64


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'parameterization/lr_transfer'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 512
  c.data.seq_len = SEQ_LEN

  c.model.family = 'decoder'
  c.model.activation = 'gelu'
  c.model.norm = 'rmsnorm'
  c.model.position = 'rope'
  c.model.tie_embeddings = True

  c.train.batch_size = BATCH
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.log_every = 50
  c.train.checkpoint_every = 1000  # runs of a minute: one checkpoint, at the end
  c.train.async_checkpoints = False

  sweep.with_sweep(
      c,
      sizes=tuple((w, 2, 4) for w in WIDTHS),  # 4 heads: head_dim grows (μP's 1/d attention)
      tokens=(STEPS * BATCH * SEQ_LEN,),
      ffn_ratio=4.0,
      lr_grid=LRS,
      base_width=WIDTHS[0],
      warmup_fraction=0.05,
      min_lr_ratio=0.1,
      min_steps=1,
      eval_batches=32)
  run.with_section(c, parameterizations=('sp', 'mup'), fit_neighbours=1)

  if arg == 'tiny':
    c.data.seq_len = 16
    c.train.batch_size = 2
    c.train.log_every = 1
    c.sweep.sizes = ((16, 1, 2), (32, 1, 2))
    c.sweep.tokens = (3 * 2 * 16,)
    c.sweep.lr_grid = (3e-3, 3e-2)
    c.sweep.base_width = 16
    c.sweep.eval_batches = 1
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
