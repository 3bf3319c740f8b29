"""Llama 3.1 8B (meta-llama/Llama-3.1-8B) in lmforge's own fields: 32 layers x 4,096, grouped-query
attention with 32 query and 8 key/value heads of 128, SwiGLU 14,336, RMSNorm (eps 1e-5), RoPE with
base 500,000 and Llama 3 frequency scaling (factor 8, low 1, high 4, original context 8,192),
vocabulary 128,256, untied input and output embeddings: the published config.json, field by field.

8,030,261,248 parameters, exactly: research.plan's count (jax.eval_shape of the trainer's state)
equals transformers' LlamaForCausalLM built from that config.json (tests/test_open_model_configs.py
types the config.json in and checks both).

Import the released weights (a local Hugging Face directory; sharded safetensors are read one
tensor at a time), then sample or fine-tune from them (the model section comes from the import's
config.json; text needs Llama 3's tokenizer.json, which data.tokenizer takes):
  python -m research.convert --from=hf --hf_dir=DIR --workdir=runs/llama3_1_8b \
      --config.model.scan_layers=true --config.mesh.preset=fsdp
  python -m research.sample --workdir=runs/llama3_1_8b --prompt="The capital of France is"
  python -m research.train --config=configs/finetune/sft.py:lora \
      --config.init_from=runs/llama3_1_8b --config.finetune.train_data=DATA.jsonl \
      --workdir=runs/llama3_1_8b_lora

Plan and compile before launching (research.plan: 0.3 s; research.aot: about 2 min on 2 busy CPU
cores, libtpu needed, no TPU):
  python -m research.plan --config=configs/decoder/llama3_1_8b.py --device=h100-80gb \
      --num_devices=64
    fits on h100-80gb: 42.08 GiB of 72.00 GiB usable (80 GiB less 10% headroom), 58%
    FLOPs: 5.15e+10 per token, 2.16e+17 per step
  python -m research.aot --config=configs/decoder/llama3_1_8b.py --topology=v5p:2x2x2 \
      --config.train.micro_batches=64
    v5p:2x2x2: 8 x TPU v5 on 2 host(s), mesh data=1 x stage=1 x fsdp=8 x expert=1 x context=1 x tensor=1
      per device: arguments 11.23 GiB, temporaries 33.67 GiB, outputs 11.22 GiB (11.22 GiB donated)
      peak 44.90 GiB: fits in 95.00 GiB of HBM
On TPUs full attention runs on XLA (model.attention.implementation='auto'), which materialises
the float32 [8,192 x 8,192] scores of every head: one sequence per chip per micro-batch there,
hence the micro-batches (8 chips hold the whole state: 16 GiB each). On GPUs cuDNN flash
attention keeps only softmax statistics.

Pre-train from scratch (planned for 64 x H100 80 GB, 8 nodes): prepare a corpus with the Llama 3
tokenizer, then train on it. data.tokenizer must be a tokenizer with exactly data.vocab_size =
128,256 ids (Llama 3's tokenizer.json: 128,000 BPE tokens and 256 special ones), e.g. the
imported model's; the default Shakespeare source with no tokenizer would try to train a
128,256-piece SentencePiece and stops with a one-line ConfigError.
  python -m research.data.prepare --source='jsonl:CORPUS/*.jsonl.gz' \
      --tokenizer=DIR/tokenizer.json --out=runs/corpus_llama3
  python -m research.train --config=configs/decoder/llama3_1_8b.py \
      --workdir=runs/llama3_1_8b_scratch --config.data.source=prepared:runs/corpus_llama3

Memory on 64 x H100 80 GB (research.plan): FSDP over the 64 GPUs (mesh.preset='fsdp') leaves
1.9 GiB of parameters, gradients and AdamW moments a GPU (the state is 120 GiB in all); 8
sequences of 8,192 tokens a GPU (512 a step, 4.2M tokens, Llama 3's starting batch) keep 536 GiB
of activations without remat, so every layer is recomputed in the backward pass (remat 'full':
58 % of usable HBM; 'save_attention_out' would need 80 %, too close for the plan's +-25 %); the
loss takes 512 positions at a time. One node (8 GPUs) plans at 77 % with
--config.train.batch_size=64.

Recipe: Llama 3's paper gives the 405B's schedule only, so the optimizer is Llama 2's (AdamW,
peak 3e-4, b2 0.95, eps 1e-5, weight decay 0.1, clipping 1.0, 2,000 warmup steps, cosine to
10 %); 40,000 steps x 4,194,304 tokens = 168B tokens, about 21 a parameter (Chinchilla's ratio).

Variants: `:tiny` (the same architecture at 2 x 64, a few steps on Shakespeare: smoke tests).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'decoder/llama3_1_8b'

  c.data.source = 'shakespeare'  # a placeholder: pre-training needs a corpus (see above)
  c.data.vocab_size = 128_256  # Llama 3's tokenizer: 128,000 BPE tokens + 256 special
  c.data.seq_len = 8192  # Llama 3's pre-training context
  c.data.workers = 4  # Grain processes per host build the batches

  c.model.family = 'decoder'
  c.model.vocab_size = 128_256
  c.model.d_model = 4096
  c.model.num_layers = 32
  c.model.num_heads = 32
  c.model.num_kv_heads = 8
  c.model.head_dim = 128
  c.model.d_ff = 14_336
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = 1e-5
  c.model.position = 'rope'
  c.model.rope_theta = 500_000.0
  c.model.rope_scaling.kind = 'llama3'
  c.model.rope_scaling.factor = 8.0
  c.model.rope_scaling.low_freq_factor = 1.0
  c.model.rope_scaling.high_freq_factor = 4.0
  c.model.rope_scaling.original_max_len = 8192
  c.model.tie_embeddings = False
  c.model.use_bias = False
  c.model.scan_layers = True  # one compiled layer: compile time independent of depth
  c.model.remat = 'full'  # research.plan: needed at 8 x 8,192 tokens a GPU
  c.model.loss_chunk_size = 512

  config_lib.open_model_recipe(c, steps=40_000, batch_size=512, checkpoint_every=500)

  c.mesh.preset = 'fsdp'  # parameters, gradients and AdamW moments over every device

  if arg == 'tiny':
    config_lib.shrink_open_model(c)
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
