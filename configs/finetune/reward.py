"""A reward model: a scalar head on a decoder or encoder workdir, trained on JSONL preference pairs.

Run:
  python -m experiments.finetune.build_data --out=runs/ft_data   # prefs.jsonl, prefs_eval.jsonl
  python -m research.train --config=configs/finetune/reward.py \
      --config.init_from=runs/shakespeare_lora_merged \
      --config.reward.train_data=runs/ft_data/prefs.jsonl \
      --config.reward.eval_data=runs/ft_data/prefs_eval.jsonl --workdir=runs/shakespeare_reward
  python -m research.evaluate --workdir=runs/shakespeare_reward

and from Python:
  import research
  rm = research.load('runs/shakespeare_reward')
  rm.rewards(prompts, responses)   # float32 scores, one per pair; higher is preferred

(runs/shakespeare_lora_merged is the README's fine-tuning chain; any decoder or encoder
workdir will do: the family, architecture and tokenizer come from init_from.) build_data's pairs
are the which-play questions with the true title chosen and another title rejected.

Rows are {"prompt", "chosen", "rejected"}, the same as DPO's, optionally with a per-row "margin"
number. The model is init_from's plus `model.scalar_head` (a Dense(D -> 1) with bias on the
final-normed hidden states; research/config_lib.py sets it for objective 'reward'). The
restore rules load every backbone parameter and initialise the head afresh; to continue from a
reward workdir instead, pass --config.finetune.restore="(('.*', 'load'),)". The source's LM
head (its unembedding) stays in the tree, unused by the loss and unchanged (weight_decay 0).

A response's score r is the head's value at its eos (research/objectives/reward.py); the loss
is Bradley-Terry, -log sigmoid(r(chosen) - r(rejected) - margin), with reward.margin (0 here) or
the row's own margin (Llama 2). A pair takes at most data.seq_len tokens per side: its eos must
be an input.

Logged (per pair): train/loss, train/accuracy (= reward/accuracy: pairs with r(chosen) >
r(rejected)), train/reward/chosen, train/reward/rejected and train/reward/margin (mean
r(chosen) - r(rejected)). Evaluation (the trainer's eval lines and research.evaluate) reports
the loss, the held-out preference accuracy (eval/accuracy), the margin and eval/pairs, and no
perplexity.

Expected: train/loss starts near ln 2 = 0.693 (the fresh head scores both sides alike) and
falls, and accuracy rises from about 0.5 on a learnable preference. Measured 2026-12-04 on the
README chain above (runs/shakespeare from configs/decoder/shakespeare.py, 300 steps; SFT :lora,
200 steps; exported), 2 shared CPU cores, about 6.5 minutes: train/loss 0.69 at step 20, 0.45
at 120, 0.27 at 200; on the 240 held-out pairs eval/accuracy 0.742 and margin 0.81 at step
100, eval/accuracy 0.796, eval/loss 0.452 and margin 1.53 at step 200 (lr 1e-3 instead: 0.800,
but eval/loss 0.557, margin 2.83: it overfits sooner). research.load(...).rewards on those pairs
gives the same 0.796. tests/finetune/test_reward.py checks, on a synthetic preference that
needs prompt and response together (1-layer, 32-wide decoder; 30 steps of 16 pairs, lr 5e-3),
a held-out preference accuracy above 0.8 (it reaches 1.0). The `:tiny` variant is a smoke test
(20 steps at seq_len 64, where only 103 of build_data's 1,200 pairs fit) and learns nothing.

Variants: `:tiny`.
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'finetune/reward'
  c.objective.name = 'reward'
  c.model.scalar_head = True  # what objective 'reward' sets anyway; said here to be read
  c.data.seq_len = 128
  c.reward.margin = 0.0
  # The backbone from init_from, the new head initialised (it is in no LM workdir).
  c.finetune.restore = (('scalar_head/.*', 'init'), ('.*', 'load'))

  c.train.steps = 200
  c.train.batch_size = 16
  c.train.lr = 1e-4
  c.train.warmup_steps = 20
  c.train.weight_decay = 0.0
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.eval_batches = 0
  c.train.checkpoint_every = 200

  for variant in (arg or '').split(','):
    if variant == 'tiny':
      c.data.seq_len = 64
      c.train.steps = 20
      c.train.batch_size = 8
      c.train.log_every = 5
      c.train.eval_every = 10
      c.train.checkpoint_every = 10
    elif variant:
      raise config_lib.unknown_variant(variant, ('tiny',))
  return c
