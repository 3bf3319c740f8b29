"""Decoding cost of recurrent mixers against attention: tokens/s and cache bytes vs context.

Run:
  python -m experiments.sequence_mixers.run \
      --config=configs/experiments/sequence_mixers/decode.py --workdir=runs/mixers_decode

The quality study's decoder shape (4 layers x d_model 128, 4 heads, 512-token vocabulary; random
weights: speed and memory do not depend on them), batch 1, greedy decoding at
contexts (prompt + 64 generated tokens) of 256, 1k and 4k (16k did not fit the CPU budget: full
attention's dense prefill there takes minutes a call): full attention (a cache slot per
position), attention in a causal sliding window of 256 (a rolling cache of 256 slots), linear
attention, Mamba-2, Gated DeltaNet (a constant state) and 3 Gated DeltaNet : 1 attention.
Tokens/s: one decoding step against a cache of the context's length (median of 8, after a
compiling one); prefill: research.inference.decoding.generate with one new token (one timed
call after a compiling one).

Measured 2026-12-04 on 2 quiet CPU cores (103 s): cache at 256 / 1k / 4k, attention 1.00 /
4.03 / 16.1 MiB, sliding@256 1.00 / 1.01 / 1.01 MiB (rolling), linear attention 0.06, Mamba-2
0.27, Gated DeltaNet 0.08 MiB at every context, the 3:1 hybrid 0.31 / 1.07 / 4.09 MiB. Tokens/s
at 256 / 1k / 4k: attention 2,795 / 1,097 / 366, sliding 2,339 / 1,800 / 2,362, linear
attention 5,175 / 5,169 / 4,243, Mamba-2 2,604 / 2,568 / 2,733, Gated DeltaNet 2,456 / 2,384 /
1,799, the hybrid 1,790 / 987 / 473. Prefill at 4k: attention 1.59 s, the recurrent mixers
0.09-0.19 s. Tables and figure: BENCHMARKS.md ("Sequence mixers") and
benchmarks/results/sequence_mixers_decode_cpu/.

Variants: `:tiny` (two variants, contexts 48 and 96, 8 tokens: a test of the command).
"""

from experiments.sequence_mixers import run
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'sequence_mixers/decode'
  c.data.vocab_size = 512
  c.data.seq_len = 256
  c.model.family = 'decoder'
  c.model.vocab_size = 512
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.activation = 'swiglu'
  c.model.position = 'rope'
  c.model.mixer.chunk_size = 64
  # 16k left out: full attention's dense 16k prefill (12 GiB, minutes a call on 2 cores) did not
  # fit the study's CPU budget.
  run.with_section(c, kind='decode', **{'decode.repeats': 1,
                                         'decode.contexts': (256, 1024, 4096)})

  if arg == 'tiny':
    c.data.seq_len = 32
    c.model.d_model = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.mixer.chunk_size = 16
    d = c.sequence_mixers.decode
    d.variants = ('sliding@16', 'gated_deltanet')
    d.contexts = (48, 96)
    d.new_tokens = 8
  elif arg:
    raise config_lib.unknown_variant(arg, ('tiny',))
  return c
