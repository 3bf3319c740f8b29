"""RL from feedback on the embedded corpus: GRPO, PPO and DPO from one Shakespeare decoder.

Run:
  python -m experiments.rl.run --config=configs/experiments/rl/study.py --workdir=runs/rl

What it runs (experiments/rl/run.py), all from ONE base decoder:
1. The tasks' files (experiments/rl/tasks.py): next-speaker prompts with their answers, and
   question prompts and preference pairs; training rows from the corpus's training works,
   held-out rows from its validation works (which pre-training never reads).
2. The base: 4 layers x d_model 128 (4 heads, RoPE, SwiGLU, 512-piece BPE), 600 steps of 16 x
   128 tokens of the embedded Shakespeare corpus, in WORKDIR/base.
3. speaker (verifiable, conditional): GRPO and PPO from the base against tasks.speaker_reward
   (1 when the completion's first line is the next speaker's tag, 0.5 for the prompt's other
   speaker).
4. question (verifiable constraint): GRPO and PPO against tasks.question_reward (1 for a
   finished line that ends in '?').
5. preference: a reward model (a scalar head on the base, Bradley-Terry on 2,048 pairs in which
   a question line is preferred to another line of the same play), then GRPO and PPO against
   its scores on the question prompts, and DPO on the same pairs; judged by the rule of step 4
   (rl.eval_reward), so the gap to step 4 is what learning from a learned proxy loses.
RL runs: 60 iterations of 16 prompts x 8 samples (temperature 1), lr 1e-4, KL coefficient 0.04
(GRPO: k3 in the loss; PPO: k1 in the reward), GRPO one on-policy step per rollout, PPO 2 epochs
x 2 minibatches with a fresh value head; prompts of at most 96 (speaker) or 48 tokens, 8 or 24
new tokens; held-out evaluation (128 prompts, greedy) at the start and every 10 iterations.

Writes results.csv, results.md (the table and what holds), speaker.png, question.png and
preference.png (train reward, KL to the reference and held-out accuracy against iterations)
and environment.json.
Rerunning skips every finished part (its result.json).

Measured 2026-12-04 on 2 CPU cores (the parts summed, each a separate resume of the command:
23.9 minutes; the base 3.6 of them; benchmarks/results/rl_shakespeare_cpu/, BENCHMARKS.md "RL
from feedback"). Held-out accuracy (128 prompts, greedy), base -> after 60 iterations:
- speaker: GRPO 0.016 -> 0.008, PPO 0.016 -> 0.008: no learning. The rollouts' reward stayed
  near 0.002 (a right or half-right tag in 1 of 500 samples), too rare a signal for 60
  iterations; an earlier try that also paid 0.2 for any tag-shaped line made GRPO settle within
  10 iterations on one made-up tag for every prompt (held-out reward 0.2, accuracy 0).
- question (the rule as reward): GRPO 0.000 -> 1.000 (KL 0.41 nats per token), PPO 0.000 ->
  1.000 (KL 0.89); PPO got there by iteration 30, GRPO by 50.
- preference: the reward model ranks 100 % of held-out pairs right. PPO on its scores 0.000 ->
  0.914 (KL 2.59, completions of 3.9 tokens: short questions); DPO on the pairs 0.000 -> 0.875;
  GRPO 0.000 -> 0.000: it raised the reward model's score (-4.55 -> -3.36) by not finishing its
  line (truncated completions 44 % -> 84 %), which the reward model, trained on finished lines
  only, scores a little above a finished non-question (-5.0 against -5.4): reward hacking of a
  learned proxy. rl_study.missing_eos_penalty (rl.missing_eos_penalty) is the knob against it;
  0 here, to show it.

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
