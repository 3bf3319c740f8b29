"""Llama 3.1 70B (meta-llama/Llama-3.1-70B) pre-trained on a TPU v5p pod slice with pipeline
parallelism: 8 GPipe stages of 10 layers x 16-way FSDP on the 128 chips of v5p:4x4x8.

Architecture: Llama 3.1 8B's (configs/decoder/llama3_1_8b.py: grouped-query attention with 8
key/value heads of 128, SwiGLU, RMSNorm eps 1e-5, RoPE base 500,000 with Llama 3's frequency
scaling, vocabulary 128,256, untied embeddings), read from its config file, at the 70B's widths:
80 layers x 8,192, 64 query heads, SwiGLU 28,672. 70,553,706,496 parameters, exactly the
published count (tests/test_open_model_configs.py types the config.json in).

Layout: mesh.stage=8 cuts the scanned [80, ...] layer stack into 8 blocks of 10 layers
(research/parallel/pipeline.py), one per stage of 16 chips; mesh.fsdp=16 shards each stage's
layers, the embeddings, gradients and AdamW moments 16 ways and splits the batch 16 ways (the
embeddings and head are on every stage). A batch of 256 sequences of 2,048 tokens (524,288
tokens) is 16 per FSDP shard, cut into 16 pipeline micro-batches of one sequence a chip: the
bubble is 7 / 23 = 30 % of the step. Every stage iteration is recomputed in the backward pass
(remat 'full', per stage iteration), which then holds one stage's residuals at once: 10 layers'
float32 attention scores of one sequence (XLA attention: no flash kernel on TPU here) are most
of the 27 GiB working set, hence 2,048 tokens, not Llama 3's 8,192. Stages must tile the torus:
8 x 8 on v5p:4x4x4 (64 chips) does not map onto 4 x 4 x 4, and 4 stages of 20 layers there
plan at 88 % of HBM.

Plan and compile before launching (research.plan: 2 s; research.aot: 3 min 11 s on 2 busy CPU
cores, 1 min 48 s of CPU time, 2026-12-04; libtpu needed, no TPU):
  python -m research.plan --config=configs/decoder/llama3_1_70b.py --device=tpu-v5p
    activations (remat full) 32.35 GiB, of which the backward working set 26.98 GiB
    fits on tpu-v5p: 42.28 GiB of 85.50 GiB usable (95 GiB less 10% headroom), 49%
    FLOPs: 4.25e+11 per token, 2.23e+17 per step
  python -m research.aot --config=configs/decoder/llama3_1_70b.py --topology=v5p:4x4x8
    v5p:4x4x8: 128 x TPU v5 on 32 host(s), mesh data=1 x stage=8 x fsdp=16 x expert=1 x context=1 x tensor=1
      per device: arguments 7.45 GiB, temporaries 41.22 GiB, outputs 7.44 GiB (7.44 GiB donated)
      peak 48.67 GiB: fits in 95.00 GiB of HBM
The plan is 13 % under the compiler's peak (42.28 / 48.67 GiB = 0.87), within its +-25 %; its
state (parameters and AdamW moments, 7.44 GiB a chip) is the compile's arguments.

A remat policy other than 'full' wraps the same whole stage: with 'save_qkv_attention' at 4,096
tokens, 4 stages of 20 layers x fsdp=16 on v5p:4x4x4, the compiler asks for 210 GiB of
temporaries (every layer's probabilities of the stage being recomputed) and research.plan now
says 196 GiB of activations and gradients (tests/test_open_model_configs.py keeps the two
within 25 %).

Train (a corpus prepared with Llama 3's tokenizer, as for configs/decoder/llama3_1_8b.py):
  python -m research.train --config=configs/decoder/llama3_1_70b.py \
      --workdir=runs/llama3_1_70b --config.data.source=prepared:runs/corpus_llama3

Recipe: Llama 2's AdamW (config_lib.open_model_recipe), 40,000 steps x 524,288 tokens: a stand-in
for a pre-training run's schedule, not a published recipe.

Variants: `:tiny` (the same architecture at 4 x 64 with 2 stages x fsdp=4 and 2 micro-batches on
8 simulated devices: smoke tests).
"""

import os

from research import config_lib

# Llama 3.1 70B shares the 8B's attention, RoPE scaling, norms and vocabulary; only widths and
# depth differ, so the rest is read from the 8B's config file (one definition of the family).
LLAMA3_1_8B = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'llama3_1_8b.py')


def get_config(arg=None):
  c = config_lib.load_config_file(LLAMA3_1_8B)
  c.name = 'decoder/llama3_1_70b'
  c.model.d_model = 8192
  c.model.num_layers = 80
  c.model.num_heads = 64
  c.model.num_kv_heads = 8
  c.model.head_dim = 128
  c.model.d_ff = 28_672
  # scan_layers (the pipeline cuts the scanned stack), remat 'full' and the 512-position loss
  # chunks are the 8B's.

  # One stage's recomputed residuals (XLA's [64 x T x T] float32 scores for 10 layers) set the
  # peak: 2,048 tokens keep them at 27 GiB a chip.
  c.data.seq_len = 2048
  config_lib.open_model_recipe(c, steps=40_000, batch_size=256, checkpoint_every=500)

  # 128 chips of v5p:4x4x8: 8 stages of 10 layers x 16-way FSDP; 16 pipeline micro-batches of
  # one sequence a chip (bubble 7 / 23).
  c.mesh.preset = ''
  c.mesh.data = 1
  c.mesh.stage = 8
  c.mesh.fsdp = 16
  c.mesh.pipeline_micro_batches = 16

  if arg == 'tiny':
    config_lib.shrink_open_model(c)
    c.model.num_layers = 4
    c.mesh.stage = 2
    c.mesh.fsdp = 4
    c.mesh.pipeline_micro_batches = 2
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
