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

How long: an estimate, not a measurement of this command: about 21 minutes on 2 CPU cores,
plus the one-time preparation of the corpus when the data cache is cold (not timed). From short
timed runs on 2 cores shared with other jobs (load ~3.5): the base ~0.47 s a step (600 steps,
~5 minutes); a quantization or pruning ~2 s and each evaluation ~3 s (16 cases, ~1.5 minutes);
a 100-step fine-tune ~65 s (0.46 s a step + ~19 s of compiling, restoring and evaluating; 11 of
them, ~12 minutes); the distilled student ~0.19 s a step with its teacher and the scratch one
~0.11 s (~2.5 minutes together). Idle cores should be faster; 45 minutes is the budget.

Measured: not yet run.

Variants: `:tiny` (a 2 x 32 base, 2 steps a run, one sparsity: a test of the command).
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
    s.ptq.group_sizes = (0, 16)
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
