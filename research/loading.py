"""One way to use a trained or imported run from Python: `research.load(workdir)`.

  import research
  lm = research.load('runs/shakespeare')           # the latest intact checkpoint
  lm = research.load('runs/shakespeare', step=200, overrides=[('model.dtype', 'float32')])
  logits_BTV = lm(tokens_BT)                       # float32 logits
  logp_BT = lm.score(tokens_BT)                    # log p(token t | tokens before t); [:, 0] = 0
  lm.generate('ROMEO:', max_new_tokens=32)         # text in, text out; token ids in, ids out
  lm.generate(['ROMEO:', 'JULIET: O'], stop='\n')  # one batch of mixed lengths, each cut at a line
  rm = research.load('runs/shakespeare_reward')    # a reward model (configs/finetune/reward.py)
  rm.rewards('Q: ...', ['good answer', 'bad answer'])  # float32 scores, one per pair

A workdir is what research.train or research.convert wrote: config.json, checkpoints/ and (for
runs trained here) the tokenizer. `load` reads config.json with `overrides` (only fields that
do not change what was trained, OVERRIDABLE_*), builds the run on the training mesh when it fits
this host's devices, else on one device, restores the checkpoint there and loads the tokenizer
(None when the workdir has none: then give token ids). `restore_state` is the one restore path
for "a checkpoint of a workdir"; research.sample, research.evaluate, init_from and the
experiments all go through it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import config_lib
from research.errors import ConfigError, UserError
from research.inference import decoding
from research.parallel import mesh as mesh_lib

# Fields a loaded run may change: the rest describe the trained model and its data, and a
# checkpoint cannot be restored into a different model.
OVERRIDABLE_PREFIXES = ('eval.', 'sample.', 'mesh.')
OVERRIDABLE_FIELDS = ('data.cache_dir', 'data.data_dir', 'data.text_key', 'model.dtype',
                      'model.attention.implementation', 'model.loss_chunk_size', 'model.remat')

_ABSOLUTE_POSITIONS = ('learned', 'sinusoidal')
_DECODER_START_ID = 0  # T5's decoder start token (pad), as research.inference.seq2seq


def _check_workdir(workdir: str) -> None:
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir}: no such directory: give a workdir that research.train or '
                    'research.convert wrote')
  if not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise UserError(f'{workdir} has no config.json: run research.train with --workdir={workdir} '
                    'first')


def load_config(workdir: str, overrides: Sequence[tuple[str, Any]] = ()):
  """`workdir`'s config.json with `(key, value)` overrides applied, finalized and checked.

  A value is the command-line text of the field (`('eval.k', '5')`); other Python values are
  written as their repr. Only OVERRIDABLE_PREFIXES / OVERRIDABLE_FIELDS may change.
  """
  from research.evaluation import common  # pylint: disable=g-import-not-at-top
  _check_workdir(workdir)
  config = config_lib.load_saved_config(os.path.join(workdir, 'config.json'))
  # JSON has no tuples: a saved tuple field comes back as a list, which overrides then reject.
  if isinstance(config.eval.stop, list):
    config.eval.stop = tuple(config.eval.stop)
  for key, value in overrides:
    text = value if isinstance(value, str) else repr(value)
    if not (key.startswith(OVERRIDABLE_PREFIXES) or key in OVERRIDABLE_FIELDS):
      raise UserError(f'override {key}={text}: a trained run can only change '
                      f'{", ".join(p + "*" for p in OVERRIDABLE_PREFIXES)} and '
                      f'{", ".join(OVERRIDABLE_FIELDS)} when loaded; retrain to change the rest')
    if key in common.ESCAPED_FIELDS:
      text = common.unescape(text)
    config_lib.apply_override(config, key, text)
  config = config_lib.finalize(config)
  common.check_eval_config(config.eval)
  return config


def run_here(config):
  """A research.training.trainer.Run of `config` on the training mesh when it fits the devices
  here, else on one device per process (e.g. a laptop reading a pod's run)."""
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  try:
    return trainer.build_run(config)
  except ConfigError as e:
    logging.warning('restoring on one device: the training mesh does not fit here (%s)', e)
  config = copy.deepcopy(config)
  config.mesh.preset = ''
  for axis in mesh_lib.MESH_AXES:
    config.mesh[axis] = 1
  config.mesh.data = -1  # all the devices it is given: one
  config.train.micro_batches = 1
  if config.train.batch_size % jax.process_count():
    config.train.batch_size = jax.process_count()
  return trainer.build_run(config, devices=jax.local_devices()[:1])


def restore_state(workdir: str, run, *, step: int | None = None):
  """The TrainState of `workdir`'s latest intact checkpoint (or `step`), sharded for `run`.

  Reads only: nothing in the workdir is created or changed.

  Raises:
    UserError: no checkpoints/, no checkpoint in it, no checkpoint `step`, or a config.json
      that does not describe the checkpoint.
  """
  from research.training import checkpointing, trainer  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir} has no checkpoints/: run research.train with '
                    f'--workdir={workdir} first')
  manager = checkpointing.make_manager(workdir, async_save=False)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise UserError(f'{workdir}/checkpoints holds no checkpoint: run research.train with '
                      f'--workdir={workdir} first')
    if step is not None and step not in steps:
      raise UserError(f'step={step}: no such checkpoint in {workdir}; available: {steps}')
    state = checkpointing.restore(manager, trainer.abstract_state(run), step)
  finally:
    manager.close()
  return state


