"""Learning-rate transfer of μP against SP on the embedded Shakespeare corpus, on 2 CPU cores.

Run (this config is the command's default; a rerun continues where it stopped):
  python -m experiments.parameterization.run --workdir=runs/lr_transfer

A 2-layer decoder (GELU, d_ff = 4 x d_model, RMSNorm, RoPE, 4 heads, tied 512-piece BPE
embeddings) at five widths over 8x, d_model 32, 56, 88, 152 and 256 (log-spaced, factor
8^(1/4) = 1.68, rounded to multiples of 8), each trained at 7 learning rates 1e-3 x 10^(k/3),
k = 0..6 (1e-3 to 1e-1, 2 decades), once per parameterization: 'sp', and 'mup' with base width
32 (where the two are the same model). 70 runs of 300 steps of 8 x 64 tokens (154k tokens),
AdamW without weight decay (so the optimum is the learning rate's alone, not also the decay's),
gradient clipping at 1, 5% warmup and a cosine decay to lr / 10; the loss is the final
validation loss over the same 32 x 8 x 64 held-out tokens for every run.

Expected: NOT YET RUN. Time, an ESTIMATE until the real run: about 30 min wall on 2 CPU cores.
Measured 2026-12-04 with two 80-step runs of this config in one process (the sweep runner,
lr 3e-3, sp), both cores shared with another job (load average 4.6): a step
took 0.009 s at width 32 and 0.12-0.20 s at width 256 (about 0.15), and each run spent about
9 s outside its steps (compiling, the final evaluation, one checkpoint). Per learning rate and
parameterization, 5 runs x 9 s + 300 steps x (0.009 + 0.016 + 0.03 + 0.075 + 0.15 s, the middle
widths interpolated) = 129 s; x 14 = 30 min; less on idle cores.
What to look for: under μP the fitted lr* should hold still across widths (slope of
log2 lr* against log2 width near 0); under SP with Adam it should fall with width (Yang et al.
2022, Figure 1; hidden matrices' updates grow as lr x fan_in, so towards a slope of -1; Everett
et al. 2024 find SP's optimum moves less once the per-layer rates are tuned).

Variants: `:tiny` (widths 16 and 32, 2 learning rates, 3 steps of 2 x 16 tokens: a smoke test).
"""

from experiments.parameterization import run
from experiments.scaling_laws import sweep
from research import config_lib

WIDTHS = (32, 56, 88, 152, 256)
LRS = tuple(1e-3 * 10 ** (k / 3) for k in range(7))
STEPS, BATCH, SEQ_LEN = 300, 8, 64


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
