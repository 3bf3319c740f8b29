"""Direct preference optimisation of a (fine-tuned) decoder workdir on JSONL preference pairs.

Run:
  python -m experiments.finetune.build_data --out=runs/ft_data   # prefs.jsonl, prefs_eval.jsonl
  python -m research.train --config=configs/finetune/dpo.py \
      --config.init_from=runs/shakespeare_lora_merged \
      --config.dpo.train_data=runs/ft_data/prefs.jsonl \
      --config.dpo.eval_data=runs/ft_data/prefs_eval.jsonl --workdir=runs/shakespeare_dpo
  python -m research.evaluate --workdir=runs/shakespeare_dpo

(runs/shakespeare_lora_merged is the README's fine-tuning chain: SFT with LoRA, then
research.export; any decoder workdir will do.) build_data's pairs are the which-play questions
with the true title chosen and another title rejected.

Rows are {"prompt", "chosen", "rejected"}; the policy starts from init_from and the frozen
reference is that same model (kept in the train state, research/objectives/dpo.py). Logged:
train/dpo/reward_margin, train/dpo/accuracy (pairs whose implicit reward ranks chosen first),
chosen/rejected rewards, and each model's own preference accuracy (dpo/policy_accuracy against
dpo/reference_accuracy). Evaluation (the trainer's eval lines and research.evaluate) reports
the DPO loss, the preference accuracy and the reward margin over held-out pairs, and no
perplexity: exp of a per-pair loss means nothing.

Expected: train/dpo/reward_margin starts at 0 (policy = reference) and grows, and dpo/accuracy
rises from 0 on a learnable preference; tests/finetune/test_dpo.py checks, on a synthetic
copy-vs-reversal task, that the policy's own preference accuracy on held-out pairs ends more
than 0.3 above the reference's.

Variants: `:lora` (DPO on LoRA deltas: the reference is the base model itself), `:tiny`.
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'finetune/dpo'
  c.objective.name = 'dpo'
  c.data.seq_len = 128
  c.dpo.beta = 0.1

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
    if variant == 'lora':
      c.peft.method = 'lora'
      c.train.lr = 1e-3
    elif variant == 'tiny':
      c.data.seq_len = 64
      c.train.steps = 20
      c.train.batch_size = 8
      c.train.log_every = 5
      c.train.eval_every = 10
      c.train.checkpoint_every = 10
    elif variant:
      raise config_lib.unknown_variant(variant, ('lora', 'tiny'))
  return c
