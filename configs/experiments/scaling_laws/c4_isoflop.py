"""Pod-sized IsoFLOP sweep on C4: eight decoders of 36M to 1.35B parameters, 1e18 to 1e20 FLOP.

For researchers with TPUs (or a GPU cluster). WORKDIR must be a filesystem every host mounts
(lmforge writes logs and results with plain file I/O). Write one training command per run, then
hand the lines of commands.sh to the scheduler (each a plain, resumable `python -m research.train`).
First prepare C4 once, where its JSON dumps are (allenai/c4 `en/c4-*.json.gz`), with Beam (here
on Dataflow; `--workers=N` on one machine): a 32,768-piece tokenizer is trained on a 1M-line
sample, then every document is tokenized into ArrayRecord shards that every host reads by
random access:
  python -m research.data.prepare --source='jsonl:gs://BUCKET/c4/en/c4-*.json.gz' \
      --out=gs://BUCKET/c4_en_sp32k --vocab_size=32768 --num_sentinels=0 \
      --validation_fraction=0.005 --runner=DataflowRunner --project=PROJECT --region=REGION \
      --temp_location=gs://BUCKET/tmp
  python -m experiments.scaling_laws.run --config=configs/experiments/scaling_laws/c4_isoflop.py \
      --workdir=/mnt/shared/scaling/c4 --mode=commands \
      --config.data.source=prepared:gs://BUCKET/c4_en_sp32k
  # run i (1-based) on every host of its slice (e.g. a v5e-64 or v4-64 slice per run):
  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all \
      --command="cd lmforge && $(sed -n "$((i + 4))p" /mnt/shared/scaling/c4/commands.sh)"
  # when all have finished: results.csv, then fit.json and the plots in WORKDIR/fit
  python -m experiments.scaling_laws.run --config=configs/experiments/scaling_laws/c4_isoflop.py \
      --workdir=/mnt/shared/scaling/c4 --mode=collect
(`--mode=run` trains them one after another on the slice it runs on, resuming likewise.)

Grid: widths 384 ... 2,048 at head_dim 64 and 2,048 context, SwiGLU, RMSNorm, RoPE, untied
32,768-piece embeddings (36M ... 1.35B parameters, 11M ... 1.21B non-embedding); five IsoFLOP
budgets 1e18, 3e18, 1e19, 3e19, 1e20 training FLOP (the trainer's exact count). Steps of
256 x 2,048 tokens (0.5M) run from 230 (1.35B at 1e18) to 116,595 (273M at 1e20); the 6 runs
outside [200, 150,000] steps (the smallest models at the largest budgets) are skipped with a
printed reason, leaving 34 runs and at least 4 sizes per budget. Recipe per size:
lr 2e-3 x (512 / d_model), 2% warmup, cosine to lr / 10 at the run's
last step; the loss is the final validation loss over 64 fixed batches (33M tokens). Fully
sharded (mesh preset fsdp: weights, gradients and Adam moments over every chip), bfloat16
compute, layers scanned, `dots` rematerialisation.

Expected: IsoFLOP minima near 20 tokens per parameter (Chinchilla: about 90M parameters at 1e18,
about 900M at 1e20); not yet run. Evaluation also logs bits per byte (`eval/bpb`, from the
manifest's byte counts), comparable across tokenizers.
"""

from experiments.scaling_laws import sweep
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'scaling_laws/c4_isoflop'

  c.data.source = 'prepared:gs://BUCKET/c4_en_sp32k'  # research.data.prepare's --out (above)
  c.data.text_key = 'text'
  c.data.workers = 4  # Grain processes per host build the batches
  c.data.vocab_size = 32_768
  c.data.num_sentinels = 0
  c.data.seq_len = 2048

  c.model.family = 'decoder'
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.position = 'rope'
  c.model.tie_embeddings = False
  c.model.dtype = 'auto'  # bfloat16 on TPU and GPU
  c.model.scan_layers = True
  c.model.remat = 'dots'

  c.train.batch_size = 256  # 0.5M tokens a step
  c.train.lr = 2e-3  # at d_model = sweep.lr_ref_width
  c.train.b2 = 0.95
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 2

  c.mesh.preset = 'fsdp'

  sweep.with_sweep(
      c,
      sizes=((384, 6, 6), (512, 8, 8), (640, 10, 10), (768, 12, 12), (1024, 16, 16),
             (1280, 20, 20), (1536, 24, 24), (2048, 24, 32)),
      budgets=(1e18, 3e18, 1e19, 3e19, 1e20),
      flops_rule='exact',
      ffn_ratio=8 / 3,
      ffn_multiple=128,
      lr_ref_width=512,
      lr_width_power=1.0,
      warmup_fraction=0.02,
      min_lr_ratio=0.1,
      min_steps=200,
      max_steps=150_000,
      eval_batches=64,
      fit_bootstrap=200)

  if arg:
    raise config_lib.unknown_variant(arg)
  return c
