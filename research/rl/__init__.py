"""RL post-training from feedback (PPO, GRPO and their variants).

advantages.py holds the advantage estimators, whitening, KL estimators and PPO's per-token
rewards; losses.py the per-token policy and value losses, their aggregation into the trainer's
(loss_sum, weight_sum) and logging statistics. Rollouts and the training loop come later, in
modules of their own; this file imports none of them.
"""
