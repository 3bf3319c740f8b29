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

Expected: NOT YET RUN. Time, an ESTIMATE until the real run: about 30 min wall on 2 CPU cores.
Measured 2026-12-04 with short runs of this config in one process (the sweep runner, sp,
lr 3e-3; 80 steps at widths 32 and 256, 100 steps at 56, 88, 152 and 256), both cores shared
with another job (load average 3.6-4.6): a step took 0.0085, 0.0135, 0.021, 0.038 and 0.116 s
at widths 32, 56, 88, 152 and 256, and each run spent 9-12 s outside its steady steps
(compiling, the first steps, the final evaluation, one checkpoint). Per learning rate and
parameterization, 5 runs x 9.5 s + 400 steps x 0.197 s = 126 s; x 14 = 29 min, plus a minute
for the corpus and the grids; less on idle cores.
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
