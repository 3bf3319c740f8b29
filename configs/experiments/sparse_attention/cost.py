"""Cost of sparse attention vs sequence length: forward + backward time and memory, per pattern.

Run:
  python -m experiments.sparse_attention.run \
      --config=configs/experiments/sparse_attention/cost.py --workdir=runs/sparse_cost

One causal self-attention (batch 1, 2 heads x 64, float32 on CPU) at 1k to 32k tokens: full
causal attention and the mask-only control (sliding window computed as full scores, masked) in
XLA's einsums, against the block-sparse XLA kernels (research/layers/blockwise.py) for a causal
sliding window of W = 512, Longformer (W = 512 + 128 global tokens), BigBird (blocks of 128:
the window's blocks, one global block, 3 random blocks) and chunks of 512; 128-token tiles.
The dense cases stop at 16k (their 32k scores need ~24 GiB). Writes results.csv, results.md and
time/memory vs length plots (log-log, ideal slopes 1 and 2).

Expected on 2 CPU cores (targets of issue 7): from 8k to 16k tokens the windowed time grows at
most 2.3x while full causal grows at least 3.2x, and at 16k the windowed path is at least 8x
faster. Measured 2026-11-23 on 2 idle CPU cores (5m28s for the whole command, most of it the
dense cases at 16k): windowed growth 8k -> 16k 2.19x, full causal 6.13x, windowed 27.9x faster
at 16k; memory linear for every blockwise pattern (466 MiB at 16k for the window against
6,200 MiB for full attention). Tables and figures: BENCHMARKS.md ("Sparse and sliding-window
attention") and benchmarks/results/sparse_attention_cost_cpu/.

Variants:
  :gpu   the GPU study: 4k to 128k tokens, W = 4096, 8 heads x 128 in bfloat16, cuDNN's full and
         sliding-window flash attention added; targets from 16k to 32k (sliding:cudnn against
         full:cudnn). Unmeasured so far (no GPU lent).
  :tiny  lengths 256 and 512, two cases, one repeat: a smoke test of the command.
"""

from experiments.sparse_attention import run
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'sparse_attention/cost'
  c.data.seq_len = 1024  # unused by the cost study (its lengths are below)
  c.model.attention.window = 512
  c.model.attention.global_tokens = 128
  c.model.attention.block_size = 128
  c.model.attention.random_blocks = 3
  c.model.attention.chunk = 512
  run.with_section(c, kind='cost')

  if arg == 'gpu':
    c.model.attention.window = 4096
    c.model.attention.global_tokens = 512
    c.model.attention.block_size = 512
    c.model.attention.chunk = 4096
    s = c.sparse_attention
    s.lengths = (4096, 8192, 16384, 32768, 65536, 131072)
    s.heads, s.head_dim = 8, 128
    s.cases = 'full:xla,sliding:blockwise,longformer:blockwise,bigbird:blockwise,chunked:blockwise'
    s.gpu_cases = 'full:cudnn,sliding:cudnn'
    s.max_dense_bytes = 24e9
    s.repeats = 10
    s.warmup = 3
    s.targets.from_length, s.targets.to_length = 16384, 32768
    s.targets.windowed_case = 'sliding:cudnn'
    s.targets.full_case = 'full:cudnn'
  elif arg == 'tiny':
    c.model.attention.window = 64
    c.model.attention.global_tokens = 32
    c.model.attention.block_size = 32
    c.model.attention.chunk = 64
    s = c.sparse_attention
    s.lengths = (256, 512)
    s.cases = 'full:xla,sliding:blockwise'
    s.repeats = 1
    s.warmup = 0
    s.targets.from_length, s.targets.to_length = 256, 512
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
