"""Pod-sized MoE routing study on C4: a 1B-active dense decoder against E = 64 MoE variants at
equal active FLOPs per token (the Shakespeare study's design at scale).

For researchers with a TPU slice (or a GPU cluster). WORKDIR must be a filesystem every host
mounts. The variants train one after another on the slice, each resumable (a finished variant
is skipped, an interrupted one resumes from its checkpoint); run the same command on every host:
  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd lmforge && \
      python -m experiments.moe_routing.run --config=configs/experiments/moe_routing/pod.py \
      --workdir=/mnt/shared/moe_routing --config.data.data_dir=gs://BUCKET/tfds \
      --config.data.tokenizer=/mnt/shared/spm32k.model"
One variant per slice instead (several slices at once): add
`--config.moe_routing.variants=top2` (and so on) with the same --workdir; a last invocation with
all the variants, once they have finished, skips them all and writes the table and figures.

Base: 16 layers x 2,048, 16 heads of 128, SwiGLU d_ff F = 5,632, RMSNorm, RoPE, untied
32,768-piece embeddings: 0.96B parameters (0.82B non-embedding), 5.74 GFLOP a token for
training. 20,000 steps of 256 x 2,048 tokens (0.5M; 10.5B tokens a variant), lr 3e-4 (2,000
warmup steps, cosine to 3e-5), bfloat16 compute, layers scanned, `dots` rematerialisation, the
loss 512 positions at a time; validation every 1,000 steps on 64 fixed batches (33.5M tokens).
Variants (every layer MoE, E = 64; experiments/moe_routing/variants.py): dense; top-1 (experts
of width F, 35.8B parameters in all); top-2 (width F/2, 18.1B); dropless top-2; aux-free top-2
-- all 0.96B active, at the dense model's FLOPs per token plus the router (0.2%). Capacity
factor 1.25 per choice (2,048-token groups: C = 80 for top-2). Mesh preset fsdp_ep with
mesh.expert = 8 (8 experts per expert shard; weights and optimizer state fully sharded over the
rest): float32 parameters, gradients and AdamW moments take 16 bytes a parameter, 4.5 GB a
chip for top-1 on a v5p-128 (2.3 GB for top-2), beside the activations.

Expected: not yet run. The MoE variants should reach the dense model's loss in a fraction of its
steps (Switch: about 4x faster at E = 64) at about the same step time on a well-sharded slice.
The data must be prepared once where TFDS can fetch it:
`tfds build c4/en --data_dir=gs://BUCKET/tfds --file_format=array_record`.

Variants: none.
"""

from experiments.moe_routing import variants
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'moe_routing/pod'

  c.data.source = 'tfds:c4/en:3.1.0'
  c.data.text_key = 'text'
  c.data.vocab_size = 32_768
  c.data.num_sentinels = 0
  c.data.seq_len = 2048

  c.model.family = 'decoder'
  c.model.d_model = 2048
  c.model.num_layers = 16
  c.model.num_heads = 16
  c.model.d_ff = 5632
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.position = 'rope'
  c.model.tie_embeddings = False
  c.model.dtype = 'auto'  # bfloat16 on TPU and GPU
  c.model.scan_layers = True
  c.model.remat = 'dots'
  c.model.loss_chunk_size = 512

  c.train.steps = 20_000
  c.train.batch_size = 256  # 0.5M tokens a step
  c.train.lr = 3e-4
  c.train.warmup_steps = 2000
  c.train.schedule = 'cosine'
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.eval_batches = 64
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 2

  c.mesh.preset = 'fsdp_ep'
  c.mesh.expert = 8

  variants.with_moe_routing(c, variants=variants.DEFAULT_VARIANTS, num_experts=64,
                            capacity_factor=1.25, expert_choice_capacity_factor=1.0,
                            load_balance_coef=0.01, bias_update_rate=1e-3)

  if arg:
    raise config_lib.unknown_variant(arg)
  return c
