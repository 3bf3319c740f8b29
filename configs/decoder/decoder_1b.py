"""A 1.3B decoder (GPT-3 XL shape): 24 layers x 2,048, 16 heads of 128, 2,048 context.

Benchmark on one H100 (target: at least 50 % MFU in bfloat16; one JSON line):
  python -m research.benchmark --config=configs/decoder/decoder_1b.py --steps=10
Side by side with the PyTorch peer at the same shape: benchmarks/gpu_side_by_side.sh.
Train on a real corpus (users with the dataset prepared in their TFDS data_dir):
  python -m research.train --config=configs/decoder/decoder_1b.py --config.data.source=tfds:c4 \
      --workdir=runs/decoder_1b

GPT-style, as GPT-2 and GPT-3 XL: GELU MLP (4 x d_model), LayerNorm with biases, learned
positions, tied embeddings, vocabulary 50,304 (GPT-2's 50,257 padded to a multiple of 128).
GELU rather than SwiGLU so that the PyTorch peer (benchmarks/peer_gpt2_torch.py, transformers'
GPT-2 at --n_layer=24 --n_embd=2048 --n_head=16) runs the very same FLOPs; at this width the
two MLPs cost about the same (SwiGLU at d_ff 5,632: 34.6M weights a layer; GELU: 33.6M).
About 1.31B parameters (1.21B non-embedding); 8.5 GFLOP a token for training (flops.py).

Memory on one 80 GB H100: parameters, gradients and AdamW moments in float32 take about 21 GB,
so no rematerialisation (remat costs compute that MFU does not count) and the batch of 16
sequences (32,768 tokens) runs as 4 micro-batches of 4 x 2,048 tokens, whose activations
(bfloat16) fit beside the state; the loss takes 512 positions at a time, so the 4 x 2,048 x
50,304 float32 logits (1.6 GB, and as much again for their gradient) never exist whole. If a
GPU runs out of memory, `--config.model.remat=dots` keeps only matmul outputs.
Expected on one H100: at least 50 % MFU (BENCHMARKS.md; not yet measured). On CPU the
benchmark runs with one sequence; `:tiny` is the shared smoke-test shape.

Variants: `:tiny` (a few steps, for smoke tests).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'decoder/decoder_1b'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 50_257
  c.data.seq_len = 2048
  c.data.workers = 4  # Grain processes per host build the batches (objective included)

  c.model.family = 'decoder'
  c.model.vocab_size = 50_304
  c.model.d_model = 2048
  c.model.num_layers = 24
  c.model.num_heads = 16  # head_dim 128: cuDNN flash attention's sweet spot
  c.model.d_ff = 8192
  c.model.activation = 'gelu'
  c.model.norm = 'layernorm'
  c.model.norm_eps = 1e-5
  c.model.position = 'learned'
  c.model.tie_embeddings = True
  c.model.use_bias = True
  c.model.scan_layers = True  # one compiled layer: compile time independent of depth
  c.model.remat = 'none'
  c.model.loss_chunk_size = 512

  c.train.steps = 20_000
  c.train.batch_size = 16
  c.train.micro_batches = 4
  c.train.lr = 2e-4  # GPT-3 XL
  c.train.warmup_steps = 1000
  c.train.weight_decay = 0.1
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000

  if arg == 'tiny':
    c.data.workers = 0
    config_lib.shrink_for_smoke_test(c)
    c.model.vocab_size = 0  # the shrunk data vocabulary
    c.model.d_ff = 0
    c.train.micro_batches = 1
    c.model.loss_chunk_size = 16
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
