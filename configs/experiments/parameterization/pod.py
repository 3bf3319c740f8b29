"""Pod-sized learning-rate transfer study: μP against SP, widths 128 to 2,048, on C4.

For researchers with a TPU slice (or a GPU cluster). WORKDIR must be a filesystem every host
mounts. The data are the C4 shards of configs/experiments/scaling_laws/c4_isoflop.py (its
docstring prepares them once with `research.data.prepare`); set `data.source` to where they are.
The runs train one after another on the slice, each resumable (a finished run is skipped, an
interrupted one resumes from its checkpoint); run the same command on every host:
  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd lmforge && \\
      python -m experiments.parameterization.run \\
      --config=configs/experiments/parameterization/pod.py --workdir=/mnt/shared/lr_transfer \\
      --config.data.source=prepared:gs://BUCKET/c4_en_sp32k"
Check the largest model against a device first (this config's model is the widest size):
  python -m research.plan --config=configs/experiments/parameterization/pod.py \
      --device=tpu-v5p --num_devices=64
(measured: 5.2 GiB a chip, 66 ms a step at 40% MFU; μP's hidden rate there is lr x 128 / 2,048).
One parameterization per slice instead: add `--config.study.parameterizations=('mup',)` (and
('sp',) on another) with the same --workdir; a last invocation with both skips every finished
run and writes the tables and the figure.

Grid: 8-layer decoders, head_dim 128 (1 to 16 heads), SwiGLU at 8/3 x d_model, RMSNorm, RoPE,
untied 32,768-piece embeddings, at widths 128, 256, 512, 1,024 and 2,048 (16x; 10M to 539M
parameters, 1.7M to 405M without embeddings), each at 10 learning rates 1e-4 x 10^(k/3),
k = 0..9 (1e-4 to 1e-1, 3 decades), under 'sp' and 'mup' with base width 128: 100 runs of
2,000 steps of 256 x 1,024 tokens (0.5B tokens), AdamW (b2 0.95, no weight decay), clipping at
1, 5% warmup, cosine to lr / 10; the loss is the final validation loss over 32 fixed batches
(8.4M tokens). Fully sharded (mesh preset fsdp), bfloat16 compute, layers scanned, `dots`
rematerialisation.

Expected: not yet run. Compute, an estimate from the trainer's FLOP count: 4.4e19 training FLOP
for the whole grid (the 2,048-wide runs are 69% of it), about an hour of a v5p-64 at 40% MFU.
As in the CPU study (lr_transfer.py): μP's lr* should hold still across the 16x, SP's fall.

Variants: none.
"""

from experiments.parameterization import run
from experiments.scaling_laws import sweep
from research import config_lib

WIDTHS = (128, 256, 512, 1024, 2048)
LAYERS, HEAD_DIM = 8, 128


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'parameterization/pod'

  c.data.source = 'prepared:gs://BUCKET/c4_en_sp32k'  # c4_isoflop.py's research.data.prepare --out
  c.data.text_key = 'text'
  c.data.workers = 4  # Grain processes per host build the batches
  c.data.vocab_size = 32_768
  c.data.num_sentinels = 0
  c.data.seq_len = 1024

  # The widest size, so that research.plan checks the largest model; the sweep sets each size.
  c.model.family = 'decoder'
  c.model.d_model = WIDTHS[-1]
  c.model.num_layers = LAYERS
  c.model.num_heads = WIDTHS[-1] // HEAD_DIM
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.position = 'rope'
  c.model.tie_embeddings = False
  c.model.dtype = 'auto'  # bfloat16 on TPU and GPU
  c.model.scan_layers = True
  c.model.remat = 'dots'
  c.model.parameterization = 'mup'  # so research.plan shows μP's per-class rates at that width
  c.model.base_width = WIDTHS[0]

  c.train.batch_size = 256
  c.train.b2 = 0.95
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 1

  c.mesh.preset = 'fsdp'

  sweep.with_sweep(
      c,
      sizes=tuple((w, LAYERS, w // HEAD_DIM) for w in WIDTHS),
      tokens=(2000 * 256 * 1024,),
      ffn_ratio=8 / 3,
      ffn_multiple=128,
      lr_grid=tuple(1e-4 * 10 ** (k / 3) for k in range(10)),
      base_width=WIDTHS[0],
      warmup_fraction=0.05,
      min_lr_ratio=0.1,
      min_steps=1,
      eval_batches=32)
  run.with_section(c, parameterizations=('sp', 'mup'), fit_neighbours=1)

  if arg:
    raise config_lib.unknown_variant(arg)
  return c
