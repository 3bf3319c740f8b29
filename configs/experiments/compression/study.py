"""Compression of one Shakespeare decoder: quantization, pruning and distillation (issue 23).

Run:
  python -m experiments.compression.run \
      --config=configs/experiments/compression/study.py --workdir=runs/compression

What it runs (experiments/compression/run.py), all from ONE base decoder:
1. The base: 4 layers x d_model 128 (4 heads, RoPE, SwiGLU d_ff 512, 512-piece BPE), 600 steps
   of 16 x 128 tokens of the embedded Shakespeare corpus (seed 0), in WORKDIR/base.
2. Post-training weight quantization of its attention and feed-forward matrices (Qwix, through
   research.compress.quantize_workdir): int8 and int4, per output channel and per group of 32
   inputs, symmetric, plus asymmetric (zero point) at 4 bits: 6 quantized copies beside the
   float base. Measures validation perplexity, parameter bytes and checkpoint bytes.
3. Pruning (research.compress.prune_workdir): magnitude at sparsity 0.25 / 0.5 / 0.75 of every
   matrix, 2:4 (0.5), and structured heads (4 -> 3 / 2 / 1 per layer) and feed-forward channels
   (512 -> 384 / 256 / 128): perplexity one-shot and after a 100-step fine-tune (lr 1e-3, masks
   kept); and a control, the unpruned base fine-tuned the same 100 steps.
4. Distillation: a 2 x 64 student (2 heads) trained 400 steps of the base's batches, once
   distilled from the frozen base (alpha 0.5, T 2) and once from scratch; validation loss every
   100 steps (the curves) and at the end.
Every validation number is over the same 16 batches of 16 x 128 tokens; one seed.

Writes results.csv, results.md (a table per part and "what holds": int8 within 1 %, int4
within 5 %, groups vs channels, asymmetric vs symmetric, fine-tune recovery, distilled vs
scratch), ptq.png, pruning.png, distill.png and environment.json. Rerunning skips every
finished run (its result.json).

How long: 19.9 minutes measured on 2 CPU cores shared with other jobs (below); the heaviest
part is the eleven 100-step fine-tunes (25-110 s each, compile and restore included).

Measured 2026-12-04 on 2 CPU cores shared with other jobs (load about 4; 19.9 minutes for the
whole command; benchmarks/results/compression_shakespeare_cpu/, BENCHMARKS.md "Compression"):
the base reaches perplexity 11.192. PTQ: int8 per channel 11.193 (+0.01 %), int4 per channel
11.292 (+0.89 %), int4 groups of 32 11.260 (+0.60 %); asymmetric scales did not help at 4 bits
(11.306 / 11.264); parameter bytes 4,356 KiB float, 1,310 int8, 798 int4. Pruning at 0.5,
one-shot -> after 100 fine-tuning steps (the unpruned control fine-tuned alike: 10.939):
magnitude 11.834 -> 11.084, 2:4 13.558 -> 11.235, heads 15.719 -> 12.296, channels 17.055 ->
11.506; at 0.75 magnitude 18.2 -> 12.0, channels 44.9 -> 12.7. Distillation: the 2 x 64 student
distilled for 400 steps reaches validation loss 2.907 against 2.877 from scratch, so at this
budget (alpha 0.5, T 2, one seed) distillation did not beat training from scratch.

Variants: `:tiny` (a 2 x 32 base, 2 steps a run, 3 PTQ cases, magnitude pruning at one
sparsity: a test of the command).
"""

from experiments.compression import run
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'compression/study'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 512
  c.data.seq_len = 128

  c.model.family = 'decoder'
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.activation = 'swiglu'
  c.model.position = 'rope'

  c.train.steps = 600
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 50
  c.train.eval_every = 600
  c.train.eval_batches = 16
  c.train.checkpoint_every = 600
  c.train.keep_checkpoints = 1
  c.train.async_checkpoints = False

  run.with_section(c)

  if arg == 'tiny':
    c.data.seq_len = 32
    c.model.d_model = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.d_ff = 64
    c.train.steps = 2
    c.train.batch_size = 8  # the tests' 8 simulated devices split it
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.eval_batches = 1
    c.train.checkpoint_every = 2
    s = c.compression
    s.ptq.group_sizes = (16,)  # int8 and int4 in groups, and int4 asymmetric: 3 cases
    s.prune.methods = ('magnitude',)  # structured pruning: tests/compress/test_prune.py
    s.prune.sparsities = (0.5,)
    s.prune.finetune_steps = 2
    s.prune.finetune_warmup_steps = 1
    s.distill.d_model = 16
    s.distill.num_layers = 1
    s.distill.steps = 2
    s.distill.warmup_steps = 1
    s.distill.eval_every = 1
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
