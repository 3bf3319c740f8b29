"""BERT-base (Devlin et al. 2019): the encoder family in BERT's exact shape, for accelerators.

Run (GPU or TPU; a TFDS copy of wiki40b must be in data.data_dir, nothing is downloaded):
  python -m research.train --config=configs/encoder/bert_base.py --workdir=runs/bert_base \
      --config.data.data_dir=/path/to/tensorflow_datasets

12 post-LayerNorm layers (eps 1e-12), 768 wide, 12 heads, 3,072-wide exact-GELU MLP, learned
positions for 512 tokens, 2 token types, a LayerNorm on the summed embeddings, and the MLM head's
dense-GELU-LayerNorm transform before the tied decoder and its bias: 110M parameters with a
30,522-piece vocabulary. research.models.hf.bert converts Hugging Face BERT checkpoints into
exactly this parameter tree (tests/hf/test_bert_parity.py checks the logits).

Pretraining follows the paper's phase 1: 128-token sequences, 256 per batch, Adam with lr 1e-4,
10k warmup steps then linear decay, weight decay 0.01, dropout 0.1, 15 % of tokens chosen
(80/10/10). The paper's 1M steps on BooksCorpus + Wikipedia are not reproduced here; expected
result: none measured in this repository (it needs accelerators), so treat the run as the
reference architecture rather than a reproduction. Differences from the paper: a SentencePiece
BPE vocabulary trained on the data instead of WordPiece, documents packed into windows with
EOS-delimited segments instead of sentence pairs, and no next-sentence prediction.

Variants: `:tiny` (the same shape, 2 x 64, a few steps: a smoke test that runs on CPU with the
Shakespeare data).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'encoder/bert_base'

  c.data.source = 'tfds:wiki40b/en'
  c.data.text_key = 'text'
  c.data.vocab_size = 30_522
  c.data.num_sentinels = 0  # no span corruption: only [MASK] is reserved
  c.data.seq_len = 128
  c.data.workers = 4  # Grain processes per host build the batches (objective included)

  c.model.family = 'encoder'
  c.model.d_model = 768
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.d_ff = 3072
  c.model.activation = 'gelu_exact'
  c.model.norm = 'layernorm'
  c.model.norm_eps = 1e-12
  c.model.norm_position = 'post'
  c.model.position = 'learned'
  c.model.max_len = 512
  c.model.tie_embeddings = True
  c.model.use_bias = True
  c.model.dropout = 0.1
  c.model.init_std = 0.02
  c.model.type_vocab_size = 2  # BERT's segment A/B embeddings
  c.model.embed_norm = True  # LayerNorm on the summed embeddings
  c.model.head_transform = True  # dense + GELU + LayerNorm before the tied decoder
  c.model.output_bias = True  # the decoder's [V] bias

  c.objective.name = 'mlm'
  c.objective.mask_rate = 0.15
  c.objective.mask_token_rate = 0.8
  c.objective.random_token_rate = 0.1

  c.train.steps = 1_000_000
  c.train.batch_size = 256
  c.train.lr = 1e-4
  c.train.schedule = 'linear'
  c.train.warmup_steps = 10_000
  c.train.min_lr_ratio = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.eps = 1e-6
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.train.eval_batches = 50
  c.train.checkpoint_every = 10_000

  if arg == 'tiny':
    c.data.workers = 0
    c.data.source = 'shakespeare'
    c.data.vocab_size = 512
    c.data.num_sentinels = 100  # shares the cached Shakespeare tokenizer of the other tiny runs
    c.data.seq_len = 64
    c.model.d_model = 64
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.d_ff = 256
    c.model.dropout = 0.0
    c.train.steps = 20
    c.train.batch_size = 8
    c.train.lr = 1e-3
    c.train.warmup_steps = 5
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10
  elif arg:
    raise config_lib.unknown_variant(arg)
  return c
