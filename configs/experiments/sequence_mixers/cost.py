"""Cost of recurrent sequence mixing vs length, beside full and sliding-window attention.

Run:
  python -m experiments.sequence_mixers.run \
      --config=configs/experiments/sequence_mixers/cost.py --workdir=runs/mixers_cost

Forward + backward of one layer's sequence mixing (batch 1, 4 heads x 64, float32 on CPU) at
1k to 32k tokens: the chunkwise kernel (research/layers/recurrent.py, chunks of 64) as
linear_attention, mamba2 (state_dim 64) and gated_deltanet run it, and sparse_attention's full
causal attention (XLA einsums) and causal sliding window of 512 (blockwise, 128-token tiles).
Full attention stops at 8k (its 16k scores need ~12 GiB > the 7.5 GiB limit).

Measured 2026-12-04 on 2 quiet CPU cores (137 s for the whole command): at 32k tokens,
Mamba-2 0.46 s and linear attention 0.48 s (643-645 MiB), Gated DeltaNet 1.12 s (1,121 MiB:
the delta rule's K K^T, block inverse and extra products), the sliding window of 512 1.58 s
(1,844 MiB). Every recurrent kernel grows about 2x per doubling from 4k on (1.4-3.1x below,
where fixed costs show) and its memory exactly 2x; full attention grows 4.4-5.4x per doubling
and needs 3.1 GiB at 8k (8.1 s), where the recurrent kernels take 0.11-0.27 s and 161-280 MiB.
(A first run, on loaded cores and with the earlier repeated-squaring inverse, had Gated
DeltaNet at 2.21 s.) Tables and figures: BENCHMARKS.md ("Sequence mixers") and
benchmarks/results/sequence_mixers_cost_cpu/.

Variants: `:tiny` (lengths 256 and 512, one mixer, one repeat: a test of the command).
"""

from experiments.sequence_mixers import run
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'sequence_mixers/cost'
  c.data.seq_len = 1024  # unused by the cost study (its lengths are below)
  c.model.attention.window = 512
  c.model.attention.block_size = 128
  c.model.mixer.chunk_size = 64
  c.model.mixer.state_dim = 64
  run.with_section(c, kind='cost')
  if arg == 'tiny':
    c.model.attention.window = 64
    c.model.attention.block_size = 32
    s = c.sequence_mixers
    s.lengths = (256, 512)
    s.mixers = ('gated_deltanet',)
    s.max_dense_bytes = 2e6  # full attention stops at 512 (3 x 4 x 512^2 x 4 bytes > 2 MB)
    s.heads, s.head_dim = 2, 16
    s.repeats, s.warmup = 1, 0
  elif arg:
    raise config_lib.unknown_variant(arg, ('tiny',))
  return c
