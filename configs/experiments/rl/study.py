"""RL from feedback on the embedded corpus: GRPO, PPO and DPO from one Shakespeare decoder.

Run:
  python -m experiments.rl.run --config=configs/experiments/rl/study.py --workdir=runs/rl

What it runs (experiments/rl/run.py), all from ONE base decoder:
1. The tasks' files (experiments/rl/tasks.py): next-speaker prompts with their answers, and
   question preference pairs and prompts; training rows from the corpus's training works,
   held-out rows from its validation works.
2. The base: 4 layers x d_model 128 (4 heads, RoPE, SwiGLU, 512-piece BPE), 600 steps of 16 x
   128 tokens of the embedded Shakespeare corpus, in WORKDIR/base.
3. Next speaker (verifiable): GRPO and PPO from the base against tasks.speaker_reward (1 when
   the completion's first line is the next speaker's tag).
4. Questions (preferences): a reward model (a scalar head on the base, Bradley-Terry on 2,048
   pairs where a question line is preferred to another line), then GRPO and PPO from the base
   against its scores, and DPO from the base on the same pairs; all evaluated by the rule the
   pairs were built from (tasks.question_reward: a finished line ending in '?').
RL runs: 60 iterations of 16 prompts x 8 samples (temperature 1), lr 3e-5, KL coefficient 0.04
(GRPO: k3 in the loss; PPO: k1 in the reward), GRPO one on-policy step per rollout, PPO 2 epochs
x 2 minibatches with a fresh value head; held-out evaluation (128 prompts, greedy) every 10.

Writes results.csv, results.md (the table and what holds), speaker.png and question.png (train
reward, KL to the reference and held-out accuracy against iterations) and environment.json.
Rerunning skips every finished part (its result.json).

Expected: not measured yet.

Variants: `:tiny` (a 1 x 32 base, 2 steps a run, 2 iterations: a test of the command).
"""

from experiments.rl import run
from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'rl/study'

  c.data.source = 'shakespeare'
  c.data.vocab_size = 512
  c.data.seq_len = 128

  c.model.family = 'decoder'
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.activation = 'swiglu'
  c.model.position = 'rope'

  c.train.steps = 600
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 50
  c.train.eval_every = 600
  c.train.eval_batches = 16
  c.train.checkpoint_every = 600
  c.train.keep_checkpoints = 1
  c.train.async_checkpoints = False

  run.with_section(c)

  if arg == 'tiny':
    c.data.seq_len = 32
    c.model.d_model = 32
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.d_ff = 64
    c.train.steps = 2
    c.train.batch_size = 8
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.eval_batches = 1
    c.train.checkpoint_every = 2
    s = c.rl_study
    s.iterations = 2
    s.prompts_per_iteration = 4
    s.samples_per_prompt = 2
    s.eval_every = 1
    s.num_eval_prompts = 8
    s.ppo_epochs = 1
    s.ppo_minibatches = 1
    s.speaker_new_tokens = 4
    s.question_new_tokens = 4
    s.reward_steps = 2
    s.dpo_steps = 2
    s.pair_batch_size = 8
    s.num_pairs = 64
    s.num_prompts = 64
  elif arg:
    raise config_lib.unknown_variant(arg, ('tiny',))
  return c