def save_workdir(workdir: str, config, run, params, model_state=None) -> None:
  """Writes a workdir that `load` and research.train (init_from, resume) read: config.json and
  a step-0 checkpoint of `params` (placed on `run`'s shardings) with a fresh optimizer state.
  research.convert (imports) and research.export (merged fine-tunes) write theirs with it."""
  from research.training import checkpointing, trainer  # pylint: disable=g-import-not-at-top
  with run.context():
    opt_state = jax.jit(run.tx.init, out_shardings=run.state_shardings.opt_state)(params)
  state = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                             model_state=model_state or {})
  os.makedirs(workdir, exist_ok=True)
  config_lib.save_config(config, os.path.join(workdir, 'config.json'))
  manager = checkpointing.make_manager(workdir, keep=config.train.keep_checkpoints,
                                       async_save=False)
  try:
    checkpointing.save(manager, 0, state, force=True)
    manager.wait_until_finished()
  finally:
    manager.close()


def _load_tokenizer(workdir: str):
  """(tokenizer, '') or (None, why): an imported workdir may have no tokenizer."""
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  try:
    return pipeline.load_tokenizer_from_workdir(workdir), ''
  except UserError as e:
    return None, str(e)


def load(workdir: str, *, step: int | None = None,
         overrides: Sequence[tuple[str, Any]] = ()) -> LanguageModel:
  """The run in `workdir` at its latest intact checkpoint (or `step`), ready to use.

  `overrides`: (key, value) pairs applied to config.json (see `load_config`), e.g.
  [('model.dtype', 'float32')] or [('eval.k', '5')].

  Raises:
    UserError: no such workdir, no config.json or checkpoint, no checkpoint `step`, or an
      override of a field that describes what was trained.
  """
  config = load_config(workdir, overrides)
  run = run_here(config)
  state = restore_state(workdir, run, step=step)
  tokenizer, why = _load_tokenizer(workdir)
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  # The optimizer state is dropped here: inference never reads it. Parameters a train.offload
  # run keeps on the host come to the device, where decoding and evaluation read them.
  return LanguageModel(config=config, run=run, params=trainer.device_params(run, state.params),
                       model_state=state.model_state, step=int(state.step), tokenizer=tokenizer,
                       workdir=workdir, no_tokenizer_because=why)


# ----------------------------------------------------------------------------- the model


