"""Llama 3.2 1B (meta-llama/Llama-3.2-1B) in lmforge's own fields: 16 layers x 2,048, grouped-query
attention with 32 query and 8 key/value heads of 64, SwiGLU 8,192, RMSNorm (eps 1e-5), RoPE with
base 500,000 and Llama 3 frequency scaling (factor 32, low 1, high 4, original context 8,192),
vocabulary 128,256, tied embeddings: the published config.json, field by field.

1,235,814,400 parameters, exactly: research.plan's count (jax.eval_shape of the trainer's state)
equals transformers' LlamaForCausalLM built from that config.json (tests/test_open_model_configs.py
types the config.json in and checks both).

Import the released weights (a local Hugging Face directory), then sample or fine-tune from them
(the model section comes from the import's config.json; text needs Llama 3's tokenizer.json, which
data.tokenizer takes):
  python -m research.convert --from=hf --hf_dir=DIR --workdir=runs/llama3_2_1b \
      --config.model.scan_layers=true --config.mesh.preset=fsdp
  python -m research.sample --workdir=runs/llama3_2_1b --prompt="The capital of France is"
  python -m research.train --config=configs/finetune/sft.py --config.init_from=runs/llama3_2_1b \
      --config.finetune.train_data=DATA.jsonl --workdir=runs/llama3_2_1b_sft

Plan and compile before launching (research.plan: 0.3 s; research.aot: 73 s on 2 idle CPU
cores, libtpu needed, no TPU):
  python -m research.plan --config=configs/decoder/llama3_2_1b.py --device=h100-80gb --num_devices=8
    fits on h100-80gb: 29.11 GiB of 72.00 GiB usable (80 GiB less 10% headroom), 40%
    FLOPs: 9.03e+09 per token, 4.73e+15 per step
  python -m research.aot --config=configs/decoder/llama3_2_1b.py --topology=v5p:2x2x2 \
      --config.train.micro_batches=8
    v5p:2x2x2: 8 x TPU v5 on 2 host(s), mesh data=1 x stage=1 x fsdp=8 x expert=1 x context=1 x tensor=1
      per device: arguments 1.73 GiB, temporaries 18.51 GiB, outputs 1.73 GiB (1.73 GiB donated)
      peak 20.24 GiB: fits in 95.00 GiB of HBM
On TPUs full attention runs on XLA (model.attention.implementation='auto'), which materialises
the float32 [8,192 x 8,192] scores of every head: one sequence per chip per micro-batch, hence the
8 micro-batches there. On GPUs cuDNN flash attention keeps only softmax statistics.

Pre-train from scratch (planned for one node of 8 x H100 80 GB): prepare a corpus with the Llama 3
tokenizer, then train on it. data.tokenizer must be a tokenizer with exactly data.vocab_size =
128,256 ids (Llama 3's tokenizer.json: 128,000 BPE tokens and 256 special ones), e.g. the
imported model's; the default Shakespeare source with no tokenizer would try to train a
128,256-piece SentencePiece and stops with a one-line ConfigError.
  python -m research.data.prepare --source='jsonl:CORPUS/*.jsonl.gz' \
      --tokenizer=DIR/tokenizer.json --out=runs/corpus_llama3
  python -m research.train --config=configs/decoder/llama3_2_1b.py \
      --workdir=runs/llama3_2_1b_scratch --config.data.source=prepared:runs/corpus_llama3

Memory on 8 x H100 80 GB (research.plan): FSDP over the 8 GPUs (mesh.preset='fsdp') leaves 2.3 GiB
of parameters, gradients and AdamW moments a GPU; 8 sequences of 8,192 tokens a GPU (64 a step,
524,288 tokens) keep 146 GiB of activations without remat, so the layers keep only q, k, v and
the attention output (remat 'save_qkv_attention': 40 % of usable HBM; 'dots_no_batch' would need
87 %, too close for the plan's +-25 %); the loss takes 512 positions at a time, so the
[8, 8,192, 128,256] float32 logits never exist whole.

Recipe: Meta distilled Llama 3.2 1B from larger models and published no from-scratch recipe, so
the optimizer is Llama 2's (AdamW, peak 3e-4, b2 0.95, eps 1e-5, weight decay 0.1, clipping 1.0,
2,000 warmup steps, cosine to 10 %); 50,000 steps x 524,288 tokens = 26.2B tokens, about 21 a
parameter (Chinchilla's ratio).

Variants: `:tiny` (the same architecture at 2 x 64, a few steps on Shakespeare: smoke tests).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'decoder/llama3_2_1b'

  c.data.source = 'shakespeare'  # a placeholder: pre-training needs a corpus (see above)
  c.data.vocab_size = 128_256  # Llama 3's tokenizer: 128,000 BPE tokens + 256 special
  c.data.seq_len = 8192  # Llama 3's pre-training context
  c.data.workers = 4  # Grain processes per host build the batches

  c.model.family = 'decoder'
  c.model.vocab_size = 128_256
  c.model.d_model = 2048
  c.model.num_layers = 16
  c.model.num_heads = 32
  c.model.num_kv_heads = 8
  c.model.head_dim = 64
  c.model.d_ff = 8192
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = 1e-5
  c.model.position = 'rope'
  c.model.rope_theta = 500_000.0
  c.model.rope_scaling.kind = 'llama3'
  c.model.rope_scaling.factor = 32.0
  c.model.rope_scaling.low_freq_factor = 1.0
  c.model.rope_scaling.high_freq_factor = 4.0
  c.model.rope_scaling.original_max_len = 8192
  c.model.tie_embeddings = True
  c.model.use_bias = False
  c.model.scan_layers = True  # one compiled layer: compile time independent of depth
  c.model.remat = 'save_qkv_attention'  # research.plan: needed at 8 x 8,192 tokens a GPU
  c.model.loss_chunk_size = 512

  config_lib.open_model_recipe(c, steps=50_000, batch_size=64)

  c.mesh.preset = 'fsdp'  # parameters, gradients and AdamW moments over every device

  if arg == 'tiny':
    config_lib.shrink_open_model(c)
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
