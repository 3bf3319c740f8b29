"""Knowledge distillation (Hinton et al. 2015): a student learns a frozen teacher's softened
next-token distributions and the hard labels.

With teacher probabilities p_T = softmax(teacher logits / T) and student q_T = softmax(student
logits / T) at each target position (weight > 0), the loss summed over those positions is

  alpha x T^2 x KL(p_T || q_T) + (1 - alpha) x cross-entropy(student logits, targets),

alpha = `distill.alpha`, T = `distill.temperature`; T^2 keeps the soft term's gradients the
size of the hard term's as T grows. The KL covers the tokenizer's ids (data.vocab_size): a
model's padded vocabulary rows are never targets.

Pairings: decoder teachers with decoder students that share the tokenizer (so they predict the
same ids), any sizes, with dense, mixture-of-experts or recurrent-mixer layers on either side
(a bigger decoder teaching a smaller one, an MoE or Mamba-2 teacher teaching a dense student).
Encoder (MLM) and encoder-decoder models on either side are refused: they do not predict the
next token of the same sequence.

The teacher. Its model is built from the teacher workdir's own config.json, run at this run's
sequence length on this run's mesh and logical-axis rules; its variables (parameters, and an
MoE teacher's aux-free selection bias) live in the train state (`model_state['distill_teacher']`),
as DPO's reference does. `init_frozen_state` makes zero placeholders with the teacher's logical
axes (so they shard like the student's parameters and a resumed run restores them from its own
checkpoint); at a fresh start `load_frozen_state` fills them from the teacher's latest intact
checkpoint (research.loading.restore_state). The teacher's forward pass runs inside the jitted
train step, deterministic and under stop_gradient: no gradients, never updated, and no optimizer
state (the optimizer sees `params`, the student's, only). Cost: one teacher forward per step and
the teacher's parameters in device memory; both models' float32 logits [B, T, V] exist at once
(model.loss_chunk_size does not apply here).

Data: finetune.train_data JSONL rows (prompt/response or chat, research/data/sft.py; only the
response tokens are targets) when it is set, else the token stream of `data` (causal LM windows,
every token a target but the one after an EOS). The tokenizer is the teacher's.

Logged per target token: train/loss and eval/loss are the student's cross-entropy (comparable
with any LM run and with the teacher's), distill/loss the objective above, distill/kl the KL
at temperature T, distill/ce the student's cross-entropy, and distill/teacher_loss the teacher's
own cross-entropy on the same batch.
"""

from __future__ import annotations

import copy
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from research import config_lib
from research.errors import ConfigError
from research.layers import moe as moe_lib
from research.objectives import causal_lm

TEACHER = 'distill_teacher'
FAMILIES = ('decoder',)  # teacher and student
_ABSOLUTE_POSITIONS = ('learned', 'sinusoidal')


# ----------------------------------------------------------------------------- the config


def _teacher_dir(config) -> str:
  path = config.distill.teacher
  if not path:
    raise ConfigError('distill.teacher', path, 'give the workdir of a trained teacher (what '
                      'research.train or research.convert wrote)')
  if not os.path.isfile(os.path.join(path, 'config.json')):
    raise ConfigError('distill.teacher', path, 'is not a workdir with a config.json: give one '
                      'that research.train or research.convert wrote')
  return path


def _saved_teacher_config(config):
  return config_lib.load_saved_config(os.path.join(_teacher_dir(config), 'config.json'))


def check_config(config) -> None:
  """Validates the distillation fields and the pairing before anything compiles."""
  c = config
  if not c.distill.temperature > 0:
    raise ConfigError('distill.temperature', c.distill.temperature,
                      'must be > 0 (1: the plain softmax; 1 to 4 is usual)')
  if not 0 <= c.distill.alpha <= 1:
    raise ConfigError('distill.alpha', c.distill.alpha, 'must be in [0, 1]: the weight of the '
                      'teacher term (1 - alpha weighs the hard labels)')
  t = _saved_teacher_config(c)
  path = c.distill.teacher
  if c.model.family not in FAMILIES:
    raise ConfigError('model.family', c.model.family, "distill trains 'decoder' students (dense, "
                      'MoE or recurrent-mixer layers) from decoder teachers')
  if t.model.family not in FAMILIES:
    raise ConfigError('distill.teacher', path, f'is a {t.model.family!r} model: distill pairs '
                      'decoder teachers with decoder students (dense, MoE or recurrent mixers)')
  if t.data.vocab_size != c.data.vocab_size:
    raise ConfigError('data.vocab_size', c.data.vocab_size, f'the teacher ({path}) predicts '
                      f'{t.data.vocab_size} token ids: the student must share its tokenizer '
                      f'(data.vocab_size={t.data.vocab_size})')
  if c.mesh.stage > 1:
    raise ConfigError('mesh.stage', c.mesh.stage, 'distill runs without pipeline stages: use '
                      'mesh.fsdp or mesh.tensor to shard the two models')
  max_len = t.model.max_len or t.data.seq_len
  if t.model.position in _ABSOLUTE_POSITIONS and c.data.seq_len > max_len:
    raise ConfigError('data.seq_len', c.data.seq_len, f'the teacher ({path}) has '
                      f'{t.model.position} positions for {max_len} tokens: use data.seq_len <= '
                      f'{max_len}')
  _check_tokenizers(c)


