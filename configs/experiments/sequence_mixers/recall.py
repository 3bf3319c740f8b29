"""Multi-query associative recall (MQAR, Zoology) of attention, recurrent mixers and hybrids.

Run:
  python -m experiments.sequence_mixers.run \
      --config=configs/experiments/sequence_mixers/recall.py --workdir=runs/mixers_recall

Sequences of 64 tokens (experiments/sequence_mixers/mqar.py): n key-value pairs (32 keys, 32
values: chance 1/32), then each key queried once at a random place; accuracy over the queries
only, per n in (2, 4, 8, 16). Decoders of 4 layers (RoPE, SwiGLU, 2 heads) at d_model 32 and 64
(Zoology varies the width: a recurrent layer's state grows with it): attention, linear
attention, Mamba-2 (state_dim 16: its state, 16 x 2 d_model floats, equals Gated DeltaNet's 2 x
(d_model / 2)^2 at d_model 64), Gated DeltaNet, 3 Gated DeltaNet : 1 attention, and 7 : 1 in 8
layers. Each model trains once on a mixture of the four n: 600 steps of 32 sequences at lr 1e-2
(sized to the CPU budget; far from Zoology's ~100k sequences x many epochs, so accuracies are
those of short training, not of converged models; a first try at 128 tokens, 64 keys and lr 3e-3
left attention at chance after 400 steps).

Measured 2026-12-04 on 2 CPU cores (about 30 minutes, beside the decode command and other
jobs): accuracy over queries at 2 / 4 / 8 / 16 pairs, d_model 64: attention 0.500 / 0.256 /
0.144 / 0.104, linear attention 0.568 / 0.303 / 0.141 / 0.073, Mamba-2 0.057 / 0.052 / 0.040 /
0.035, Gated DeltaNet 0.057 / 0.061 / 0.052 / 0.036, 3:1 hybrid 0.070 / 0.071 / 0.044 / 0.035,
7:1 hybrid (8 layers) 0.064 / 0.049 / 0.043 / 0.033 (chance 0.031); d_model 32 lower still.
No model learned the recall at this budget: attention and linear attention reach about 1/n
(they pick one of the sequence's values), the others stay near chance, so whether a hybrid
restores recall is not answered here; it needs recall.steps of a few thousand. Table and
figure: BENCHMARKS.md ("Sequence mixers") and benchmarks/results/sequence_mixers_recall_cpu/.

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
  c.model.mixer.chunk_size = 64
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
