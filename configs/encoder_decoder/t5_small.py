"""T5 v1.1 small shape: 8 + 8 layers x 512, 6 heads of 64, gated-GELU 1,024, untied output.

Benchmark (one JSON line: tokens_per_sec, mfu, step_ms, peak_memory):
  python -m research.benchmark --config=configs/encoder_decoder/t5_small.py
Pre-train by span corruption on a real corpus (users with the dataset in their TFDS data_dir):
  python -m research.train --config=configs/encoder_decoder/t5_small.py \
      --config.data.source=tfds:c4 --workdir=runs/t5_small
Load Google's checkpoint instead (a local Hugging Face directory, e.g. google/t5-v1_1-small):
  from research.models import hf; config, params = hf.convert('/path/to/t5-v1_1-small')

As T5 v1.1 (Raffel et al. 2020; T5X's t5_1_1 small gin): RMSNorm pre-norm, no biases, unscaled
attention, 32-bucket relative position bias (max distance 128) shared by each stack's layers,
GeGLU, untied unembedding, no dropout in pre-training, inputs of 512 tokens (568 raw tokens,
targets of 114). Vocabulary 32,128: T5's 32,000 SentencePiece pieces padded to a multiple of 128.
76,961,152 parameters (44.1M outside the two embedding tables), as google/t5-v1_1-small.
T5 pre-trains on batches of 128 x 512 tokens for 2^19 steps (2^35 tokens) with Adafactor at
1e-2 and inverse-square-root decay; this config keeps the batch and the steps and uses
lmforge's AdamW with warmup and cosine decay.
"""

from research import config_lib


def t5_v1_1(c, *, d_model: int, num_layers: int, num_heads: int, d_ff: int):
  """The T5 v1.1 settings shared by the small and base shapes."""
  c.data.source = 'shakespeare'
  c.data.vocab_size = 32_000
  c.data.seq_len = 512
  c.data.workers = 4  # Grain processes per host build the batches (objective included)
  c.data.num_sentinels = 100

  c.model.family = 'encoder_decoder'
  c.model.vocab_size = 32_128
  c.model.d_model = d_model
  c.model.num_layers = num_layers  # each of the encoder and the decoder
  c.model.num_heads = num_heads
  c.model.head_dim = 64
  c.model.d_ff = d_ff
  c.model.activation = 'geglu'
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = 1e-6
  c.model.position = 'relative'
  c.model.relative_buckets = 32
  c.model.relative_max_distance = 128
  c.model.attention_scale = 1.0
  c.model.tie_embeddings = False
  c.model.use_bias = False
  c.model.dropout = 0.0
  c.model.scan_layers = True

  c.objective.name = 'span_corruption'
  c.objective.noise_density = 0.15
  c.objective.mean_span_length = 3.0

  c.train.steps = 524_288
  c.train.batch_size = 128
  c.train.micro_batches = 1
  c.train.lr = 1e-3
  c.train.warmup_steps = 10_000
  c.train.schedule = 'cosine'
  c.train.weight_decay = 0.0
  c.train.log_every = 100
  c.train.eval_every = 5000
  c.train.eval_batches = 20
  c.train.checkpoint_every = 5000
  return c


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.name = 'encoder_decoder/t5_small'
  return t5_v1_1(c, d_model=512, num_layers=8, num_heads=6, d_ff=1024)