def _log_probs(logits_BTV, tokens_BT):
  """float32 log-softmax of each row of logits, read at the token it predicts."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BTV, tokens_BT[..., None], axis=-1)[..., 0]


def _shift_right(targets_BT):
  """Decoder inputs for teacher forcing: the start token, then every target but the last."""
  start_B1 = jnp.full((targets_BT.shape[0], 1), _DECODER_START_ID, targets_BT.dtype)
  return jnp.concatenate([start_B1, targets_BT[:, :-1]], axis=1)


@functools.lru_cache(maxsize=16)
def _compiled_logits(model, family: str):
  """jit(variables, tokens, targets or None) -> float32 logits (see LanguageModel.__call__)."""

  def logits(variables, tokens_BT, targets_BT):
    if family == 'encoder_decoder':
      return model.apply(variables, tokens_BT, _shift_right(targets_BT)).astype(jnp.float32)
    return model.apply(variables, tokens_BT).astype(jnp.float32)

  return jax.jit(logits)


@functools.lru_cache(maxsize=16)
def _compiled_score(model, family: str):
  """jit(variables, tokens, targets or None) -> float32 logp (see LanguageModel.score)."""
  logits = _compiled_logits(model, family)

  def score(variables, tokens_BT, targets_BT):
    logits_BTV = logits(variables, tokens_BT, targets_BT)
    if family == 'encoder_decoder':
      return _log_probs(logits_BTV, targets_BT)
    logp_BS = _log_probs(logits_BTV[:, :-1], tokens_BT[:, 1:])
    return jnp.pad(logp_BS, ((0, 0), (1, 0)))  # nothing predicts the first token

  return jax.jit(score)


@functools.lru_cache(maxsize=16)
def _compiled_rewards(model):
  """jit(variables, tokens, positions, segment_ids) -> float32 scores_B: the scalar head at each
  row's last real token, as the reward objective scores (see LanguageModel.rewards)."""
  from research.objectives import reward  # pylint: disable=g-import-not-at-top

  def rewards(variables, tokens_BT, positions_BT, segment_ids_BT):
    return reward.last_token_scores(model, variables, tokens_BT, positions_BT, segment_ids_BT)[0]

  return jax.jit(rewards)


def _as_texts(value, name: str) -> list[str] | str:
  if isinstance(value, str):
    return value
  texts = list(value)
  if not texts or not all(isinstance(t, str) for t in texts):
    raise UserError(f'{name}: give a str or a non-empty list of str')
  return texts


