"""PPO of a decoder workdir against a reward, with a value head on the policy's backbone.

Run:
  python -m research.train --config=configs/finetune/ppo.py \
      --config.init_from=runs/shakespeare_sft \
      --config.rl.prompts=runs/rl_data/prompts.jsonl \
      --config.rl.reward=research.rl.rewards:exact_match --workdir=runs/shakespeare_ppo

rl.prompts, rl.reward and rl.reward_model as in configs/finetune/grpo.py. The value head is
model.scalar_head (turned on for ppo whatever the source has): a Dense(1) on the policy's final
hidden states, so the value loss also trains the shared backbone (TRL's value-head model; a
separate critic is not offered). finetune.restore below initialises the head afresh and loads
everything else from init_from.

Each iteration samples 4 completions of each of 32 prompts (128 rows, up to 64 new tokens),
gives every response token the reward -0.05 x the k1 KL estimate to the frozen reference and
the last one the completion's score (rl.kl_in_reward), computes GAE advantages (gamma 1,
lambda 0.95) from the head's values and whitens them, then makes 4 epochs x 4 minibatches of
32 rows = 16 optimizer steps (clipped policy loss, clip 0.2, plus 0.1 x the clipped value loss,
value clip 0.2). 100 iterations, checkpoints every 10 (train.checkpoint_every counts
iterations), held-out evaluation every 10.

Logged per iteration: rl/reward_mean, rl/reward_std, rl/kl, rl/clip_fraction, rl/entropy,
rl/response_length, rl/value_loss, rl/value_clip_fraction, rl/explained_variance,
rl/value_mean, rl/return_mean, train/loss, train/grad_norm; eval/reward_mean and
eval/accuracy at the start and every rl.eval_every iterations.

Expected. On the corpus (configs/experiments/rl/study.py, 60 iterations at lr 1e-4 from a
4 x 128 Shakespeare decoder): the held-out rate of lines finished as questions went 0 -> 1.0
with the rule as the reward and 0 -> 0.914 with a reward model's scores, at KL 0.9 and 2.6
nats per token (BENCHMARKS.md, "RL from feedback"). Also measured, tests/rl/test_loop.py's
one-token bandit (configs/finetune/grpo.py's docstring; here with kl_in_reward, k1, a fresh value head,
lr 2e-2): the target's probability stays near 0.01 for 10 iterations (the rewards are all 0,
and whitening turns the random head's values into unit-scale noise advantages), then goes
0.037, 0.067, 0.14, 0.28, 0.59, 0.87, 0.97 (iteration 17), 0.998 (iteration 20);
rl/explained_variance reaches 0.99 once the rewards are all 1.

Variants: `:tiny` (4 prompts x 4 samples, 16 new tokens, 4 iterations of 2 x 2 steps).
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'finetune/ppo'
  c.objective.name = 'ppo'
  # The value head is new unless the source has one (a reward model): initialise it then.
  c.finetune.restore = ((r'scalar_head/.*', 'init'), ('.*', 'load'))
  c.rl.samples_per_prompt = 4
  c.rl.prompts_per_iteration = 32
  c.rl.max_prompt_len = 64
  c.rl.max_new_tokens = 64
  c.rl.temperature = 1.0
  c.rl.epochs = 4
  c.rl.minibatches = 4
  c.rl.iterations = 100
  c.rl.eval_every = 10
  c.rl.num_eval_prompts = 32
  c.rl.kl_coef = 0.05
  c.rl.kl_estimator = 'k1'
  c.rl.kl_in_reward = True
  c.rl.gamma = 1.0
  c.rl.lam = 0.95
  c.rl.whiten_advantages = True
  c.rl.vf_coef = 0.1
  c.rl.value_clip = 0.2
  c.rl.loss_aggregation = 'token'

  c.train.lr = 1e-5
  c.train.schedule = 'constant'
  c.train.warmup_steps = 10
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.checkpoint_every = 10  # iterations

  for variant in (arg or '').split(','):
    if variant == 'tiny':
      c.rl.samples_per_prompt = 4
      c.rl.prompts_per_iteration = 4
      c.rl.max_prompt_len = 16
      c.rl.max_new_tokens = 16
      c.rl.epochs = 2
      c.rl.minibatches = 2
      c.rl.iterations = 4
      c.rl.eval_every = 2
      c.rl.num_eval_prompts = 4
      c.train.warmup_steps = 0
      c.train.checkpoint_every = 2
    elif variant:
      raise config_lib.unknown_variant(variant, ('tiny',))
  return c
