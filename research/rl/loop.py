"""The RL loop: rollouts, rewards, advantages, and the trainer's train step on their minibatches.

`train(config, workdir)` is the whole job for objective.name 'grpo' or 'ppo' (research.train
runs it for those). It reuses the trainer's pieces: build_run (mesh, model, optimizer,
shardings), init_state and restore.init_from (the policy starts from init_from; the objective
copies it into model_state['rl_reference'], the frozen reference), make_train_step (one
optimizer step per minibatch, micro-batches, guards), checkpointing.Saver / restore_good,
resume_check, workdir_lock, guards.Interrupts and MetricsWriter.

Iteration i (0-based), with B = rl.prompts_per_iteration x rl.samples_per_prompt rows:
1. prompts: rl.prompts_per_iteration training prompts, a pure function of (seed, i)
   (research/rl/prompts.py);
2. rollout: research.rl.rollout.sample with key rollout_key(seed, i): completions, the policy's
   and the reference's log-probabilities, PPO's values;
3. rewards: rl.reward (a function) or rl.reward_model, on the completions' texts; a completion
   without eos loses rl.missing_eos_penalty;
4. advantages: GRPO, group_advantages over each prompt's G samples (rl.advantage_normalization)
   broadcast over the response tokens; PPO, token_rewards (score on the last token, -kl_coef x
   KL per token when rl.kl_in_reward), gae (rl.gamma, rl.lam), whiten (rl.whiten_advantages);
5. updates: rl.epochs passes, each over the B rows in a fresh order (seeded by (seed, i,
   epoch)) cut into rl.minibatches minibatches, one train step each.
The optimizer step count is therefore state.step = i x epochs x minibatches at the start of
iteration i: a resumed run finds its iteration there. Checkpoints are written at iteration
boundaries only, every train.checkpoint_every iterations, at the last, and after SIGTERM /
SIGINT, which take effect once the current iteration's updates are done (a rollout cannot be
resumed halfway: its parameters are gone), then the command exits 143 / 130 as research.train
does. A resumed run repeats the uninterrupted one exactly: the prompts, the rollout keys, the
minibatch orders and the train step's dropout keys are functions of (seed, iteration / step).

Logged per iteration (metrics.jsonl and TensorBoard, at the step the iteration ends on):
rl/reward_mean, rl/reward_std (the reward as given, before the eos penalty and the KL),
rl/kl (k3 estimate of KL(pi || pi_ref) per response token at the rollout), rl/response_length
(tokens per completion, eos included), rl/truncated_fraction (completions without eos),
rl/clip_fraction, rl/entropy, rl/approx_kl, rl/kl_ref, rl/policy_loss (means over the
iteration's steps; research/objectives/rl_policy.py), train/loss, train/grad_norm, train/lr;
GRPO: rl/zero_std_groups (prompts whose G rewards were all equal: no signal); PPO:
rl/value_loss, rl/value_clip_fraction, rl/explained_variance (rollout values vs returns),
rl/value_mean, rl/return_mean; rl/rollout_time_s, rl/update_time_s and rl/iteration.
Held-out evaluation, at the start (step 0) and every rl.eval_every iterations: one completion
per held-out prompt at rl.eval_temperature (0: greedy) -> eval/reward_mean (the raw reward),
eval/accuracy (the fraction with reward >= rl.success_threshold), eval/response_length and
eval/prompts; rl.eval_reward, when given, scores these instead of the training reward.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from research import config_lib
from research.errors import ConfigError, UserError
from research.inference import decoding
from research.objectives import rl_policy
from research.rl import prompts as prompts_lib, rewards as rewards_lib, rollout as rollout_lib
from research.training import checkpointing, guards, metrics as metrics_lib, resume_check
from research.training import trainer, workdir_lock
from research.training.metrics import MetricsWriter

_ORDER_STREAM = 0x5107  # the minibatch orders' seed tag


# ----------------------------------------------------------------------------- pieces


def check_math(config) -> None:
  """The rl fields that research.rl.advantages / losses validate, traced once (nothing is
  computed or compiled) so that a bad value fails before any rollout: a ConfigError naming
  the field."""
  from research.rl import advantages as adv_lib, losses  # pylint: disable=g-import-not-at-top
  rl = config.rl
  z = jax.ShapeDtypeStruct((2, 2), jnp.float32)
  g = jax.ShapeDtypeStruct((rl.samples_per_prompt,), jnp.float32)

  def probe(z, g):
    adv_lib.kl_estimate(z, z, rl.kl_estimator)
    losses.aggregate(z, z, rl.loss_aggregation, max_len=rl.max_new_tokens)
    losses.clipped_policy_loss(z, z, z, z, clip_low=rl.clip_low, clip_high=rl.clip_high)
    adv_lib.group_advantages(g, rl.samples_per_prompt, normalization=rl.advantage_normalization)
    if config.objective.name == 'ppo':
      adv_lib.gae(z, z, z, gamma=rl.gamma, lam=rl.lam)
      losses.clipped_value_loss(z, z, z, z, clip=rl.value_clip)

  jax.eval_shape(probe, z, g)


def advantage_fn(config) -> Callable:
  """fn(batch, scores_B) -> (arrays to add to the rollout's batch, statistics to log), one
  jitted program: advantages [B, N] and, for PPO, returns [B, N]; the statistics are rl/kl
  (k3 per response token at the rollout), GRPO's rl/zero_std_groups, PPO's
  rl/explained_variance, rl/value_mean and rl/return_mean."""
  from research.rl import advantages as adv_lib, losses  # pylint: disable=g-import-not-at-top
  rl = config.rl
  ppo = config.objective.name == 'ppo'
  kl_coef = float(rl.kl_coef) if rl.kl_in_reward else 0.0
  g = rl.samples_per_prompt

  def token_mean(x_BN, mask_BN):
    return jnp.sum(x_BN * mask_BN) / jnp.maximum(jnp.sum(mask_BN), 1.0)

  @jax.jit
  def compute(scores_B, old_logp_BN, ref_logp_BN, mask_BN, old_values_BN):
    on_BN = mask_BN > 0
    logp_BN = jnp.where(on_BN, old_logp_BN, 0.0)
    ref_BN = jnp.where(on_BN, ref_logp_BN, 0.0)
    stats = {'rl/kl': token_mean(adv_lib.kl_estimate(logp_BN, ref_BN, 'k3'), mask_BN)}
    if not ppo:
      if kl_coef:  # the completion's summed KL comes off its score before the normalisation
        kl_BN = adv_lib.kl_estimate(logp_BN, ref_BN, rl.kl_estimator)
        scores_B = scores_B - kl_coef * jnp.sum(kl_BN * mask_BN, axis=1)
      adv_B = adv_lib.group_advantages(scores_B, g, normalization=rl.advantage_normalization)
      spread_N = jnp.ptp(scores_B.reshape(-1, g), axis=1)
      stats['rl/zero_std_groups'] = jnp.mean((spread_N == 0).astype(jnp.float32))
      return {'advantages': adv_B[:, None] * mask_BN}, stats
    rewards_BN = adv_lib.token_rewards(scores_B, old_logp_BN, ref_logp_BN, mask_BN,
                                       kl_coef=kl_coef, kl_kind=rl.kl_estimator)
    adv_BN, returns_BN = adv_lib.gae(rewards_BN, old_values_BN, mask_BN, gamma=rl.gamma,
                                     lam=rl.lam)
    if rl.whiten_advantages:
      adv_BN = adv_lib.whiten(adv_BN, mask_BN)
    stats['rl/explained_variance'] = losses.explained_variance(old_values_BN, returns_BN,
                                                               mask_BN)
    stats['rl/value_mean'] = token_mean(old_values_BN, mask_BN)
    stats['rl/return_mean'] = token_mean(returns_BN, mask_BN)
    return {'advantages': adv_BN, 'returns': returns_BN}, stats

  def fn(batch: dict[str, np.ndarray], scores_B: np.ndarray):
    old_values = batch.get('old_values', np.zeros_like(batch['old_logp']))
    arrays, stats = jax.device_get(compute(np.asarray(scores_B, np.float32), batch['old_logp'],
                                           batch['ref_logp'], batch['mask'], old_values))
    return ({k: np.asarray(v, np.float32) for k, v in arrays.items()},
            {k: float(v) for k, v in stats.items()})

  return fn


def rollout_stats(rollout: rollout_lib.Rollout, rewards_B: np.ndarray) -> dict[str, float]:
  return {'rl/reward_mean': float(np.mean(rewards_B)), 'rl/reward_std': float(np.std(rewards_B)),
          'rl/response_length': float(np.mean(rollout.lengths)),
          'rl/truncated_fraction': float(np.mean(~rollout.ended))}


_STEP_NAMES = {'loss': 'train/loss', 'grad_norm': 'train/grad_norm', 'lr': 'train/lr'}


def step_summary(host_metrics: Sequence[dict]) -> dict[str, float]:
  """Means over an iteration's train steps of the loss, gradient norm, learning rate and the
  objective's rl/ metrics."""
  out = {}
  for key in host_metrics[0]:
    name = _STEP_NAMES.get(key, key if key.startswith('rl/') else None)
    if name is not None:
      out[name] = float(np.mean([float(m[key]) for m in host_metrics]))
  return out


def evaluate(run, state, prompts: Sequence[prompts_lib.Prompt], reward, tokenizer, *,
             iteration: int) -> dict[str, float]:
  """One completion per held-out prompt at rl.eval_temperature, scored by the reward."""
  c = run.config
  rl = c.rl
  eos_id = tokenizer.eos_id
  outputs = decoding.generate_rows(
      run.eval_model, trainer.device_params(run, state.params), [p.ids for p in prompts],
      rollout_lib.eval_key(c.seed, iteration), max_new_tokens=rl.max_new_tokens,
      batch_size=min(len(prompts), rl.prompts_per_iteration * rl.samples_per_prompt),
      temperature=rl.eval_temperature, top_k=rl.top_k, top_p=rl.top_p, eos_id=eos_id,
      model_state=rollout_lib.generation_state(state.model_state))
  cut = rollout_lib.cut_completions(tokenizer, np.asarray(outputs), eos_id, rl.stop)
  texts = [tokenizer.decode(ids) for ids, _ in cut]
  scores = reward([p.text for p in prompts], texts, [p.row for p in prompts])
  return {'eval/reward_mean': float(np.mean(scores)),
          'eval/accuracy': float(np.mean(scores >= rl.success_threshold)),
          'eval/response_length': float(np.mean([len(ids) + (how == 'eos') for ids, how in cut])),
          'eval/prompts': float(len(prompts))}


def evaluate_workdir(config, workdir: str) -> dict[str, float]:
  """`evaluate` of any decoder workdir (its newest checkpoint) on `config`'s held-out prompts
  and evaluation reward, at iteration 0's key: how a run that did not use the RL loop (the base
  model, a DPO run) scores on the same footing as the RL runs."""
  from research import loading  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  with c.ignore_type():
    c.init_from = workdir
  c = config_lib.finalize(c)
  run = trainer.build_run(c)
  lm = loading.load(workdir)
  prompt_set = prompts_lib.load(c, lm.tokenizer)
  reward = rewards_lib.make_eval_reward(c)
  state = trainer.TrainState(step=0, params=lm.params, opt_state=None,
                             model_state=lm.model_state)
  return evaluate(run, state, prompt_set.eval, reward, lm.tokenizer, iteration=0)


# ----------------------------------------------------------------------------- the loop


def train(config, workdir: str, *, hooks: Sequence[Callable] = (),
          devices=None) -> dict[str, float]:
  """Trains `config` (objective 'grpo' or 'ppo') in `workdir`, resuming from its newest intact
  checkpoint. Returns the last iteration's metrics (and the last evaluation's), 'step' and
  'iteration'; after SIGTERM or SIGINT (a checkpoint saved) also `preempted_at` (the step)
  and `preempted_by` (the signal's name).

  `hooks` are called as hook(iteration, state, metrics) after every iteration (1-based: the
  number of iterations done), with that iteration's logged metrics.

  Raises:
    ConfigError: not an RL objective, a bad rl field, a reward that cannot be imported.
    UserError: the workdir is in use or holds a run with another config, no usable prompt, a
      non-finite step, a checkpoint that could not be saved, a disk that refused a write.
  """
  if config.objective.name not in rl_policy.ALGORITHMS:
    raise ConfigError('objective.name', config.objective.name,
                      f'research.rl.loop trains {rl_policy.ALGORITHMS}')
  run = trainer.build_run(config, devices=devices)
  try:
    with workdir_lock.hold(workdir):
      resume_check.check_resume(config, workdir)
      return _train_locked(run, workdir, hooks=hooks)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    user_error = guards.io_user_error(e, workdir)
    if user_error is None:
      raise
    raise user_error from e


def _start_state(run, manager, saver, workdir: str, config_json):
  c = run.config
  state = checkpointing.restore_good(manager, trainer.abstract_state(run), workdir,
                                     move_damaged=jax.process_index() == 0,
                                     config_json=config_json)
  if state is not None:
    logging.info('resumed from step %d', int(state.step))
    saver.last_good = int(state.step)
    return state
  state = trainer.init_state(run, c.seed)
  if c.get('init_from', ''):
    from research.training import restore  # pylint: disable=g-import-not-at-top
    state, _ = restore.init_from(run, state, c.init_from)
  # init_from's step counter is an uncommitted scalar; committed to the state's sharding, the
  # first train step compiles the program the later steps reuse, not one of its own.
  return state.replace(step=jax.device_put(state.step, run.stored_shardings.step))


def _train_locked(run, workdir: str, *, hooks) -> dict[str, float]:
  c = run.config
  rl = c.rl
  check_math(c)
  reward = rewards_lib.make_reward(c)  # an import error stops the run before anything is written
  eval_reward = rewards_lib.make_eval_reward(c, reward)
  os.makedirs(workdir, exist_ok=True)
  from research.data import sft  # pylint: disable=g-import-not-at-top
  tokenizer = sft.tokenizer_for(c, workdir)
  if tokenizer.vocab_size > c.model.vocab_size:
    raise ConfigError('model.vocab_size', c.model.vocab_size,
                      f'is smaller than the tokenizer vocabulary ({tokenizer.vocab_size})')
  prompt_set = prompts_lib.load(c, tokenizer)
  if jax.process_index() == 0:
    config_lib.save_config(c, os.path.join(workdir, 'config.json'))

  manager = checkpointing.make_manager(workdir, async_save=c.train.async_checkpoints)
  config_json = resume_check.as_json(c)
  saver = checkpointing.Saver(manager, workdir, keep=c.train.keep_checkpoints,
                              keep_every=c.train.keep_every, config_json=config_json)
  state = _start_state(run, manager, saver, workdir, config_json)
  per = rl_policy.steps_per_iteration(c)
  first_step = int(state.step)
  if first_step % per:
    raise UserError(f'{workdir}: checkpoint step {first_step} is not at an iteration boundary '
                    f'(rl.epochs x rl.minibatches = {per} steps per iteration): was it written '
                    'with other rl settings? Use a new --workdir')
  first = first_step // per
  resumed = saver.last_good is not None
  metrics_lib.drop_rows_after(workdir, first_step if resumed else -1)
  writer = MetricsWriter(workdir)
  guard = guards.NonFiniteGuard(c.train, saver)
  train_step = trainer.make_train_step(run)
  compute_advantages = advantage_fn(c)
  rows = rl.prompts_per_iteration * rl.samples_per_prompt
  size = rows // rl.minibatches
  final: dict = {}

  def run_eval(iteration: int, step: int):
    ev = evaluate(run, state, prompt_set.eval, eval_reward, tokenizer, iteration=iteration)
    writer.write(step, ev)
    final.update(ev)
    bar.write(f"iteration {iteration}: held-out reward {ev['eval/reward_mean']:.4f}, accuracy "
              f"{ev['eval/accuracy']:.3f} ({len(prompt_set.eval)} prompts)")

  bar = tqdm(total=rl.iterations, initial=first, disable=jax.process_index() != 0,
             dynamic_ncols=True, unit='it', desc=c.objective.name, smoothing=0)
  with guards.Interrupts() as interrupts, contextlib.ExitStack() as on_error:
    on_error.callback(saver.close)
    on_error.callback(bar.close)
    if prompt_set.eval and not resumed and first == 0:
      run_eval(0, 0)  # the starting policy's score, for comparison
    for i in range(first, rl.iterations):
      t0 = time.perf_counter()
      chosen = prompt_set.for_iteration(c.seed, i, rl.prompts_per_iteration)
      rollout = rollout_lib.sample(run, state.params, state.model_state, chosen,
                                   rollout_lib.rollout_key(c.seed, i), tokenizer=tokenizer)
      rewards_B = reward([p.text for p in rollout.prompts], rollout.completions,
                         [p.row for p in rollout.prompts])
      scores_B = rewards_B - rl.missing_eos_penalty * (~rollout.ended)
      extra, stats = compute_advantages(rollout.batch, scores_B)
      data = {**rollout.batch, **extra}
      t1 = time.perf_counter()
      pending = []
      for epoch in range(rl.epochs):
        order = np.random.default_rng([c.seed, _ORDER_STREAM, i, epoch]).permutation(rows)
        for j in range(rl.minibatches):
          index = np.sort(order[j * size:(j + 1) * size])
          minibatch = rollout_lib.to_device(run, {k: v[index] for k, v in data.items()})
          state, metrics = train_step(state, minibatch)
          pending.append(metrics)
      host = jax.device_get(pending)
      step = int(state.step)
      iteration = i + 1
      logged = {**rollout_stats(rollout, rewards_B), **stats, **step_summary(host),
                'rl/iteration': float(iteration), 'rl/rollout_time_s': t1 - t0,
                'rl/update_time_s': time.perf_counter() - t1}
      writer.write(step, logged)
      guard.check(step - per + 1, host)  # after the row is written: the log shows the bad step
      final.update(logged)
      saver.poll()
      if prompt_set.eval and (iteration % rl.eval_every == 0 or iteration == rl.iterations):
        run_eval(iteration, step)
      for hook in hooks:
        hook(iteration, state, logged)
      if (interrupts.requested or iteration % c.train.checkpoint_every == 0
          or iteration == rl.iterations):
        guard.check_params(step, state.replace(params=trainer.device_params(run, state.params)))
        saver.save(step, state, force=bool(interrupts.requested))
      if interrupts.requested:
        saver.wait()
        bar.write(f'{interrupts.requested}: saved a checkpoint at iteration {iteration} (step '
                  f'{step}); rerun to resume')
        final['preempted_at'], final['preempted_by'] = step, interrupts.requested
        break
      bar.set_postfix(reward=f"{logged['rl/reward_mean']:.3f}", kl=f"{logged['rl/kl']:.4f}")
      bar.update(1)
    on_error.pop_all()
  bar.close()
  saver.finish()
  manager.close()
  writer.close()
  final['step'] = int(state.step)
  final['iteration'] = int(state.step) // per
  return final
