"""Knowledge distillation: a small decoder student learns from a frozen teacher workdir.

Run (after training the teacher, e.g. runs/shakespeare with configs/decoder/shakespeare.py):
  python -m research.train --config=configs/finetune/distill.py \
      --config.distill.teacher=runs/shakespeare --workdir=runs/shakespeare_distill
  python -m research.evaluate --workdir=runs/shakespeare_distill

The student (this file's model section: 2 layers of width 128 against the teacher's 4 of 256,
the same vocabulary and corpus as configs/decoder/shakespeare.py) starts
from scratch, or from a workdir with --config.init_from=DIR (its model section then comes from
there). Loss per target token (Hinton et al. 2015; research/objectives/distill.py):

  distill.alpha x distill.temperature^2 x KL(teacher_T || student_T)
      + (1 - distill.alpha) x cross-entropy(student, hard labels)

Fields: distill.teacher (the teacher's workdir: its config.json builds the teacher, its latest
intact checkpoint gives the parameters, its tokenizer is the run's), distill.alpha in [0, 1]
(weight of the teacher term), distill.temperature > 0 (T). The teacher runs in the same jitted
train step on the same mesh and logical-axis rules, frozen in the train state (never updated,
no optimizer state); a resumed run finds it in its own checkpoint.

Pairings: decoder teacher and decoder student sharing the tokenizer, any sizes, dense,
mixture-of-experts or recurrent-mixer layers on either side. Encoder and encoder-decoder models
are refused, as are a different vocabulary or tokenizer, mesh.stage > 1, and a student
data.seq_len beyond a teacher's learned position table; each with one line naming the field.

Data: this file's `data` section (the embedded Shakespeare corpus), tokenized with the
teacher's tokenizer; with
--config.finetune.train_data=JSONL (prompt/response rows) the student distils on the response
tokens of those rows instead.

Measures: train/loss and eval/loss are the student's cross-entropy on the hard labels (so they
compare with the teacher's own eval/loss and with a student trained without a teacher);
train/distill/kl (the KL at T), train/distill/ce, train/distill/teacher_loss (the teacher's
cross-entropy on the same batch) and train/distill/loss (the objective), and the same under
eval/distill/. Expected: distill/kl falls from its first value as the student approaches the
teacher, and distill/teacher_loss stays constant (a frozen teacher) at about the teacher's own
eval loss; tests/finetune/test_distill.py checks both on tiny models.

Variants: `:tiny` (a 1 x 32 student for 20 steps, for smoke tests with a teacher trained by
configs/decoder/shakespeare.py:tiny), `:hard` (alpha 0: the hard-label baseline
with the same student and data, for comparison).
"""

from research import config_lib

VARIANTS = ('tiny', 'hard')


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'finetune/distill'
  c.objective.name = 'distill'
  c.distill.teacher = ''  # required: --config.distill.teacher=WORKDIR
  c.distill.alpha = 0.5
  c.distill.temperature = 2.0

  # The corpus and vocabulary of configs/decoder/shakespeare.py, the teacher of the example.
  c.data.source = 'shakespeare'
  c.data.vocab_size = 2048
  c.data.seq_len = 128

  # The student: 2 layers of width 128 (the teacher: 4 of 256), the same kind of block.
  c.model.family = 'decoder'
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.activation = 'swiglu'
  c.model.norm = 'rmsnorm'
  c.model.position = 'rope'
  c.model.tie_embeddings = True

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

  for variant in (arg or '').split(','):
    if not variant:
      continue
    if variant not in VARIANTS:
      raise config_lib.unknown_variant(variant, VARIANTS)
    if variant == 'tiny':  # pairs with configs/decoder/shakespeare.py:tiny as the teacher
      config_lib.shrink_for_smoke_test(c)
      c.model.d_model = 32
      c.model.num_layers = 1
      c.model.num_kv_heads = 0
      c.train.warmup_steps = 2
    elif variant == 'hard':
      c.distill.alpha = 0.0
  return c