def _teacher_tokenizer(config):
  """The teacher workdir's tokenizer, or None when it has none (an import without one)."""
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  path = config.distill.teacher
  return pipeline.load_tokenizer_from_workdir(path) if pipeline.has_tokenizer(path) else None


def _check_tokenizers(config) -> None:
  """The student's tokenizer sources (data.tokenizer, init_from's) must be the teacher's."""
  # pylint: disable-next=g-import-not-at-top
  from research.data import pipeline, tokenizer as tokenizer_lib
  teacher = _teacher_tokenizer(config)
  if teacher is None:
    return  # nothing to compare: the vocabulary sizes agree (check_config)
  given = {}  # field -> (its value, the tokenizer it names)
  if config.data.tokenizer:
    given['data.tokenizer'] = (config.data.tokenizer, tokenizer_lib.load_tokenizer(
        os.path.expanduser(config.data.tokenizer)))
  if config.get('init_from', '') and pipeline.has_tokenizer(config.init_from):
    given['init_from'] = (config.init_from,
                          pipeline.load_tokenizer_from_workdir(config.init_from))
  for field, (value, tokenizer) in given.items():
    if tokenizer.sha256 != teacher.sha256:
      raise ConfigError(field, value, f"its tokenizer is not the teacher's "
                        f'({config.distill.teacher}): student and teacher must share one')


def teacher_config(config):
  """The teacher's config.json, set to run inside this run: this run's mesh and rules (its
  variables shard by the same logical axes), batch and sequence length (its position table and
  every parameter shape kept)."""
  t = _saved_teacher_config(config)
  if not t.model.max_len:
    t.model.max_len = t.data.seq_len  # its own table, not this run's seq_len
  t.data.seq_len = config.data.seq_len
  t.mesh = copy.deepcopy(config.mesh)
  t.train.batch_size = config.train.batch_size
  t.train.micro_batches = config.train.micro_batches
  t.train.offload = 'none'
  return config_lib.finalize(t)


def teacher_model(config):
  """The teacher's flax module (deterministic: no dropout, no router noise)."""
  from research import models  # pylint: disable=g-import-not-at-top
  return models.build_model(teacher_config(config))


# ----------------------------------------------------------------------------- objective hooks


def window_len(config) -> int:
  return config.data.seq_len + 1


def init_args(batch_size: int, config):
  return (jnp.zeros((batch_size, config.data.seq_len), jnp.int32),)


def load_dataset(config, workdir: str):
  """finetune.train_data's JSONL rows when set, else data's token stream; with the teacher's
  tokenizer (saved into `workdir`), checked against what the data was tokenized with."""
  from research.data import pipeline, sft  # pylint: disable=g-import-not-at-top
  teacher = _teacher_tokenizer(config)
  if config.finetune.train_data:
    if teacher is not None and not config.get('init_from', '') and not config.data.tokenizer:
      config = copy.deepcopy(config)
      config.data.tokenizer = config.distill.teacher  # sft.tokenizer_for reads it
    dataset = sft.load_sft(config, sft.tokenizer_for(config, workdir))
  else:
    data = config.data
    if teacher is not None and not data.tokenizer:
      data = data.copy_and_resolve_references()
      data.tokenizer = config.distill.teacher
    dataset = pipeline.load_dataset(data, workdir=workdir)
  if teacher is not None and dataset.tokenizer.sha256 != teacher.sha256:
    field = 'finetune.train_data' if config.finetune.train_data else 'data.source'
    raise ConfigError(field, config.finetune.train_data or config.data.source,
                      f'was tokenized by another tokenizer than the teacher\'s '
                      f'({config.distill.teacher}): prepare it with the teacher\'s tokenizer')
  return dataset


def make_batch(rows, *, tokenizer=None, config=None, rngs=None):
  """JSONL rows are the batch already (sft); token windows become causal LM batches."""
  if isinstance(rows, dict):
    return dict(rows)
  return causal_lm.make_batch(rows, tokenizer=tokenizer, config=config, rngs=rngs)


def init_frozen_state(config, student_init_args) -> dict:
  """Zero placeholders of the teacher's variables, with their logical axes (traced in the
  state's initialisation): the trainer shards them by the run's rules and restores a resumed
  run's copy from its own checkpoint; `load_frozen_state` fills a fresh run's."""
  teacher = teacher_model(config)
  batch = student_init_args[0].shape[0]
  variables = teacher.init({'params': jax.random.key(0)},
                           jnp.zeros((batch, config.data.seq_len), jnp.int32))
  kept = {k: v for k, v in variables.items() if k in ('params', moe_lib.STATE_COLLECTION)}
  # Zeros: the random initialisation is dead code that XLA drops.
  return {TEACHER: jax.tree.map(jnp.zeros_like, kept)}


