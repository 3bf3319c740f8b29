"""GPT-2 small (124M) shape: 12 layers x 768, 12 heads, 1,024 context, tied embeddings.

Benchmark (one JSON line: tokens_per_sec, mfu, step_ms, peak_memory):
  python -m research.benchmark --config=configs/decoder/gpt2_small.py
Train on a real corpus (users with the dataset prepared in their TFDS data_dir):
  python -m research.train --config=configs/decoder/gpt2_small.py --config.data.source=tfds:lm1b \
      --workdir=runs/gpt2_small

Vocabulary 50,304: GPT-2's 50,257 padded to a multiple of 128 for fast matmuls. Learned absolute
positions, GELU, LayerNorm with biases, as GPT-2. About 124M parameters (85M non-embedding).
Expected: on one H100 (bf16, batch 32 x 1,024) see BENCHMARKS.md; on 2 CPU cores a few hundred
tokens/s (the benchmark runs there too, with a smaller batch).
"""

from research import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.name = 'decoder/gpt2_small'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 50_257
  c.data.seq_len = 1024
  c.data.workers = 4  # Grain processes per host build the batches (objective included)

  c.model.family = 'decoder'
  c.model.vocab_size = 50_304
  c.model.d_model = 768
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.d_ff = 3072
  c.model.activation = 'gelu'
  c.model.norm = 'layernorm'
  c.model.norm_eps = 1e-5
  c.model.position = 'learned'
  c.model.tie_embeddings = True
  c.model.use_bias = True
  c.model.scan_layers = True

  c.train.steps = 5000
  c.train.batch_size = 32
  c.train.lr = 6e-4
  c.train.warmup_steps = 700
  c.train.weight_decay = 0.1
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 1000
  return c
