"""Gemma 3 1B (google/gemma-3-1b-pt) in lmforge's own fields: 26 layers x 1,152, 4 query heads and
1 key/value head of 256, GeGLU 6,912 (tanh GELU), Gemma's RMSNorm x (1 + scale) (eps 1e-6) before
and after each sublayer (sandwich) and over each query and key head (QK-norm), embeddings scaled
by sqrt(1,152), attention scale query_pre_attn_scalar ** -0.5 = 256 ** -0.5, five sliding-window
layers (512 keys, RoPE base 10,000) to one global layer (RoPE base 1,000,000), no soft-capping
(Gemma 3 dropped Gemma 2's), vocabulary 262,144, tied embeddings: the published config.json,
field by field (its layer_types are lmforge's 'sliding*5,full' pattern, layer by layer).

999,885,952 parameters, exactly: research.plan's count (jax.eval_shape of the trainer's state)
equals transformers' Gemma3ForCausalLM built from that config.json (tests/test_open_model_configs.py
types the config.json in and checks both, and the layer pattern).

Import the released weights (a local Hugging Face directory), then sample or fine-tune from them
(the model section comes from the import's config.json; Gemma's tokenizer.model is SentencePiece):
  python -m research.convert --from=hf --hf_dir=DIR --workdir=runs/gemma3_1b
  python -m research.sample --workdir=runs/gemma3_1b --prompt="The capital of France is"
  python -m research.train --config=configs/finetune/sft.py --config.init_from=runs/gemma3_1b \
      --config.finetune.train_data=DATA.jsonl --workdir=runs/gemma3_1b_sft

Plan and compile before launching (research.plan: 1 s; research.aot: about 5 min on 2 busy CPU
cores, libtpu needed, no TPU):
  python -m research.plan --config=configs/decoder/gemma3_1b.py --device=h100-80gb --num_devices=8
    fits on h100-80gb: 45.19 GiB of 72.00 GiB usable (80 GiB less 10% headroom), 63%
    FLOPs: 6.94e+09 per token, 7.28e+15 per step
  python -m research.aot --config=configs/decoder/gemma3_1b.py --topology=v5p:2x2x2 \
      --config.train.micro_batches=4
    v5p:2x2x2: 8 x TPU v5 on 2 host(s), mesh data=1 x stage=1 x fsdp=8 x expert=1 x context=1 x tensor=1
      per device: arguments 1.40 GiB, temporaries 65.64 GiB, outputs 1.40 GiB (1.40 GiB donated)
      peak 67.04 GiB: fits in 95.00 GiB of HBM
The plan counts every layer as global attention (an upper bound; FLOPs count the windows). On
TPUs the global layers run on XLA, which materialises the float32 [32,768 x 32,768] scores of
each head: one sequence per chip per micro-batch there, hence the micro-batches. research.aot
traces on this CPU host, where 'auto' makes the sliding layers blockwise; on a TPU 'auto' picks
splash attention, which lmforge does not yet partition over a mesh (no shard_map), so a sharded
TPU run needs --config.model.attention.implementation=blockwise, the program compiled here.

No scan over layers: model.scan_layers=True scans one layer type and the 5:1 pattern interleaves
two, so the 26 layers are compiled one by one (research.aot's compile time grows with depth).

Pre-train from scratch (planned for one node of 8 x H100 80 GB): prepare a corpus with Gemma's
tokenizer, then train on it. data.tokenizer must be a tokenizer with exactly data.vocab_size =
262,144 ids, e.g. the imported model's tokenizer.model; the default Shakespeare source with no
tokenizer would try to train a 262,144-piece SentencePiece and stops with a one-line ConfigError.
  python -m research.data.prepare --source='jsonl:CORPUS/*.jsonl.gz' \
      --tokenizer=DIR/tokenizer.model --out=runs/corpus_gemma3
  python -m research.train --config=configs/decoder/gemma3_1b.py \
      --workdir=runs/gemma3_1b_scratch --config.data.source=prepared:runs/corpus_gemma3

Memory on 8 x H100 80 GB (research.plan): FSDP over the 8 GPUs (mesh.preset='fsdp') leaves 1.9 GiB
of parameters, gradients and AdamW moments a GPU; 4 sequences of 32,768 tokens a GPU (32 a step,
1,048,576 tokens, Gemma 3's pre-training context) keep 531 GiB of activations without remat, so
the layers keep only their attention outputs (remat 'save_attention_out': 63 % of usable HBM;
'save_qkv_attention' would need 76 %, too close for the plan's +-25 %); the loss takes 512
positions at a time, so the [4, 32,768, 262,144] float32 logits never exist whole.

Recipe: Google distilled Gemma 3 from a larger teacher and published no from-scratch optimizer
settings, so the optimizer is Llama 2's (AdamW, peak 3e-4, b2 0.95, eps 1e-5, weight decay 0.1,
clipping 1.0, 2,000 warmup steps, cosine to 10 %); 20,000 steps x 1,048,576 tokens = 21B tokens,
about 21 a parameter (Chinchilla's ratio).

Variants: `:tiny` (the same architecture at 6 x 64 with a 16-token window, so that the 5:1
pattern and both RoPE bases take part; a few steps on Shakespeare: smoke tests).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'decoder/gemma3_1b'

  c.data.source = 'shakespeare'  # a placeholder: pre-training needs a corpus (see above)
  c.data.vocab_size = 262_144  # Gemma 3's SentencePiece tokenizer
  c.data.seq_len = 32_768  # Gemma 3's pre-training context
  c.data.workers = 4  # Grain processes per host build the batches

  c.model.family = 'decoder'
  c.model.vocab_size = 262_144
  c.model.d_model = 1152
  c.model.num_layers = 26
  c.model.num_heads = 4
  c.model.num_kv_heads = 1
  c.model.head_dim = 256
  c.model.d_ff = 6912
  c.model.activation = 'geglu'  # gelu_pytorch_tanh on the gate
  c.model.norm = 'rmsnorm_plus_one'  # x (1 + scale): Gemma's stored weights as they are
  c.model.norm_eps = 1e-6
  c.model.norm_position = 'sandwich'  # Gemma 2/3: pre- and post-sublayer norms
  c.model.qk_norm = True
  c.model.embed_scale = True  # embeddings x sqrt(d_model), rounded to the compute dtype as HF
  c.model.attention_scale = 256 ** -0.5  # query_pre_attn_scalar ** -0.5 (= head_dim ** -0.5 here)
  c.model.attention_softcap = 0.0  # Gemma 3 has no soft-capping (Gemma 2 had 50 and 30)
  c.model.final_softcap = 0.0
  c.model.position = 'rope'
  c.model.rope_theta = 1_000_000.0  # the global layers
  c.model.rope_local_theta = 10_000.0  # the sliding-window layers
  c.model.attention.pattern = 'sliding*5,full'  # layer i is global when (i + 1) % 6 == 0
  c.model.attention.window = 512  # a query sees itself and the 511 keys before it
  c.model.tie_embeddings = True
  c.model.use_bias = False
  c.model.scan_layers = False  # a scan has one layer type; the pattern interleaves two
  c.model.remat = 'save_attention_out'  # research.plan: needed at 4 x 32,768 tokens a GPU
  c.model.loss_chunk_size = 512

  config_lib.open_model_recipe(c, steps=20_000, batch_size=32)

  c.mesh.preset = 'fsdp'  # parameters, gradients and AdamW moments over every device

  if arg == 'tiny':
    config_lib.shrink_open_model(c)
    c.model.num_layers = 6  # one period of the pattern: five sliding layers, one global
    c.model.attention_scale = 0.0  # head_dim ** -0.5 at the tiny head_dim, as Gemma 3's rule
    c.model.attention.window = 16  # shorter than the 64-token sequences: the window matters
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
