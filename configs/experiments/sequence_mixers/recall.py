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

Measured: see the end of this docstring (filled in after the run).

Variants: `:smoke` (one hybrid, one width, a few steps: a test of the command).
"""

from experiments.sequence_mixers import run
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'sequence_mixers/recall'
  c.model.family = 'decoder'
  c.model.num_layers = 4
  c.model.activation = 'swiglu'
  c.model.position = 'rope'
  c.model.mixer.chunk_size = 64
  c.model.mixer.state_dim = 16
  c.train.async_checkpoints = False
  run.with_section(c, kind='recall', **{
      'recall.seq_len': 64, 'recall.kv_pairs': (2, 4, 8, 16), 'recall.num_keys': 32,
      'recall.num_values': 32, 'recall.steps': 600, 'recall.lr': 1e-2})

  if arg == 'smoke':
    c.model.num_layers = 2
    c.model.mixer.chunk_size = 16
    r = c.sequence_mixers.recall
    r.variants = ('gated_deltanet*1,attention',)
    r.widths = (16,)
    r.kv_pairs = (2, 4)
    r.seq_len = 32
    r.steps = 2
    r.batch_size = 8  # the tests' 8 simulated devices split it
    r.warmup_steps = 1
    r.eval_examples = 8
  elif arg:
    raise config_lib.unknown_variant(arg, ('smoke',))
  return c
