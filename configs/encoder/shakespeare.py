"""Encoder-only masked LM on the complete works of Shakespeare (BERT's objective, modern body).

Run:
  python -m research.train --config=configs/encoder/shakespeare.py --workdir=runs/mlm

A 4-layer, 256-wide bidirectional encoder (pre-norm RMSNorm, RoPE, SwiGLU, tied MLM head; 3.9M
parameters) over the 2,048-piece BPE vocabulary of configs/decoder/shakespeare.py, trained to
predict 15 % of the tokens (80 % shown as [MASK], 10 % as a random token, 10 % unchanged).

Expected on 2 CPU cores: validation MLM loss 7.41 at initialisation, 6.04 / 5.59 / 5.32 / 5.15
after 100 / 200 / 300 / 400 steps (accuracy on the chosen tokens 10 % -> 17 %); the unigram
cross-entropy of the validation tokens is 6.07 nats, so the encoder uses context from both
sides. Measured: 9 min 19 s wall for the 400 steps on a shared 2-core machine under load
(1,250-2,300 training tokens/s); an idle machine is faster. Masked-token predictions are then
still weak; `research.inference.fill_mask` lists them:
  config = config_lib.load_saved_config('runs/mlm/config.json'); model = models.build_model(config)
  fill_mask(model, params, tokenizer, 'To be, or not to be: that is the [MASK].')

Variants: `:tiny` (a few steps, for smoke tests).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'encoder/shakespeare'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 2048
  c.data.seq_len = 128

  c.model.family = 'encoder'
  c.model.d_model = 256
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.norm_position = 'pre'
  c.model.position = 'rope'
  c.model.tie_embeddings = True

  c.objective.name = 'mlm'

  c.train.steps = 400
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 30
  c.train.schedule = 'cosine'
  c.train.weight_decay = 0.1
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.eval_batches = 16
  c.train.checkpoint_every = 200

  if arg == 'tiny':
    config_lib.shrink_for_smoke_test(c)
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
