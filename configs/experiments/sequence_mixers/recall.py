"""Multi-query associative recall (MQAR, Zoology) of attention, recurrent mixers and hybrids.

Run:
  python -m experiments.sequence_mixers.run \
      --config=configs/experiments/sequence_mixers/recall.py --workdir=runs/mixers_recall

Sequences of 64 tokens (experiments/sequence_mixers/mqar.py): n key-value pairs (32 keys, 32
values: chance 1/32), then each key queried once at a random place; accuracy over the queries
only, per n in (2, 4, 8). Decoders of 2 layers (RoPE, SwiGLU, 2 heads) at d_model 32 and 64
(Zoology varies the width: a recurrent layer's state grows with it): attention, linear
attention, Mamba-2 (state_dim 16: its state, 16 x 2 d_model floats, equals Gated DeltaNet's 2 x
(d_model / 2)^2 at d_model 64) and Gated DeltaNet; at d_model 64 also a 3:1 Mamba-2 : attention
hybrid in 4 layers, a 7:1 one in 8, and 4-layer attention as the 3:1 hybrid's depth-matched
control (`recall.hybrid_widths`). Each model trains once on a mixture of the three n: 1,400
steps of 64 sequences at lr 1e-3 (a probe found attention learns the task at 2 layers, lr 1e-3,
batch 64 within ~1,200 steps; lr 1e-2 and 3e-3 left it at about 1/n).

Measured 2026-12-05 on 2 quiet CPU cores: 42.5 minutes for the whole command (under the 45
asked; the 7:1 hybrid alone 11.6). Accuracy at 2 / 4 / 8 pairs, d_model 64: attention 0.994 /
0.982 / 0.959; linear attention 0.730 / 0.471 / 0.302, Mamba-2 0.684 / 0.480 / 0.272, Gated
DeltaNet 0.771 / 0.548 / 0.291; 4-layer attention 0.752 / 0.564 / 0.388; 3:1 hybrid (4 layers)
0.377 / 0.219 / 0.127; 7:1 (8 layers) 0.045 / 0.052 / 0.046. At d_model 32 no model has learned
the task yet (attention 0.461 / 0.261 / 0.172; linear attention and Gated DeltaNet 0.69 /
0.41-0.43 / 0.18-0.23).
What holds: at equal width and depth attention recalls and every recurrent mixer falls with
the number of pairs (Zoology's result); the hybrids do not restore recall at this budget,
because deeper models learn MQAR more slowly here (the 4-layer attention control is itself
still learning), so whether a trained hybrid recovers attention's recall needs longer runs.
A first run at model.mixer.chunk_size 64 (one chunk per sequence; the same function, chunking
is exact: tests/layers/test_mixers.py) agreed within 0.025 on the 2-layer models but Gated
DeltaNet at 64 (up to 0.07) and the partly trained 3:1 hybrid (0.18 / 0.15 / 0.10): run-to-run
spread from float rounding. Chunks of 16 train the recurrent mixers about a third faster on
CPU.
Table and figure: BENCHMARKS.md ("Sequence mixers") and benchmarks/results/
sequence_mixers_recall_cpu/.

Variants: `:tiny` (one hybrid, one width, a few steps: a test of the command).
"""

from experiments.sequence_mixers import run
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'sequence_mixers/recall'
  c.model.family = 'decoder'
  c.model.num_layers = 2
  c.model.activation = 'swiglu'
  c.model.position = 'rope'
  c.model.mixer.chunk_size = 16  # 4 chunks of 64 tokens: a third faster than one chunk on CPU
  c.model.mixer.state_dim = 16
  c.model.mixer.kernel_remat = False  # tiny models: memory is no concern, time is
  c.train.async_checkpoints = False
  run.with_section(c, kind='recall', **{
      'recall.variants': ('attention', 'linear_attention', 'mamba2', 'gated_deltanet',
                          'attention/4', 'mamba2*3,attention/4', 'mamba2*7,attention/8'),
      'recall.widths': (32, 64), 'recall.hybrid_widths': (64,),
      'recall.seq_len': 64, 'recall.kv_pairs': (2, 4, 8), 'recall.num_keys': 32,
      'recall.num_values': 32, 'recall.steps': 1400, 'recall.batch_size': 64,
      'recall.lr': 1e-3})

  if arg == 'tiny':
    c.model.num_layers = 2
    c.model.mixer.chunk_size = 16
    r = c.sequence_mixers.recall
    r.variants = ('gated_deltanet*1,attention',)
    r.widths = (16,)
    r.hybrid_widths = ()
    r.kv_pairs = (2, 4)
    r.seq_len = 32
    r.steps = 2
    r.batch_size = 8  # the tests' 8 simulated devices split it
    r.warmup_steps = 1
    r.eval_examples = 8
  elif arg:
    raise config_lib.unknown_variant(arg, ('tiny',))
  return c
