"""T5-style encoder-decoder on the complete works of Shakespeare, trained by span corruption.

Run:
  python -m research.train --config=configs/encoder_decoder/shakespeare.py --workdir=runs/t5
  python -m research.sample --workdir=runs/t5 --temperature=0 --max_new_tokens=20 \
      --prompt="ROMEO: But soft, what light through <extra_id_0> window breaks?"
  (--beam_size=4 --length_penalty=0.6 for beam search)

A T5 v1.1-shaped model (RMSNorm pre-norm, unscaled attention, relative position bias shared
across each stack's layers, gated-GELU feed-forward, untied output layer): 3 encoder and 3 decoder
layers, 256 wide, 4 heads of 64, 5.8M parameters with the 2,048-piece BPE vocabulary. Inputs are
128 tokens: windows of 141 raw tokens lose 15 % of their tokens in spans of mean length 3, each
span replaced by one sentinel; the 29-token targets list the sentinels and the spans they hide.

Expected (measured on 2 CPU cores shared with other jobs, 6 min 20 s): validation loss 7.64 at
initialisation (ln 2,048 = 7.62), 5.15 at step 100, 5.05 at step 200, 4.89 at step 300
(perplexity 133, accuracy 28 %). For comparison, the unigram entropy of the validation targets is
5.41 nats/token. Sentinels and line breaks are learnt first; filling spans with words needs many
more steps.

Variants: `:tiny` (a few steps, for smoke tests).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'encoder_decoder/shakespeare'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 2048
  c.data.seq_len = 128  # encoder input length; the raw window and the targets follow from it
  c.data.num_sentinels = 100

  c.model.family = 'encoder_decoder'
  c.model.d_model = 256
  c.model.num_layers = 3  # each of the encoder and the decoder
  c.model.num_heads = 4
  c.model.head_dim = 64
  c.model.d_ff = 512
  c.model.activation = 'geglu'
  c.model.norm = 'rmsnorm'
  c.model.position = 'relative'
  c.model.relative_buckets = 32
  c.model.relative_max_distance = 128
  c.model.attention_scale = 1.0  # T5 does not scale attention scores
  c.model.tie_embeddings = False

  c.objective.name = 'span_corruption'
  c.objective.noise_density = 0.15
  c.objective.mean_span_length = 3.0

  c.train.steps = 300
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 30
  c.train.schedule = 'cosine'
  c.train.weight_decay = 0.1
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.eval_batches = 16
  c.train.checkpoint_every = 100

  if arg == 'tiny':
    config_lib.shrink_for_smoke_test(c)
    c.model.head_dim = 32
    c.model.d_ff = 128
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
