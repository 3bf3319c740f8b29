r"""RL from feedback on the embedded corpus: GRPO and PPO (and DPO) from one Shakespeare decoder.

    python -m experiments.rl.run --config=configs/experiments/rl/study.py --workdir=runs/rl

From Python: `run_study(config, workdir)`.

The config's model, data and train sections define the base decoder; `config.rl_study`
(`default_section`) the rest, each part in its own folder of the workdir:

1. data/: the two tasks' JSONL files (experiments/rl/tasks.py).
2. base/: the decoder pre-trained on the corpus (research.training.trainer.train).
3. speaker/grpo and speaker/ppo: the conditional verifiable task, rewarded by
   tasks.speaker_reward, from base/ (configs/finetune/grpo.py and ppo.py with the section's
   settings).
4. question/grpo and question/ppo: a verifiable constraint (finish a line as a question),
   rewarded by its rule, tasks.question_reward.
5. reward/: a reward model (configs/finetune/reward.py) trained from base/ on the question
   preference pairs; its held-out preference accuracy.
6. preference/grpo and preference/ppo: the same prompts rewarded by the reward model instead of
   the rule, and evaluated by the rule (rl.eval_reward): what learning from a learned proxy
   keeps of the real target; preference/dpo: DPO (configs/finetune/dpo.py) from base/ on the
   reward model's pairs, evaluated like the RL runs.

Held-out numbers are over the tasks' evaluation prompts (works that pre-training never reads),
greedy completions. Writes WORKDIR/results.csv (one row per run), results.md (the table and
"what holds"), speaker.png and question.png (train reward, KL to the reference and held-out
accuracy against iterations) and environment.json. A finished part (its result.json) is never
redone; an interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import ml_collections
import numpy as np
from absl import flags

from experiments.compression import run as compression_run
from experiments.sequence_mixers import run as mixers_run
from experiments.sparse_attention import run as sparse_run
from research import config_lib
from research.errors import ConfigError, UserError

FLAGS = flags.FLAGS
SECTION = 'rl_study'
ALGORITHMS = ('grpo', 'ppo')
TASKS = ('speaker', 'question', 'preference')
# What each task's RL runs read: prompts (data/NAME.jsonl and NAME_eval.jsonl), the training
# reward, and the prompt and completion lengths (the preference task's are the question task's).
_PROMPTS = {'speaker': 'speaker', 'question': 'question', 'preference': 'question'}
_REWARDS = {'speaker': 'experiments.rl.tasks:speaker_reward',
            'question': 'experiments.rl.tasks:question_reward'}
COLUMNS = ('task', 'method', 'reward', 'iterations', 'start_accuracy', 'accuracy',
           'start_reward', 'eval_reward', 'train_reward', 'kl', 'seconds', 'directory')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=protected-access
write_csv, environment = sparse_run.write_csv, sparse_run.environment
_atomic_write = sparse_run._atomic_write
# pylint: enable=protected-access


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'output directory: results.csv, results.md, PNGs, runs')


# ------------------------------------------------------------------------------------ config


def default_section() -> ml_collections.ConfigDict:
  """Every field of `config.rl_study`, with its default."""
  s = ml_collections.ConfigDict()
  s.algorithms = ALGORITHMS
  s.tasks = TASKS
  # Both tasks' RL runs: rl.* fields of configs/finetune/{grpo,ppo}.py set for the study.
  s.iterations = 60
  s.prompts_per_iteration = 16
  s.samples_per_prompt = 8
  s.eval_every = 10
  s.num_eval_prompts = 128
  s.lr = 1e-4
  s.kl_coef = 0.04
  s.ppo_epochs = 2  # PPO's passes over a rollout (GRPO stays on-policy: one step per rollout)
  s.ppo_minibatches = 2
  s.speaker_new_tokens = 8  # a tag and its newline
  s.question_new_tokens = 24  # one line of verse
  s.speaker_prompt_len = 96  # prompt tokens at most (rl.max_prompt_len): the 512-piece BPE
  s.question_prompt_len = 48  # spells the capitalised speaker tags in many pieces
  # Subtracted from the reward model's score of a completion that never finished its line
  # (rl.missing_eos_penalty). The reward model has seen only finished lines and scores a half
  # line a little above a finished non-question (-5.0 against -5.4 here): GRPO exploited that
  # by never finishing (BENCHMARKS.md, "RL from feedback"); 0 shows it.
  s.missing_eos_penalty = 0.0
  # The reward model and DPO, both from the base on the question pairs.
  s.reward_steps = 300
  s.reward_lr = 3e-4
  s.dpo_steps = 150
  s.dpo_lr = 1e-4
  s.dpo_beta = 0.1
  s.pair_batch_size = 16
  s.num_pairs = 2048  # training pairs (tasks.build: prefs.jsonl)
  s.num_prompts = 2048  # training prompts of each task
  return s


def with_section(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  return config_lib.add_section(config, SECTION, default_section(), fields)


def section(config) -> ml_collections.ConfigDict:
  """The validated `rl_study` section."""
  if SECTION not in config:
    raise ConfigError(SECTION, None, 'the config has no `rl_study` section: build it with '
                      'experiments.rl.run.with_section(config, ...)')
  s = config[SECTION]
  for field, allowed in (('algorithms', ALGORITHMS), ('tasks', TASKS)):
    values = tuple(s[field])
    if not values or any(v not in allowed for v in values):
      raise ConfigError(f'{SECTION}.{field}', values, f'choose from {allowed}')
  for field in ('iterations', 'prompts_per_iteration', 'samples_per_prompt', 'eval_every',
                'num_eval_prompts', 'ppo_epochs', 'ppo_minibatches', 'speaker_new_tokens',
                'question_new_tokens', 'speaker_prompt_len', 'question_prompt_len',
                'reward_steps', 'dpo_steps', 'pair_batch_size',
                'num_pairs', 'num_prompts'):
    value = s[field]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f'{SECTION}.{field}', value, 'must be a positive integer')
  if s.missing_eos_penalty < 0:
    raise ConfigError(f'{SECTION}.missing_eos_penalty', s.missing_eos_penalty, 'must be >= 0')
  for field in ('lr', 'reward_lr', 'dpo_lr', 'dpo_beta'):
    if not s[field] > 0:
      raise ConfigError(f'{SECTION}.{field}', s[field], 'must be > 0')
  if s.samples_per_prompt < 2:
    raise ConfigError(f'{SECTION}.samples_per_prompt', s.samples_per_prompt,
                      'must be >= 2: GRPO compares the samples of one prompt')
  return s


# ------------------------------------------------------------------------------- the parts


def _finetune_config(name: str, overrides: dict, study_name: str):
  """configs/finetune/NAME.py with `overrides` ('a.b' -> value), finalized."""
  c = config_lib.load_config_file(os.path.join(REPO, 'configs', 'finetune', f'{name}.py'))
  config_lib.set_fields(c, overrides)
  c.name = study_name
  return config_lib.finalize(c)


def _describe(done: dict) -> str:
  return ', '.join(f'{k} {v:.3f}' for k, v in done.items()
                   if isinstance(v, float) and k != 'seconds')


def _cached(directory: str, make: Callable[[], dict], log, label: str) -> dict:
  return compression_run.cached(directory, make, log, label, describe=_describe)


def run_data(config, workdir: str, log) -> str:
  from experiments.rl import tasks  # pylint: disable=g-import-not-at-top
  s = section(config)
  directory = os.path.join(workdir, 'data')
  if not os.path.isfile(os.path.join(directory, 'question_eval.jsonl')):
    counts = tasks.build(directory, speaker_train=s.num_prompts, question_train=s.num_prompts,
                         prefs_train=s.num_pairs, seed=config.seed)
    log(f'[data] {counts}')
  return directory


def run_base(config, workdir: str, log) -> dict:
  directory = os.path.join(workdir, 'base')

  def make():
    c = sparse_run._run_config(  # pylint: disable=protected-access
        config, {}, f'{config.name}/base', study=SECTION)
    log(f'[base] {c.model.num_layers} layers x d_model {c.model.d_model}: {c.train.steps} '
        f'steps of {c.train.batch_size} x {c.data.seq_len} tokens')
    from research.data import pipeline  # pylint: disable=g-import-not-at-top
    dataset = pipeline.load_dataset(c.data, workdir=directory)
    loss = compression_run._train(c, directory, dataset)  # pylint: disable=protected-access
    return {'task': 'pretraining', 'method': 'causal_lm', 'eval_loss': loss}

  return _cached(directory, make, log, 'base')


def _rl_overrides(config, task: str, algorithm: str, base: str, data: str, reward: str) -> dict:
  s = section(config)
  o = {'init_from': base, 'seed': config.seed, 'train.lr': s.lr, 'train.warmup_steps': 0,
       'train.checkpoint_every': s.eval_every,
       'rl.prompts': os.path.join(data, f'{_PROMPTS[task]}.jsonl'),
       'rl.eval_prompts': os.path.join(data, f'{_PROMPTS[task]}_eval.jsonl'),
       'rl.num_eval_prompts': s.num_eval_prompts, 'rl.iterations': s.iterations,
       'rl.eval_every': s.eval_every, 'rl.prompts_per_iteration': s.prompts_per_iteration,
       'rl.samples_per_prompt': s.samples_per_prompt, 'rl.kl_coef': s.kl_coef,
       'rl.max_prompt_len': s[f'{_PROMPTS[task]}_prompt_len'], 'rl.success_threshold': 1.0,
       'rl.max_new_tokens': s[f'{_PROMPTS[task]}_new_tokens']}
  if algorithm == 'ppo':
    o.update({'rl.epochs': s.ppo_epochs, 'rl.minibatches': s.ppo_minibatches})
  if task != 'speaker':  # one line of verse: the completion ends at its newline
    o['rl.stop'] = '\n'
  if task in _REWARDS:
    o['rl.reward'] = _REWARDS[task]
  else:  # trained on the reward model's scores, judged by the rule its pairs were built from
    o.update({'rl.reward_model': reward, 'rl.eval_reward': _REWARDS['question'],
              'rl.missing_eos_penalty': s.missing_eos_penalty})
  return o


def _curves(directory: str) -> dict[str, list[tuple[float, float]]]:
  """(iteration, value) series of a run's metrics.jsonl: the train reward, KL and held-out
  accuracy and reward."""
  from research.training import metrics  # pylint: disable=g-import-not-at-top
  rows = metrics.read_metrics(directory)
  per = max([r['step'] / r['rl/iteration'] for r in rows if r.get('rl/iteration')] or [1.0])
  out: dict[str, list] = {}
  for r in rows:
    for key in ('rl/reward_mean', 'rl/kl', 'eval/accuracy', 'eval/reward_mean'):
      if key in r:
        out.setdefault(key, []).append((r['step'] / per, float(r[key])))
  return out


def run_rl(config, workdir: str, task: str, algorithm: str, base: str, data: str, reward: str,
           log) -> dict:
  directory = os.path.join(workdir, task, algorithm)

  def make():
    from research.rl import loop  # pylint: disable=g-import-not-at-top
    c = _finetune_config(algorithm, _rl_overrides(config, task, algorithm, base, data, reward),
                         f'{config.name}/{task}/{algorithm}')
    log(f'[{task}/{algorithm}] {c.rl.iterations} iterations of {c.rl.prompts_per_iteration} '
        f'prompts x {c.rl.samples_per_prompt} samples, {c.rl.epochs} x {c.rl.minibatches} '
        'steps each')
    final = loop.train(c, directory)
    sparse_run.check_finished(final, c.train.steps, directory)
    curves = _curves(directory)
    accuracy = curves['eval/accuracy']
    return {'task': task, 'method': algorithm,
            'reward': 'function' if task in _REWARDS else 'reward model',
            'iterations': c.rl.iterations, 'start_accuracy': accuracy[0][1],
            'accuracy': accuracy[-1][1], 'start_reward': curves['eval/reward_mean'][0][1],
            'eval_reward': curves['eval/reward_mean'][-1][1],
            'train_reward': float(np.mean([v for _, v in curves['rl/reward_mean'][-5:]])),
            'kl': curves['rl/kl'][-1][1]}

  return _cached(directory, make, log, f'{task}/{algorithm}')


def run_reward_model(config, workdir: str, base: str, data: str, log) -> dict:
  s = section(config)
  directory = os.path.join(workdir, 'reward')

  def make():
    from research.training import trainer  # pylint: disable=g-import-not-at-top
    c = _finetune_config('reward', {
        'init_from': base, 'seed': config.seed, 'data.seq_len': 96,
        'reward.train_data': os.path.join(data, 'prefs.jsonl'),
        'reward.eval_data': os.path.join(data, 'prefs_eval.jsonl'),
        'train.steps': s.reward_steps, 'train.lr': s.reward_lr,
        'train.batch_size': s.pair_batch_size, 'train.eval_every': s.reward_steps,
        'train.checkpoint_every': s.reward_steps, 'train.log_every': 50}, f'{config.name}/reward')
    log(f'[reward] a scalar head on base/: {c.train.steps} steps of {c.train.batch_size} pairs')
    final = trainer.train(c, directory)
    sparse_run.check_finished(final, c.train.steps, directory)
    return {'task': 'preference', 'method': 'reward model', 'iterations': c.train.steps,
            'accuracy': float(final['eval/accuracy']), 'eval_loss': float(final['eval/loss'])}

  return _cached(directory, make, log, 'reward model')


def run_dpo(config, workdir: str, base: str, data: str, log) -> dict:
  s = section(config)
  directory = os.path.join(workdir, 'preference', 'dpo')

  def make():
    from research.training import trainer  # pylint: disable=g-import-not-at-top
    c = _finetune_config('dpo', {
        'init_from': base, 'seed': config.seed, 'data.seq_len': 96, 'dpo.beta': s.dpo_beta,
        'dpo.train_data': os.path.join(data, 'prefs.jsonl'),
        'dpo.eval_data': os.path.join(data, 'prefs_eval.jsonl'),
        'train.steps': s.dpo_steps, 'train.lr': s.dpo_lr, 'train.batch_size': s.pair_batch_size,
        'train.eval_every': s.dpo_steps, 'train.checkpoint_every': s.dpo_steps,
        'train.log_every': 50}, f'{config.name}/preference/dpo')
    log(f'[preference/dpo] {c.train.steps} steps of {c.train.batch_size} pairs, beta '
        f'{c.dpo.beta}')
    final = trainer.train(c, directory)
    sparse_run.check_finished(final, c.train.steps, directory)
    reward_dir = os.path.join(workdir, 'reward')
    ev = _generation_eval(config, directory, data, 'preference', reward_dir)
    start = _generation_eval(config, base, data, 'preference', reward_dir)
    return {'task': 'preference', 'method': 'dpo', 'reward': 'pairs (no rollouts)',
            'iterations': c.train.steps, 'start_accuracy': start['eval/accuracy'],
            'accuracy': ev['eval/accuracy'], 'start_reward': start['eval/reward_mean'],
            'eval_reward': ev['eval/reward_mean'],
            'pair_accuracy': float(final['eval/accuracy'])}

  return _cached(directory, make, log, 'preference/dpo')


def _generation_eval(config, directory: str, data: str, task: str, reward_dir: str) -> dict:
  """The RL runs' held-out evaluation (greedy completions of the task's evaluation prompts,
  scored by its rule) of any decoder workdir."""
  from research.rl import loop  # pylint: disable=g-import-not-at-top
  overrides = _rl_overrides(config, task, 'grpo', directory, data, reward_dir)
  return loop.evaluate_workdir(_finetune_config('grpo', overrides, f'{config.name}/eval'),
                               directory)


# ------------------------------------------------------------------------------ the study


def run_study(config, workdir: str, *, base: str | None = None,
              log: Callable[[str], None] = print) -> list[dict]:
  """Runs (or resumes) every part and writes the results; returns the rows of results.csv.
  `base`: a decoder workdir (with its tokenizer) to start every run from instead of
  pre-training one (part 2)."""
  from experiments.rl import plot, report  # pylint: disable=g-import-not-at-top
  s = section(config)
  os.makedirs(workdir, exist_ok=True)
  start_all = time.perf_counter()
  data = run_data(config, workdir, log)
  if base is None:
    run_base(config, workdir, log)
    base = os.path.join(workdir, 'base')
  rows, curves = [], {}
  csv_path = os.path.join(workdir, 'results.csv')
  reward_dir = os.path.join(workdir, 'reward')
  for task in s.tasks:
    if task == 'preference':
      rows.append(run_reward_model(config, workdir, base, data, log))
    for algorithm in s.algorithms:
      rows.append(run_rl(config, workdir, task, algorithm, base, data, reward_dir, log))
      curves[(task, algorithm)] = _curves(os.path.join(workdir, task, algorithm))
      write_csv(csv_path, rows, COLUMNS)
    if task == 'preference':
      rows.append(run_dpo(config, workdir, base, data, log))
  for r in rows:
    r.setdefault('directory', os.path.relpath(
        os.path.join(workdir, r['task'], r['method']) if r['method'] in ALGORITHMS + ('dpo',)
        else reward_dir, workdir))
  write_csv(csv_path, rows, COLUMNS)
  env = environment(_command())
  env['seconds'] = round(time.perf_counter() - start_all, 1)
  subtitle = _subtitle(config, env)
  for task in s.tasks:
    plot.task_plot(task, {a: curves[(task, a)] for a in s.algorithms if (task, a) in curves},
                   [r for r in rows if r['task'] == task], workdir, subtitle)
  _atomic_write(os.path.join(workdir, 'results.md'), report.markdown(rows, env, config))
  mixers_run._write_env(workdir, env)  # pylint: disable=protected-access
  log(f"wrote results.csv, results.md and {', '.join(f'{t}.png' for t in s.tasks)} in "
      f"{workdir} ({env['seconds']} s)")
  return rows


def _subtitle(config, env) -> str:
  m, s = config.model, section(config)
  return (f"{env['device']}: base {m.num_layers} x d_model {m.d_model}; {s.iterations} "
          f'iterations of {s.prompts_per_iteration} prompts x {s.samples_per_prompt} samples')


def _command() -> str:
  import sys  # pylint: disable=g-import-not-at-top
  return ' '.join(['python -m experiments.rl.run'] + sys.argv[1:])


def main(config, argv):
  del argv
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/rl')
  run_study(config, FLAGS.workdir)


if __name__ == '__main__':
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run_with_config(main)
