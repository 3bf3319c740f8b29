"""Cost of recurrent sequence mixing vs length, beside full and sliding-window attention.

Run:
  python -m experiments.sequence_mixers.run \
      --config=configs/experiments/sequence_mixers/cost.py --workdir=runs/mixers_cost

Forward + backward of one layer's sequence mixing (batch 1, 4 heads x 64, float32 on CPU) at
1k to 32k tokens: the chunkwise kernel (research/layers/recurrent.py, chunks of 64) as
linear_attention, mamba2 (state_dim 64) and gated_deltanet run it, and sparse_attention's full
causal attention (XLA einsums) and causal sliding window of 512 (blockwise, 128-token tiles).
Full attention stops at 8k (its 16k scores need ~12 GiB > the 7.5 GiB limit).

Measured 2026-12-04 on 2 CPU cores shared with other jobs (269 s for the whole command; the
cores were loaded, so absolute times run high: full attention at 4k took 5.8 s here against
~2 s expected from the sparse-attention study's 2-head 0.99 s): at 32k tokens, Mamba-2 0.57 s
and linear attention 0.61 s (645 MiB each), Gated DeltaNet 2.21 s (1,251 MiB: its C x C solve
and the delta rule's extra terms), the sliding window of 512 1.89 s (1,844 MiB). Every recurrent
kernel grows about 2x per doubling (1.6-3.4x under the load) and its memory exactly 2x; full attention grows
5.5-8.4x per doubling and needs 3.1 GiB at 8k (35.8 s), where the recurrent kernels take
0.13-0.47 s and 161-313 MiB. Tables and figures: BENCHMARKS.md ("Sequence mixers") and
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
