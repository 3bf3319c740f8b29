"""Mixtral 8x7B (mistralai/Mixtral-8x7B-v0.1) in lmforge's own fields: 32 layers x 4,096,
grouped-query attention with 32 query and 8 key/value heads of 128, and in every layer a mixture
of 8 SwiGLU experts of width 14,336, two per token (top-2, the gates a softmax over the two chosen
logits), RMSNorm (eps 1e-5), RoPE base 1,000,000, no sliding window, vocabulary 32,000, untied
input and output embeddings: the published config.json, field by field.

46,702,792,704 parameters, exactly: research.plan's count (jax.eval_shape of the trainer's state)
equals transformers' MixtralForCausalLM built from that config.json
(tests/test_open_model_configs.py types the config.json in and checks both). 12.7B of them take
part in a token's matmuls (research/training/flops.py: two experts, the router, attention and the
unembedding).

Import the released weights (a local Hugging Face directory; the sharded safetensors are read one
tensor at a time), then sample or fine-tune from them (the model section comes from the import's
config.json; Mixtral's tokenizer.model is SentencePiece):
  python -m research.convert --from=hf --hf_dir=DIR --workdir=runs/mixtral_8x7b \
      --config.model.scan_layers=true --config.mesh.preset=fsdp_ep
  python -m research.sample --workdir=runs/mixtral_8x7b --prompt="The capital of France is"
  python -m research.train --config=configs/finetune/sft.py:lora \
      --config.init_from=runs/mixtral_8x7b --config.finetune.train_data=DATA.jsonl \
      --workdir=runs/mixtral_8x7b_lora

Plan and compile before launching (research.plan: 1 s; research.aot: about 5 min on 2 busy CPU
cores, libtpu needed, no TPU):
  python -m research.plan --config=configs/decoder/mixtral_8x7b.py --device=tpu-v5p --num_devices=64
    fits on tpu-v5p: 23.88 GiB of 85.50 GiB usable (95 GiB less 10% headroom), 28%
    FLOPs: 7.97e+10 per token, 8.36e+16 per step
  python -m research.aot --config=configs/decoder/mixtral_8x7b.py --topology=v5p:4x4x4
    v5p:4x4x4: 64 x TPU v5 on 16 host(s), mesh data=1 x stage=1 x fsdp=16 x expert=4 x context=1 x tensor=1
      per device: arguments 9.00 GiB, temporaries 81.89 GiB, outputs 9.00 GiB (9.00 GiB donated)
      peak 90.89 GiB: fits in 95.00 GiB of HBM
Trust the compile here, not the plan: research.plan models a dense MLP and counts none of the
router's activations, and the dropless router (research/layers/moe.py) sorts the (token, choice)
assignments of the whole micro-batch, which GSPMD gathers onto every chip: the temporaries grow
with the GLOBAL micro-batch (here 64 sequences, 524,288 assignments), not with a chip's share.
Hence 4 micro-batches of one sequence a chip, and more chips do not lower a chip's temporaries.
research.plan's state (9.00 GiB a chip) matches the compile's arguments exactly.

Pre-train from scratch (planned and compiled for a TPU v5p-64 slice): prepare a corpus with the
Mixtral tokenizer, then train on it. data.tokenizer must be a tokenizer with exactly
data.vocab_size = 32,000 ids, e.g. the imported model's tokenizer.model; the default Shakespeare
source with no tokenizer would train its own 32,000-piece SentencePiece on Shakespeare instead.
  python -m research.data.prepare --source='jsonl:CORPUS/*.jsonl.gz' \
      --tokenizer=DIR/tokenizer.model --out=runs/corpus_mixtral
  python -m research.train --config=configs/decoder/mixtral_8x7b.py \
      --workdir=runs/mixtral_scratch --config.data.source=prepared:runs/corpus_mixtral

Memory on 64 TPU v5p chips: FSDP over 16 and the experts over 4 (mesh.preset='fsdp_ep': two
experts' weights per expert shard, cut 16 ways by FSDP) leave 3 GiB of parameters and 6 GiB of
AdamW moments a chip (the compile's 9.00 GiB of arguments), and 6 GiB of gradients and their
micro-batch accumulator among its temporaries; every layer is recomputed in the backward pass
(remat 'full'); the loss takes 512 positions at a time. Expert parallelism over 8 (one expert a
shard) does not map onto a 4x4x4 torus: JAX lays a mesh axis only over whole physical axes.

Recipe: Mistral published no training recipe. The router is dropless (no capacity, never drops a
token, as Mixtral's inference), with lmforge's Switch load-balancing loss 0.01 and router z-loss
1e-3 per layer (transformers' router_aux_loss_coef 0.02 applies once to all layers' routers
pooled, a different normalisation); the optimizer is Llama 2's (AdamW, peak 3e-4, b2 0.95, eps
1e-5, weight decay 0.1, clipping 1.0, 2,000 warmup steps, cosine to 10 %); 250,000 steps x
1,048,576 tokens = 262B tokens, about 20 per active parameter.

Variants: `:tiny` (the same architecture at 2 x 64 with 4 experts, top-2, dropless; a few steps
on Shakespeare: smoke tests).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'decoder/mixtral_8x7b'

  c.data.source = 'shakespeare'  # a placeholder: pre-training needs a corpus (see above)
  c.data.vocab_size = 32_000  # Mistral's SentencePiece tokenizer
  c.data.seq_len = 4096
  c.data.workers = 4  # Grain processes per host build the batches

  c.model.family = 'decoder'
  c.model.vocab_size = 32_000
  c.model.d_model = 4096
  c.model.num_layers = 32
  c.model.num_heads = 32
  c.model.num_kv_heads = 8
  c.model.head_dim = 128
  c.model.d_ff = 14_336  # each expert's width (model.moe.d_ff = 0 takes it)
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = 1e-5
  c.model.position = 'rope'
  c.model.rope_theta = 1_000_000.0
  c.model.tie_embeddings = False
  c.model.use_bias = False
  c.model.moe.num_experts = 8
  c.model.moe.every = 1  # every layer: Mixtral has no dense feed-forward layers
  c.model.moe.top_k = 2
  c.model.moe.router = 'dropless'
  c.model.moe.softmax_order = 'after_top_k'  # softmax over the two chosen logits (Mixtral)
  c.model.moe.load_balance_coef = 0.01
  c.model.moe.z_loss_coef = 1e-3
  c.model.scan_layers = True  # one compiled layer: compile time independent of depth
  c.model.remat = 'full'  # the dropless router's gathered sort dominates memory (see above)
  c.model.loss_chunk_size = 512

  config_lib.open_model_recipe(c, steps=250_000, batch_size=256, checkpoint_every=500)
  c.train.micro_batches = 4  # one sequence a chip per micro-batch on 64 chips

  c.mesh.preset = 'fsdp_ep'  # FSDP x experts over 4

  if arg == 'tiny':
    config_lib.shrink_open_model(c)
    c.model.d_ff = 128
    c.model.moe.num_experts = 4
    c.train.micro_batches = 1
    c.mesh.preset = 'fsdp'  # runs on any number of devices
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
