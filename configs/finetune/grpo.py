"""GRPO (group-relative policy optimisation) of a decoder workdir against a reward.

Run:
  python -m research.train --config=configs/finetune/grpo.py \
      --config.init_from=runs/shakespeare_sft \
      --config.rl.prompts=runs/rl_data/prompts.jsonl \
      --config.rl.reward=research.rl.rewards:exact_match --workdir=runs/shakespeare_grpo

rl.prompts holds {"prompt": ..., "answer": ...} rows (any extra fields go to the reward);
rl.reward is 'module:function' or 'path/to/file.py:function', called as
function(prompt, completion, row) -> float, or set rl.reward_model to a reward-model workdir
(configs/finetune/reward.py) instead. The policy starts from init_from and the frozen
reference is that same model (research/objectives/grpo.py, research/rl/loop.py).

Each iteration samples 8 completions of each of 16 prompts (128 rows, up to 64 new tokens,
temperature 1), scores them, and makes one optimizer step on all of them (rl.epochs=1,
rl.minibatches=1: fully on-policy, the ratio is 1 and clipping is idle; raise either to reuse
a rollout). Advantages are each reward minus its group's mean over the group's std; the loss
adds 0.04 x the k3 KL estimate to the reference per token; losses are averaged over response
tokens. 200 iterations, checkpoints every 20 (train.checkpoint_every counts iterations),
held-out evaluation (greedy, 32 prompts held out of rl.prompts) every 20.

Logged per iteration (metrics.jsonl, TensorBoard): rl/reward_mean and rl/reward_std,
rl/kl (to the reference, per response token), rl/clip_fraction, rl/entropy,
rl/response_length, rl/zero_std_groups, train/loss, train/grad_norm; eval/reward_mean and
eval/accuracy (reward >= rl.success_threshold) at the start and every rl.eval_every iterations.

Expected. On the corpus (configs/experiments/rl/study.py, 60 iterations at lr 1e-4 from a
4 x 128 Shakespeare decoder): the held-out rate of lines finished as questions went 0 -> 1.0
with the rule as the reward, 0 -> 0 with a reward model's scores (GRPO learned to leave its
lines unfinished, which that model scored higher: rl.missing_eos_penalty is the remedy), and
the next-speaker task was not learned (BENCHMARKS.md, "RL from feedback"). Also measured,
tests/rl/test_loop.py's one-token bandit: an untrained 1-layer, 32-wide
decoder, one fixed prompt, reward 1 for one target token of a 96-token vocabulary, 4 x 8
samples per iteration, 2 epochs x 2 minibatches, lr 2e-2. The target's probability went 0.010,
0.014, 0.017, 0.043, 0.10, 0.26, 0.49, 0.80, 0.94 (iteration 9), 0.976, ... 0.998 (iteration
20); rl/reward_mean 0 -> 1, rl/kl 0 -> 3.6 nats per token (log 1/p_ref of the target is 4.6),
rl/entropy 4.55 -> 0.02, rl/clip_fraction up to 0.13 while it moved and 0 once it had. The
`:tiny` command on that untrained model (4 iterations) runs in about 25 s on 2 CPU cores,
mostly compiling; its rewards stay 0 (it cannot spell an answer yet).

Variants: `:dapo` (clip-higher 0.28, no KL term: Yu et al. 2025), `:drgrpo` (no std
normalisation, sum over tokens / max_new_tokens: Liu et al. 2025), `:tiny` (4 prompts x 4
samples, 16 new tokens, 4 iterations: a smoke test of the command); combine with commas.
"""

from research import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = 'finetune/grpo'
  c.objective.name = 'grpo'
  c.rl.samples_per_prompt = 8
  c.rl.prompts_per_iteration = 16
  c.rl.max_prompt_len = 64
  c.rl.max_new_tokens = 64
  c.rl.temperature = 1.0
  c.rl.epochs = 1
  c.rl.minibatches = 1
  c.rl.iterations = 200
  c.rl.eval_every = 20
  c.rl.num_eval_prompts = 32
  c.rl.kl_coef = 0.04
  c.rl.kl_estimator = 'k3'
  c.rl.kl_in_reward = False
  c.rl.advantage_normalization = 'std'
  c.rl.loss_aggregation = 'token'

  c.train.lr = 1e-5
  c.train.schedule = 'constant'
  c.train.warmup_steps = 10
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.checkpoint_every = 20  # iterations

  for variant in (arg or '').split(','):
    if variant == 'dapo':
      c.rl.clip_high = 0.28
      c.rl.kl_coef = 0.0
      c.rl.loss_aggregation = 'token'
    elif variant == 'drgrpo':
      c.rl.advantage_normalization = 'none'
      c.rl.loss_aggregation = 'constant'
    elif variant == 'tiny':
      c.rl.samples_per_prompt = 4
      c.rl.prompts_per_iteration = 4
      c.rl.max_prompt_len = 16
      c.rl.max_new_tokens = 16
      c.rl.iterations = 4
      c.rl.eval_every = 2
      c.rl.num_eval_prompts = 4
      c.train.warmup_steps = 0
      c.train.checkpoint_every = 2
    elif variant:
      raise config_lib.unknown_variant(variant, ('dapo', 'drgrpo', 'tiny'))
  return c
