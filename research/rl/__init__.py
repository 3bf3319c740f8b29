"""RL post-training from feedback (PPO, GRPO and their variants).

advantages.py holds the advantage estimators, whitening, KL estimators and PPO's per-token
rewards; losses.py the per-token policy and value losses, their aggregation into the trainer's
(loss_sum, weight_sum) and logging statistics. prompts.py reads and orders the prompts,
rewards.py turns rl.reward / rl.reward_model into scores, rollout.py samples and scores
completions, and loop.py is the training loop (`research.rl.loop.train`, which research.train
runs for objective.name 'grpo' and 'ppo'; the losses are research/objectives/rl_policy.py's).
This file imports none of them.
"""
