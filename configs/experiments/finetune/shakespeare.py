"""The fine-tuning worked example: full SFT and LoRA of the Shakespeare decoder on questions
built from the corpus (experiments/finetune/build_data.py).

Run (everything, pre-training included when DIR/pretrain has no checkpoint):
  python -m experiments.finetune.run --workdir=runs/finetune

`get_config('full')` / `get_config('lora')` are the two fine-tuning runs; init_from and the
data paths are filled in by the runner. 120 steps of 16 x 128 tokens each (about 5 epochs of
the 1,680 training questions, packed), the response-only loss, evaluation on the 360 held-out
questions.

Measured 2026-12-03 on 2 CPU cores shared with other jobs (load average about 7.5), the whole
command on a fresh DIR (before the speaker tags and per-token scores, at the same cost):
25 min 42 s wall, 10 min 31 s user + 1 min 16 s sys CPU (pre-training
16 min of it, at about 850 tokens/s against about 2,800 on a quiet machine). Which-play accuracy
(8 titles, chance 0.125): pre-trained 0.125, full SFT 0.825 (0.867 on the three unseen plays),
LoRA r=8 0.138; continue (4 lines, chance 0.25): 0.258 / 0.267 / 0.250; response eval loss:
full 3.065, LoRA 3.217. Table and discussion: experiments/finetune/README.md.

Variants: `full`, `lora`; append `,tiny` for the smoke test (a few steps).
"""

from research import config_lib


def get_config(arg='full'):
  c = config_lib.base_config()
  c.name = 'experiments/finetune/shakespeare'
  c.objective.name = 'sft'
  c.data.seq_len = 128
  c.train.steps = 120
  c.train.batch_size = 16
  c.train.warmup_steps = 10
  c.train.schedule = 'cosine'
  c.train.weight_decay = 0.0
  c.train.log_every = 20
  c.train.eval_every = 120
  c.train.eval_batches = 0
  c.train.checkpoint_every = 120
  variants = (arg or 'full').split(',')
  if 'lora' in variants:
    c.peft.method = 'lora'
    c.peft.rank = 8
    c.peft.alpha = 16.0
    c.train.lr = 1e-2  # 3e-3 did no better: which-play 0.150, eval loss 3.196 (measured)
  elif 'full' in variants:
    c.train.lr = 1e-3
  else:
    raise config_lib.unknown_variant(arg, ('full', 'lora', 'full,tiny', 'lora,tiny'))
  if 'tiny' in variants:
    c.data.seq_len = 64
    c.train.steps = 6
    c.train.batch_size = 8
    c.train.warmup_steps = 1
    c.train.log_every = 3
    c.train.eval_every = 6
    c.train.checkpoint_every = 6
  return c