def load_frozen_state(run, state):
  """`state` with the teacher's variables from its latest intact checkpoint, placed on the
  shardings `init_frozen_state`'s placeholders have."""
  from research import loading  # pylint: disable=g-import-not-at-top
  path = run.config.distill.teacher
  teacher_run = loading.run_here(teacher_config(run.config))
  restored = loading.restore_state(path, teacher_run)
  variables = {'params': restored.params,
               **{k: v for k, v in restored.model_state.items()
                  if k == moe_lib.STATE_COLLECTION}}
  target = run.stored_shardings.model_state[TEACHER]
  if jax.tree.structure(variables) != jax.tree.structure(target):
    raise ConfigError('distill.teacher', path, 'its checkpoint does not hold the variables its '
                      'config.json describes')
  variables = jax.device_put(variables, target)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  logging.info('distill: teacher %s at step %d, %d parameters, frozen', path,
               int(restored.step), count)
  return state.replace(model_state={**state.model_state, TEACHER: variables})


def loss_kwargs(config) -> dict:
  return {'teacher': teacher_model(config), 'alpha': float(config.distill.alpha),
          'temperature': float(config.distill.temperature),
          'vocab_size': int(config.data.vocab_size)}


# ----------------------------------------------------------------------------- the loss


def distill_sums(student_logits_BTV, teacher_logits_BTV, targets_BT, weights_BT, *,
                 temperature: float, vocab_size: int | None = None) -> dict:
  """Weighted sums over target positions, in float32: kl (KL(p_T || q_T) at temperature T),
  ce (the student's cross-entropy at T = 1), teacher_ce and correct (student argmax hits).

  The KL reads the first `vocab_size` logits (the tokenizer's ids; None: all of them)."""
  student_BTV = student_logits_BTV.astype(jnp.float32)
  teacher_BTV = teacher_logits_BTV.astype(jnp.float32)
  ce, _, correct = causal_lm.cross_entropy(student_BTV, targets_BT, weights_BT)
  teacher_ce, _, _ = causal_lm.cross_entropy(teacher_BTV, targets_BT, weights_BT)
  v = vocab_size or student_BTV.shape[-1]
  log_q_BTV = jax.nn.log_softmax(student_BTV[..., :v] / temperature, axis=-1)
  log_p_BTV = jax.nn.log_softmax(teacher_BTV[..., :v] / temperature, axis=-1)
  kl_BT = jnp.sum(jnp.exp(log_p_BTV) * (log_p_BTV - log_q_BTV), axis=-1)
  return dict(kl=jnp.sum(kl_BT * weights_BT), ce=ce, teacher_ce=teacher_ce, correct=correct)


def combine(kl, ce, *, alpha: float, temperature: float):
  """alpha x T^2 x KL + (1 - alpha) x CE (sums or means alike)."""
  return alpha * temperature ** 2 * kl + (1.0 - alpha) * ce


def loss_fn(model, params, batch, *, rngs=None, model_state=None, teacher=None,
            alpha: float = 0.5, temperature: float = 2.0, vocab_size: int | None = None):
  """(summed distillation loss, aux) over the batch's target tokens; aux['loss_sum'] is the
  student's cross-entropy (train/loss, eval/loss), the distill/ sums are in aux['metrics']."""
  if teacher is None or not model_state or TEACHER not in model_state:
    raise ValueError('distill needs the teacher module (loss_kwargs) and its variables in '
                     'model_state (init_frozen_state, load_frozen_state)')
  args = (batch['inputs'], batch['positions'], batch['segment_ids'])
  frozen = jax.lax.stop_gradient(model_state[TEACHER])
  teacher_BTV, _ = moe_lib.apply_model(teacher, frozen, *args, update_state=False)
  teacher_BTV = jax.lax.stop_gradient(teacher_BTV)
  own = {k: v for k, v in model_state.items() if k != TEACHER}  # the student's MoE state
  student_BTV, moe = moe_lib.apply_model(model, {'params': params, **own}, *args, rngs=rngs)
  weights_BT = batch['weights']
  sums = distill_sums(student_BTV, teacher_BTV, batch['targets'], weights_BT,
                      temperature=temperature, vocab_size=vocab_size)
  loss_sum = combine(sums['kl'], sums['ce'], alpha=alpha, temperature=temperature)
  metrics = {'distill/loss': loss_sum, 'distill/kl': sums['kl'], 'distill/ce': sums['ce'],
             'distill/teacher_loss': sums['teacher_ce']}
  aux = dict(loss_sum=sums['ce'], weight_sum=jnp.sum(weights_BT), correct=sums['correct'],
             metrics=metrics)
  return moe_lib.add_to_loss(loss_sum, aux, moe)


def eval_metrics(totals, prefix: str = 'eval/') -> dict[str, float]:
  """The LM summary of the student (loss = its cross-entropy, perplexity, accuracy) and the
  distill/ sums per target token (trainer.evaluate, research.evaluate)."""
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  out = trainer.token_eval_metrics(totals, prefix)
  tokens = max(float(totals['weight_sum']), 1.0)
  out.update({f'{prefix}{k}': float(v) / tokens for k, v in totals['metrics'].items()})
  return out
