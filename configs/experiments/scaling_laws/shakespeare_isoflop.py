"""IsoFLOP scaling-law sweep on the embedded Shakespeare corpus: 3 budgets x 5 sizes on CPU.

Run (then fit again at will; run.py already fits into runs/scaling/fit):
  python -m experiments.scaling_laws.run \
      --config=configs/experiments/scaling_laws/shakespeare_isoflop.py --workdir=runs/scaling
  python -m experiments.scaling_laws.fit --data=runs/scaling/results.csv --out=runs/scaling/fit

15 decoder runs (RoPE/SwiGLU/RMSNorm, tied 512-piece BPE embeddings, 8 x 128-token batches) at
three IsoFLOP budgets, 2e11, 6e11 and 1.8e12 training FLOP (the trainer's exact count: 6 x matmul
parameters plus causal attention; 6ND is 79-88% of it at these sizes), each with the five of
seven sizes (12k to 234k parameters, 3k to 201k without embeddings) that train on 2 to 600 tokens
a parameter. Each size gets lr 3e-3 x (128 / d_model)^0.5, 5% warmup and a cosine decay to lr / 10
at its last step (341 to 9,069 steps); the loss is the final validation loss on the same
96 x 8 x 128 held-out tokens for every run. At these budgets optimizer steps are scarce: a batch
of 16 sequences (pilot) put the smallest budget's minimum below the smallest size.

Expected (measured 2026-11-23, the full command on a fresh workdir, 2 CPU cores: 22.4 min wall
(1,341 s) with the sweep using one core and a niced test job pinned to the other; 48.6 min wall
when the cores were shared with other jobs at load average 5-8; the numbers below came out the
same, to the last digit, both times): IsoFLOP minima at N_opt = 21k, 39k and 89k parameters
(61, 55 and 32 tokens a parameter; losses 2.96, 2.74, 2.52 nats/token), each inside its sizes.
Fitted exponents N_opt ~ C^a, D_opt ~ C^b: Approach 2 a = 0.65 [0.54, 0.74], b = 0.37
[0.28, 0.48]; Approach 3 (L = E + A/N^alpha + B/D^beta) E = 2.20, alpha = 0.61, beta = 1.16,
a = 0.66 [0.43, 0.87]; Approach 1 a = 0.79 (3 envelope points, wide interval); Kaplan
alpha_N = 0.11, alpha_D = 0.38 (95% intervals from 100 bootstrap resamples). At this tiny scale
the optimal model grows faster with compute than Chinchilla's a = 0.5. fit/ holds fit.json and
isoflop.png (three parabolas with their minima), loss_vs_compute.png, optimal_allocation.png
and fitted_vs_observed.png (Approach 3 rms log error 0.012).

The measured run's results.csv, fit.json and figures: benchmarks/results/scaling_laws_shakespeare/.

Variants: `:tiny` (2 sizes x 2 budgets of a few steps, for smoke tests of the whole command);
`:mup`, the same grid under μP (experiments/parameterization): every size gets
model.parameterization='mup' with base width 32 and one learning rate, 6e-3, instead of the
per-size rule (6e-3 is the rule's rate at d_model 32, so the rerun differs from the fit above
only in how the rate follows width: hidden matrices at 6e-3 x 32 / d_model, embeddings and
norms at 6e-3, the logits scaled by 32 / d_model). Replace it by the μP optimum at width 32 of
the learning-rate transfer study (configs/experiments/parameterization/lr_transfer.py; a
2-layer GELU model on 64-token sequences, so a guide, not this grid's exact optimum):
  python -m experiments.scaling_laws.run \
      --config=configs/experiments/scaling_laws/shakespeare_isoflop.py:mup \
      --workdir=runs/scaling_mup [--config.sweep.base_lr=LR_STAR]
Measured for `:mup` (2026-12-04, the command above with the default base_lr 6e-3, fresh
workdir, 2 CPU cores shared with the transfer study and other jobs: 17.2 min): IsoFLOP minima at
N_opt = 22k, 36k and 76k parameters, losses 2.99, 2.73, 2.52 nats/token (per-size rule: 2.96,
2.74, 2.52), the profiles noisier about their parabolas. Fitted a: Approach 2 a = 0.56 [0.51,
0.70] (per-size rule 0.65 [0.54, 0.74]), b = 0.45 [0.33, 0.50]; Approach 3 a = 0.44 [0.17,
0.75] (0.66 before), alpha = 0.92, beta = 0.72, rms log error 0.023 (0.012 before);
Approach 1 a = 0.51 [0.23, 1.04]; Kaplan L(N, D) a = 0.54 [0.45, 0.67]. With one transferred learning rate instead of the hand rule, a
moves from 0.65 towards Chinchilla's 0.5 in every approach, as Porian et al. (2024) argue
per-size recipes can do; the intervals still overlap (15 runs, 3 budgets). Results, fit.json
and figures: benchmarks/results/scaling_laws_shakespeare_mup/.
"""

from experiments.scaling_laws import sweep
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'scaling_laws/shakespeare_isoflop'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 512  # small, so embeddings do not dominate these tiny models
  c.data.seq_len = 128

  c.model.family = 'decoder'
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.position = 'rope'
  c.model.tie_embeddings = True

  c.train.batch_size = 8  # 1,024 tokens a step: at these budgets, optimizer steps are scarce
  c.train.lr = 3e-3  # at d_model = sweep.lr_ref_width
  c.train.weight_decay = 0.1
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.async_checkpoints = False

  sweep.with_sweep(
      c,
      # (d_model, num_layers, num_heads): 12k, 15k, 26k, 43k, 80k, 147k, 234k parameters.
      sizes=((16, 1, 2), (16, 2, 2), (24, 2, 2), (32, 2, 2), (40, 3, 2), (56, 3, 4),
             (64, 4, 4)),
      budgets=(2e11, 6e11, 1.8e12),
      flops_rule='exact',
      ffn_ratio=8 / 3,  # SwiGLU at 8/3 x d_model (rounded up to 16), not the 256-multiple default
      ffn_multiple=16,
      lr_ref_width=128,
      lr_width_power=0.5,
      warmup_fraction=0.05,
      min_lr_ratio=0.1,
      min_steps=40,
      # Five sizes per budget, 2 to 600 tokens a parameter: IsoFLOP parabolas fit the sizes
      # around each budget's optimum, not the far-undertrained ones (0.5 to 1.6 tokens a
      # parameter) nor those that would see the data more than four times.
      min_tokens_per_param=2.0,
      max_tokens_per_param=600.0,
      eval_batches=96,
      fit_bootstrap=100)

  if arg == 'tiny':
    c.data.seq_len = 64
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.sweep.sizes = ((16, 1, 2), (32, 1, 2))
    c.sweep.budgets = (1e9, 2e9)
    c.sweep.min_steps = 5
    c.sweep.min_tokens_per_param = 0.0
    c.sweep.max_tokens_per_param = 0.0
    c.sweep.eval_batches = 2
    c.sweep.fit_bootstrap = 0
  elif arg == 'mup':
    c.name = 'scaling_laws/shakespeare_isoflop_mup'
    c.sweep.parameterization = 'mup'
    c.sweep.base_width = 32
    c.sweep.base_lr = 6e-3  # the SP rule's rate at d_model 32: see the docstring
    c.sweep.lr_width_power = 0.0  # the parameterization sets the rate per width
  elif arg:
    raise config_lib.unknown_variant(arg, ('tiny', 'mup'))
  return c
