"""Quality of recurrent sequence mixers: Shakespeare validation loss at equal parameters and steps.

Run:
  python -m experiments.sequence_mixers.run \
      --config=configs/experiments/sequence_mixers/quality.py --workdir=runs/mixers_quality

Four-layer decoders (d_model 128, 4 heads, RoPE, SwiGLU, 512-piece BPE) on 256-token windows:
attention in every layer, linear attention, Mamba-2 and Gated DeltaNet in every layer, and
three Gated DeltaNet layers : one attention layer; each trained the same steps of the same
batches (seed 0). The recurrent layers have more parameters than attention's four projections,
so each variant's model.d_ff is set (sequence_mixers.match_params) so that its parameter count
matches attention's (within 0.5 %: d_ff moves in steps of 8, 3 x 128 x 8 parameters a layer,
and a hybrid's layers differ).

Measured 2026-12-04 on 2 CPU cores shared with other jobs (15.6 minutes for the command, 2.4-4.3
minutes a run): validation loss (16 batches of 16 x 256) after 200 steps, one seed, parameters
in brackets: attention 2.753 (1,115,264; d_ff 512), linear attention 3.243 (1,115,264; its
projections are attention's), Mamba-2 2.529 (1,112,240; d_ff 376), Gated DeltaNet 2.611
(1,117,856; d_ff 464), 3 Gated DeltaNet : 1 attention 2.597 (1,111,064; d_ff 472). At this
short budget the mixers with a short convolution and a decay (Mamba-2, Gated DeltaNet, the
hybrid) are ahead of attention by 0.14-0.22 nats and plain linear attention is 0.49 behind;
one seed and 200 steps, so the ranking among the first three is not established (the
sparse-attention study found seed-to-seed spreads of ~0.07 at a similar size). Table and
figure: benchmarks/results/sequence_mixers_quality_cpu/.

Variants: `:tiny` (two variants, a few steps: a test of the command).
"""

from experiments.sequence_mixers import run
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'sequence_mixers/quality'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 512
  c.data.seq_len = 256

  c.model.family = 'decoder'
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.activation = 'swiglu'
  c.model.position = 'rope'
  c.model.mixer.chunk_size = 64

  c.train.steps = 200
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 50
  c.train.eval_every = 200
  c.train.eval_batches = 16
  c.train.checkpoint_every = 200
  c.train.async_checkpoints = False

  run.with_section(c, kind='quality')

  if arg == 'tiny':
    c.data.seq_len = 32
    c.model.d_model = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.mixer.chunk_size = 16
    c.train.steps = 2
    c.train.batch_size = 8  # the tests' 8 simulated devices split it
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.eval_batches = 1
    c.train.checkpoint_every = 2
    c.sequence_mixers.variants = ('attention', 'gated_deltanet*1,attention')
  elif arg:
    raise config_lib.unknown_variant(arg, ('tiny',))
  return c
