"""Long context: a 1.2B decoder (Llama 3.2 1B's shape) trained on 131,072-token sequences, each
split over 4 chips of a v5p slice by context parallelism (mesh.context=4, the ring strategy).

Architecture: Llama 3.2 1B's (configs/decoder/llama3_2_1b.py: 16 layers x 2,048, 32 query and 8
key/value heads of 64, SwiGLU 8,192, RoPE base 500,000 with Llama 3's frequency scaling, which
stretches an 8,192-token pre-training context to 131,072), 1,235,814,400 parameters. Layout on 8
chips of v5p:2x2x2: 2-way FSDP (parameters, gradients and AdamW moments halved; one sequence per
FSDP shard, batch 2) x 4-way context (32,768 tokens of each sequence per chip). Causal attention
runs in the zig-zag order (chip i holds chunks i and 7 - i of 8), so every chip does the same
work; key/value blocks of 32,768 tokens go round the 4 chips (research/layers/context_parallel.py)
and attention is computed in 1,024 x 1,024 tiles (model.attention.block_size).

Without context parallelism a chip would hold whole sequences: research.plan with
--config.mesh.context=1 --config.mesh.fsdp=8 --config.train.batch_size=8 asks for 7,220 GiB a
chip (XLA attention's [131,072 x 131,072] scores per head), and no remat or micro-batching helps.

Plan and compile before launching (research.plan: 3 s; research.aot: 2 min 3 s on 2 busy CPU
cores, 1 min 50 s of CPU time, 2026-12-04; earlier 3 min 49 s on busier cores; libtpu needed,
no TPU):
  python -m research.plan --config=configs/decoder/long_context_128k.py --device=tpu-v5p
    activations (remat save_qkv_attention) 13.85 GiB, of which the layers keep 7.00 GiB
    fits on tpu-v5p: 23.06 GiB of 85.50 GiB usable (95 GiB less 10% headroom), 27%
    FLOPs: 3.32e+10 per token, 8.7e+15 per step
  python -m research.aot --config=configs/decoder/long_context_128k.py --topology=v5p:2x2x2
    v5p:2x2x2: 8 x TPU v5 on 2 host(s), mesh data=1 x stage=1 x fsdp=2 x expert=1 x context=4 x tensor=1
      per device: arguments 6.91 GiB, temporaries 20.47 GiB, outputs 6.91 GiB (6.91 GiB donated)
      peak 27.37 GiB: fits in 95.00 GiB of HBM
The plan is 16 % under the compiler's peak (23.06 / 27.37 GiB = 0.84; activations and gradients
16.15 GiB against 20.47 GiB of temporaries, 0.79), within its +-25 %, which
tests/test_open_model_configs.py asserts (`make aot`). With
--config.model.attention.context_strategy=all_gather the compiler's peak is 27.42 GiB (5 min 12 s
on the same busy cores) and the plan's the same 23.06 GiB: at 32,768 tokens a chip the MLP's
backward, not attention, sets the peak.

Train (users with long documents prepared; see research.data.prepare):
  python -m research.train --config=configs/decoder/long_context_128k.py \
      --config.data.source=prepared:CORPUS --config.data.tokenizer=DIR/tokenizer.json \
      --workdir=runs/long_context_128k

Recipe: Llama 2's AdamW (config_lib.open_model_recipe), 2,000 steps x 262,144 tokens: a stand-in
for a long-context extension stage, not a published recipe.

Variants: `:tiny` (the same layout at 64 tokens and 2 x 64 widths: smoke tests on 8 simulated
devices).
"""

import os

from research import config_lib

# The architecture is Llama 3.2 1B's, read from its config file (one definition of the model).
LLAMA3_2_1B = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'llama3_2_1b.py')


def get_config(arg=None):
  c = config_lib.load_config_file(LLAMA3_2_1B)
  c.name = 'decoder/long_context_128k'
  c.data.source = 'shakespeare'  # a placeholder: long-context training needs long documents
  c.data.seq_len = 131_072  # what Llama 3.1's RoPE scaling (rope_scaling.kind='llama3') reaches
  c.model.loss_chunk_size = 1024  # never [32,768 x 128,256] float32 logits on a chip
  # Context parallelism: the ring holds one chip's 32,768-token key/value block at a time;
  # tiles of 1,024 x 1,024 scores divide the zig-zag chunks (131,072 / 8 = 16,384 tokens).
  c.model.attention.context_strategy = 'ring'
  c.model.attention.block_size = 1024

  config_lib.open_model_recipe(c, steps=2_000, batch_size=2)

  # 8 chips of v5p:2x2x2: 2-way FSDP (parameters, gradients and AdamW moments halved; one
  # sequence per FSDP shard) x 4-way context (32,768 tokens of each sequence per chip).
  c.mesh.preset = ''
  c.mesh.data = 1
  c.mesh.fsdp = 2
  c.mesh.context = 4

  if arg == 'tiny':
    config_lib.shrink_open_model(c)
    c.data.seq_len = 64
    c.model.attention.block_size = 8
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
