"""Qwen3 0.6B (Qwen/Qwen3-0.6B; -Base has the same architecture) in lmforge's own fields: 28
layers x 1,024, grouped-query attention with 16 query and 8 key/value heads of 128 (wider than
d_model / heads = 64), RMSNorm (eps 1e-6) over each query and key head before RoPE (QK-norm),
SwiGLU 3,072, RoPE base 1,000,000, no biases, vocabulary 151,936 (the embedding's rows; the
tokenizer has 151,669 ids), tied embeddings: the published config.json, field by field.

596,049,920 parameters, exactly: research.plan's count (jax.eval_shape of the trainer's state)
equals transformers' Qwen3ForCausalLM built from that config.json (tests/test_open_model_configs.py
types the config.json in and checks both).

Import the released weights (a local Hugging Face directory), then sample or fine-tune from them
(the model section comes from the import's config.json; text needs Qwen's tokenizer.json, which
data.tokenizer takes):
  python -m research.convert --from=hf --hf_dir=DIR --workdir=runs/qwen3_0_6b \
      --config.model.scan_layers=true
  python -m research.sample --workdir=runs/qwen3_0_6b --prompt="The capital of France is"
  python -m research.train --config=configs/finetune/sft.py --config.init_from=runs/qwen3_0_6b \
      --config.finetune.train_data=DATA.jsonl --workdir=runs/qwen3_0_6b_sft

Plan and compile before launching (research.plan: 0.3 s; research.aot: about 2 min on 2 busy CPU
cores, libtpu needed, no TPU):
  python -m research.plan --config=configs/decoder/qwen3_0_6b.py --device=h100-80gb --num_devices=8
    fits on h100-80gb: 49.16 GiB of 72.00 GiB usable (80 GiB less 10% headroom), 68%
    FLOPs: 4.99e+09 per token, 2.61e+15 per step
  python -m research.aot --config=configs/decoder/qwen3_0_6b.py --topology=v6e:2x2 \
      --config.train.micro_batches=32
    v6e:2x2: 4 x TPU v6 lite on 1 host(s), mesh data=4 x stage=1 x fsdp=1 x expert=1 x context=1 x tensor=1
      per device: arguments 6.66 GiB, temporaries 14.20 GiB, outputs 6.66 GiB (6.66 GiB donated)
      peak 20.86 GiB: fits in 32.00 GiB of HBM
On TPUs full attention runs on XLA (model.attention.implementation='auto'), which materialises
the float32 [4,096 x 4,096] scores of every head: one sequence per chip per micro-batch there,
hence the micro-batches. On GPUs cuDNN flash attention keeps only softmax statistics.

Pre-train from scratch (planned for one node of 8 x H100 80 GB): prepare a corpus with the Qwen3
tokenizer, then train on it. data.tokenizer must be a tokenizer with exactly data.vocab_size ids:
Qwen's tokenizer.json has 151,669 (151,643 BPE tokens and 26 special ones), and the embedding
keeps Qwen's 151,936 rows (model.vocab_size), the rest never used. The default Shakespeare source
with no tokenizer would try to train a 151,669-piece SentencePiece and stops with a one-line
ConfigError.
  python -m research.data.prepare --source='jsonl:CORPUS/*.jsonl.gz' \
      --tokenizer=DIR/tokenizer.json --out=runs/corpus_qwen3
  python -m research.train --config=configs/decoder/qwen3_0_6b.py \
      --workdir=runs/qwen3_0_6b_scratch --config.data.source=prepared:runs/corpus_qwen3

Memory on 8 x H100 80 GB (research.plan): plain data parallelism (mesh.preset='dp'): the whole
state, 8.9 GiB of parameters, gradients and AdamW moments, sits on every GPU, and no FSDP
all-gathers run per layer; 16 sequences of 4,096 tokens a GPU (128 a step, 524,288 tokens; Qwen3's
first pre-training stage used 4,096-token sequences) keep 161 GiB of activations without remat,
so the layers keep only q, k, v and the attention output (remat 'save_qkv_attention': 68 % of
usable HBM; 'dots_no_batch' would need 93 %); the loss takes 512 positions at a time. With
--config.mesh.preset=fsdp the state drops to 1.1 GiB a GPU.

Recipe: Qwen published no optimizer settings for Qwen3, so the optimizer is Llama 2's (AdamW,
peak 3e-4, b2 0.95, eps 1e-5, weight decay 0.1, clipping 1.0, 2,000 warmup steps, cosine to
10 %); 25,000 steps x 524,288 tokens = 13.1B tokens, about 22 a parameter (Chinchilla's ratio).

Variants: `:tiny` (the same architecture at 2 x 64, a few steps on Shakespeare: smoke tests).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'decoder/qwen3_0_6b'

  c.data.source = 'shakespeare'  # a placeholder: pre-training needs a corpus (see above)
  c.data.vocab_size = 151_669  # Qwen's tokenizer.json: 151,643 BPE tokens + 26 special
  c.data.seq_len = 4096  # Qwen3's first pre-training stage
  c.data.workers = 4  # Grain processes per host build the batches

  c.model.family = 'decoder'
  c.model.vocab_size = 151_936  # Qwen's embedding rows (padded past the tokenizer)
  c.model.d_model = 1024
  c.model.num_layers = 28
  c.model.num_heads = 16
  c.model.num_kv_heads = 8
  c.model.head_dim = 128
  c.model.d_ff = 3072
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = 1e-6
  c.model.qk_norm = True
  c.model.position = 'rope'
  c.model.rope_theta = 1_000_000.0
  c.model.tie_embeddings = True
  c.model.use_bias = False
  c.model.qkv_bias = False  # Qwen2 had them; Qwen3 replaced them with QK-norm
  c.model.scan_layers = True  # one compiled layer: compile time independent of depth
  c.model.remat = 'save_qkv_attention'  # research.plan: needed at 16 x 4,096 tokens a GPU
  c.model.loss_chunk_size = 512

  config_lib.open_model_recipe(c, steps=25_000, batch_size=128)

  c.mesh.preset = 'dp'  # a 0.6B state fits every device: no per-layer all-gathers

  if arg == 'tiny':
    config_lib.shrink_open_model(c)
    c.model.head_dim = 64  # still wider than d_model / heads = 32, as Qwen3's
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
