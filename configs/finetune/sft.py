"""Supervised fine-tuning of a pre-trained workdir on JSONL prompt/response (or chat) rows.

Run (after pre-training runs/shakespeare with configs/decoder/shakespeare.py, and writing the
worked example's data with `python -m experiments.finetune.build_data --out=runs/ft_data`):
  python -m research.train --config=configs/finetune/sft.py --config.init_from=runs/shakespeare \
      --config.finetune.train_data=runs/ft_data/train.jsonl \
      --config.finetune.eval_data=runs/ft_data/eval.jsonl --workdir=runs/shakespeare_sft
  python -m research.export --workdir=runs/shakespeare_lora \
      --out=runs/shakespeare_lora_merged  # after :lora

The model (architecture and vocabulary) comes from init_from's config.json
(finetune.inherit_model), its parameters from its latest checkpoint by `finetune.restore`, the
tokenizer from its workdir (a chat template it carries formats chat rows); the optimizer is fresh.
The loss covers response tokens only.
What it reaches on the worked example's questions (the same data; 120 steps of
full SFT, 360 of LoRA) is measured in
configs/experiments/finetune/shakespeare.py and experiments/finetune/README.md.

Variants:
  :lora             LoRA rank 8 on every attention and MLP matrix (about 8 % of the parameters
                    train), lr 3e-3
  :prompt           prompt tuning, 20 soft-prompt vectors
  :bitfit           biases only (the source needs model.use_bias=True)
  :adapter          bottleneck adapters of width 16
  :encoder_decoder  for an encoder-decoder source (configs/encoder_decoder/shakespeare.py):
                    the prompt is encoded, the response decoded
  :tiny             20 steps, for smoke tests (combine: ':lora,tiny')
"""

from research import config_lib

VARIANTS = ('lora', 'prompt', 'bitfit', 'adapter', 'encoder_decoder', 'tiny')


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'finetune/sft'
  c.objective.name = 'sft'
  c.data.seq_len = 128

  c.train.steps = 200
  c.train.batch_size = 16
  c.train.lr = 1e-3
  c.train.warmup_steps = 20
  c.train.schedule = 'cosine'
  c.train.weight_decay = 0.0
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.eval_batches = 0  # the whole eval set
  c.train.checkpoint_every = 200

  for variant in (arg or '').split(','):
    if not variant:
      continue
    if variant not in VARIANTS:
      raise config_lib.unknown_variant(variant, VARIANTS)
    if variant == 'encoder_decoder':
      c.name = 'finetune/sft_encoder_decoder'
    elif variant == 'tiny':
      c.data.seq_len = 64
      c.train.steps = 20
      c.train.batch_size = 8
      c.train.warmup_steps = 2
      c.train.log_every = 5
      c.train.eval_every = 10
      c.train.checkpoint_every = 10
    else:
      c.peft.method = variant
      c.train.lr = {'lora': 3e-3, 'prompt': 3e-2, 'bitfit': 1e-2, 'adapter': 3e-3}[variant]
  return c