@dataclasses.dataclass(repr=False)
class LanguageModel:
  """A run restored for inference (`research.load`), sharded on this host's mesh.

  config: the run's config (config.json with the overrides); run: the research.training
  trainer.Run it was restored with (mesh, shardings, objective; its config differs from
  `config` only when the run fell back to one device: the mesh and micro-batches); params; model_state: the
  non-gradient collections the checkpoint carries (the aux-free MoE selection bias, and a DPO
  run's frozen reference; {} for most runs); step: the checkpoint's step; tokenizer: None when
  the workdir has none (imported runs): then pass token ids, not text.
  """
  config: Any
  run: Any
  params: Any
  model_state: dict
  step: int
  tokenizer: Any
  workdir: str
  no_tokenizer_because: str = ''

  def __repr__(self) -> str:  # not the parameters: a notebook shows this
    return (f'LanguageModel({self.workdir!r}, step={self.step}, family={self.family!r}, '
            f'objective={self.config.objective.name!r}, tokenizer='
            f'{"yes" if self.tokenizer is not None else "none"})')

  @property
  def model(self):
    """The flax module (deterministic: no dropout)."""
    return self.run.eval_model

  @property
  def family(self) -> str:
    return self.config.model.family

  @property
  def variables(self) -> dict:
    """{'params': ..., **model_state}: what `model.apply` reads."""
    return {'params': self.params, **(self.model_state or {})}

  def require_tokenizer(self):
    """The tokenizer; a one-line UserError when the workdir has none."""
    if self.tokenizer is None:
      raise UserError(f'{self.workdir} has no tokenizer ({self.no_tokenizer_because}): pass '
                      'token ids instead of text, or copy the tokenizer the model was trained '
                      'with into the workdir')
    return self.tokenizer

  # ------------------------------------------------------------------------- forward, score

  def _tokens(self, tokens, name: str) -> np.ndarray:
    if isinstance(tokens, jax.Array):
      tokens = decoding.to_host(tokens)
    array = np.asarray(tokens)
    if array.ndim != 2 or array.shape[1] == 0 or not np.issubdtype(array.dtype, np.integer):
      raise UserError(f'{name} has shape {array.shape} and dtype {array.dtype}: expected '
                      'integer token ids [batch, length], length >= 1 (wrap one sequence as '
                      '[ids])')
    cfg = self.model.cfg
    if cfg.position in _ABSOLUTE_POSITIONS and array.shape[1] > cfg.max_len:
      raise UserError(f'{name} has {array.shape[1]} tokens per row, more than the model context '
                      f'(model.max_len={cfg.max_len}, {cfg.position} positions): shorten it')
    return array.astype(np.int32)

  def _inputs(self, tokens_BT, targets_BT):
    """(tokens, targets or None), checked against the family's calling convention."""
    if self.family == 'encoder_decoder':
      if targets_BT is None:
        raise UserError('an encoder_decoder run takes (inputs_BS, targets_BT): the encoder '
                        'inputs and the decoder targets, e.g. lm(inputs, targets)')
      return self._tokens(tokens_BT, 'inputs_BS'), self._tokens(targets_BT, 'targets_BT')
    if targets_BT is not None:
      raise UserError(f'a {self.family} run takes tokens_BT alone: drop targets_BT (it is for '
                      'encoder_decoder runs)')
    return self._tokens(tokens_BT, 'tokens_BT'), None

  def __call__(self, tokens_BT, targets_BT=None):
    """float32 logits_BTV.

    decoder, encoder: lm(tokens_BT), one row per sequence, rows of one length (right-pad
    shorter ones: a decoder's padding after a row's text does not change that text's logits;
    an encoder attends to every position, padding included).
    encoder_decoder: lm(inputs_BS, targets_BT), teacher forcing: logits_BTV[:, t] predicts
    targets_BT[:, t] from the inputs, the start token and targets_BT[:, :t]. Inputs are
    right-padded with 0, which the encoder masks.
    """
    tokens_BT, targets_BT = self._inputs(tokens_BT, targets_BT)
    return _compiled_logits(self.model, self.family)(self.variables, tokens_BT, targets_BT)

  def score(self, tokens_BT, targets_BT=None):
    """Per-token float32 log-probabilities, exact (a log-softmax of the model's logits).

    decoder: logp_BT[:, t] = log p(tokens_BT[:, t] | tokens_BT[:, :t]) for t >= 1, and
    logp_BT[:, 0] = 0 (nothing precedes the first token): [B, T], aligned with the tokens, so
    a continuation after a prompt of P tokens scores logp_BT[:, P:].sum(-1).
    encoder_decoder: score(inputs_BS, targets_BT) -> [B, T], log p(targets_BT[:, t] | inputs,
    targets_BT[:, :t]).

    Raises:
      UserError: an encoder run (it is not a left-to-right model: use its logits, lm(tokens)).
    """
    if self.family == 'encoder':
      raise UserError('an encoder run (mlm) does not score left to right: use its logits, '
                      'lm(tokens_BT), e.g. at masked positions')
    tokens_BT, targets_BT = self._inputs(tokens_BT, targets_BT)
    return _compiled_score(self.model, self.family)(self.variables, tokens_BT, targets_BT)

  # ------------------------------------------------------------------------- rewards

  def rewards(self, prompts, responses, *, batch_size: int = 64) -> np.ndarray:
    """float32 scores [N] of N (prompt, response) pairs by a reward model (a workdir with
    model.scalar_head: configs/finetune/reward.py), exactly as its training scored each side of
    a preference pair (research/objectives/reward.py): the text is tokenised as the training
    rows were (research.data.sft: prompt + response + eos, bos first where the tokenizer adds
    one) and scored by the scalar head at that eos. Higher is preferred.

    prompts, responses: a str or a list of str each; a str pairs with every item of the other
      (one prompt and several responses: best-of-n), two lists pair up in order, two strs are
      one pair (scores of shape [1]).
    batch_size: rows per compiled call. Rows are right-padded to a multiple of
      research.inference.decoding.BUCKET tokens, sorted by length when they need several
      batches, and the last batch is filled with copies of its first row: one program per
      length bucket. Padding never reaches a row's eos, so a score does not depend on the
      batching (to float rounding).

    Raises:
      UserError: a model without a scalar head, a workdir without a tokenizer, lists of
        different lengths or empty, a pair longer than a position table.
    """
    from research.data import sft  # pylint: disable=g-import-not-at-top
    if not self.config.model.get('scalar_head', False):
      raise UserError(f'{self.workdir} has no scalar head (model.scalar_head is false; objective '
                      f'{self.config.objective.name!r}): rewards() needs a reward model, trained '
                      'with configs/finetune/reward.py')
    if batch_size <= 0:
      raise UserError(f'batch_size={batch_size}: must be a positive integer')
    tokenizer = self.require_tokenizer()
    prompts, responses = _as_texts(prompts, 'prompts'), _as_texts(responses, 'responses')
    if isinstance(prompts, str) and isinstance(responses, str):
      prompts, responses = [prompts], [responses]
    elif isinstance(prompts, str):
      prompts = [prompts] * len(responses)
    elif isinstance(responses, str):
      responses = [responses] * len(prompts)
    if len(prompts) != len(responses):
      raise UserError(f'{len(prompts)} prompts and {len(responses)} responses: give one '
                      'response per prompt, or one prompt (a str) for all the responses')
    examples = [sft.encode_pieces(sft.preference_pieces(p, r), tokenizer)
                for p, r in zip(prompts, responses)]
    cfg = self.model.cfg
    longest = max(len(ids) for ids, _ in examples)
    if cfg.position in _ABSOLUTE_POSITIONS and longest > cfg.max_len:
      raise UserError(f'a prompt and response take {longest} tokens, more than the model context '
                      f'(model.max_len={cfg.max_len}, {cfg.position} positions): shorten it')
    rows = min(batch_size, len(examples))
    order = list(range(len(examples)))
    if len(examples) > rows:
      order.sort(key=lambda i: len(examples[i][0]))
    scores = np.zeros(len(examples), np.float32)
    score = _compiled_rewards(self.model)
    for first in range(0, len(order), rows):
      index = order[first:first + rows]
      filled = index + [index[0]] * (rows - len(index))
      width = decoding.prompt_bucket(max(len(examples[i][0]) for i in filled))
      batch = sft.decoder_rows([examples[i] for i in filled], width, pack=False,
                               pad_id=tokenizer.pad_id)
      out = score(self.variables, batch['inputs'], batch['positions'], batch['segment_ids'])
      scores[index] = decoding.to_host(out)[:len(index)]
    return scores

  # ------------------------------------------------------------------------- generate

  def generate(self, prompts, *, max_new_tokens: int = 32, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None,
               stop: str | Sequence[str] = (), batch_size: int = 64, beam_size: int = 1,
               length_penalty: float = 0.6):
    """The new tokens for each prompt (the prompt not included), stopping at eos or a stop
    string.

    prompts: a str -> a str; a list of str -> a list of str (needs the tokenizer); one list of
      token ids -> a list of ids; a list of id lists or an int array [B, P] -> a list of id
      lists. Rows may differ in length.
    decoder: the prompts are continued with the KV-cache decoder, left-padded into batches of
      up to `batch_size` prompts of similar lengths (research.inference.decoding.generate_rows:
      one compiled program per batch size and prompt bucket); greedy results do not depend on
      the batching, samples are drawn from PRNG key(seed).
    encoder_decoder: the prompt is the encoder input (research.inference.seq2seq), all prompts
      in one batch; text gets eos appended, as in training, token ids are used as given.
      beam_size > 1: length-normalised beam search (length_penalty: GNMT alpha), its best
      hypothesis.
    temperature 0 is greedy; top_k 0 and top_p 1 are off. eos_id: a row ends at it (and it
      is dropped); None takes the tokenizer's (no stop without a tokenizer).
    stop: a string or several (needs the tokenizer); a row ends at the first occurrence of any
      of them in its decoded text. Text is cut before it; token ids keep the shortest prefix
      whose text contains it (the stop string included, as transformers' stop_strings). The
      cut happens on the host after decoding: the device runs max_new_tokens steps unless
      every row of a batch emits eos.

    Raises:
      UserError: an encoder run (it fills masks: research.sample or
        research.inference.fill_mask), text or stop strings without a tokenizer, an empty
        prompt, invalid sampling settings, a prompt plus max_new_tokens longer than a position
        table.
    """
    if self.family == 'encoder':
      raise UserError('an encoder run (mlm) does not generate text, it fills [MASK]s: use '
                      'research.sample --prompt="... [MASK] ..." or '
                      'research.inference.fill_mask.fill_mask(lm.model, lm.params, lm.tokenizer, '
                      'text)')
    decoding.check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
    stop = decoding.check_stop(stop)
    if stop:
      self.require_tokenizer()
    rows, as_text, single = self._prompt_rows(prompts)
    if eos_id is None and self.tokenizer is not None:
      eos_id = self.tokenizer.eos_id
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, eos_id=eos_id)
    if self.family == 'decoder':
      if beam_size != 1:
        raise UserError(f'beam_size={beam_size}: beam search is for encoder_decoder runs; a '
                        'decoder samples (temperature=0 is greedy)')
      outputs = self._generate_decoder(rows, batch_size=batch_size, **settings)
    else:
      if as_text:
        rows = [row + [eos_id] for row in rows]  # as the encoder inputs were in training
      outputs = self._generate_seq2seq(rows, beam_size=beam_size, length_penalty=length_penalty,
                                       **settings)
    outputs = [decoding.cut_at_eos(ids, eos_id)[0] for ids in outputs]
    if as_text:
      outputs = [decoding.cut_at_stop(self.tokenizer.decode(ids), stop)[0] for ids in outputs]
    elif stop:
      outputs = [decoding.cut_ids_at_stop(ids, self.tokenizer.decode, stop)[0]
                 for ids in outputs]
    return outputs[0] if single else outputs

  def _prompt_rows(self, prompts) -> tuple[list[list[int]], bool, bool]:
    """(token id rows, given as text, given as one prompt)."""
    if isinstance(prompts, str):
      tokenizer = self.require_tokenizer()
      return [tokenizer.encode(prompts, add_bos=tokenizer.adds_bos)], True, True
    if isinstance(prompts, (np.ndarray, jax.Array)):
      array = decoding.to_host(prompts)
      if array.ndim == 1:
        return [array.tolist()], False, True
      return [list(row) for row in array.tolist()], False, False
    prompts = list(prompts)
    if not prompts:
      raise UserError('prompts is empty: give a str, a list of str, or token ids')
    if all(isinstance(p, str) for p in prompts):
      tokenizer = self.require_tokenizer()
      return [tokenizer.encode(p, add_bos=tokenizer.adds_bos) for p in prompts], True, False
    if all(isinstance(p, (int, np.integer)) for p in prompts):
      return [[int(p) for p in prompts]], False, True
    if all(isinstance(p, (list, tuple, np.ndarray)) for p in prompts):
      return [[int(t) for t in p] for p in prompts], False, False
    raise UserError('prompts mixes types: give a str, a list of str, a list of token ids, or a '
                    'list of token id lists')

  def _generate_decoder(self, rows, *, max_new_tokens, temperature, top_k, top_p, seed,
                        eos_id, batch_size) -> list[list[int]]:
    return decoding.generate_rows(self.model, self.params, rows, jax.random.key(seed),
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  eos_id=eos_id, model_state=self.model_state)

  def _generate_seq2seq(self, rows, *, max_new_tokens, temperature, top_k, top_p, seed, eos_id,
                        beam_size, length_penalty) -> list[list[int]]:
    from research.inference import seq2seq  # pylint: disable=g-import-not-at-top
    if any(not row for row in rows):
      raise UserError('an encoder input is empty: give at least one token per prompt')
    encoder_BS = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)  # 0: masked padding
    for b, row in enumerate(rows):
      encoder_BS[b, :len(row)] = row
    if beam_size > 1:
      decoding_settings = dict(temperature=temperature, top_k=top_k, top_p=top_p)
      if decoding_settings != dict(temperature=0.0, top_k=0, top_p=1.0):
        raise UserError(f'beam_size={beam_size} is deterministic: drop temperature, top_k and '
                        'top_p (or use beam_size=1 to sample)')
      tokens_BKN, _ = seq2seq.beam_search(self.model, self.params, encoder_BS,
                                          beam_size=beam_size, max_new_tokens=max_new_tokens,
                                          eos_id=eos_id, length_penalty=length_penalty,
                                          model_state=self.model_state)
      return decoding.to_host(tokens_BKN)[:, 0].tolist()  # the best hypothesis
    tokens_BN = seq2seq.generate(self.model, self.params, encoder_BS, jax.random.key(seed),
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_k=top_k, top_p=top_p, eos_id=eos_id,
                                 model_state=self.model_state)
    return decoding.to_host(tokens_BN).tolist()
