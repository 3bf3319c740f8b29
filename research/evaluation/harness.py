"""lm-evaluation-harness (EleutherAI's `lm_eval`) tasks on lmforge runs.

  import lm_eval, research
  results = lm_eval.simple_evaluate(model=research.lm_eval_model('runs/x'), tasks=['arc_easy'])
  from research.evaluation import harness
  harness.lm_eval_metrics(research.load('runs/x'), tasks='hellaswag,arc_easy', limit=100)
  python -m research.evaluate --workdir=runs/x --task=lm_eval \
      --config.eval.lm_eval.tasks=hellaswag,arc_easy --config.eval.lm_eval.num_fewshot=0

`HarnessLM` is the harness's model interface (`lm_eval.api.model.TemplateLM`, registered as
'lmforge', so `simple_evaluate(model='lmforge', model_args='workdir=runs/x,step=200')` works once
this module is imported) over a decoder `research.LanguageModel`:

  loglikelihood  the harness's own context/continuation split (TemplateLM._encode_pair, as its
      Hugging Face backend): trailing spaces of the context move to the continuation, the whole
      string is encoded and the continuation is what lies beyond the context's token count (so
      " Paris" after "capital of France is" is the pieces of " Paris", leading space included).
      Rows keep their last data.seq_len + 1 tokens (left truncation). Returns (sum of log p,
      whether greedy decoding would produce the continuation).
  loglikelihood_rolling  a document's log p over disjoint windows of data.seq_len tokens, cut
      by the harness's own get_rolling_token_windows / make_disjoint_window.
  generate_until  research.LanguageModel.generate on token rows (the prompt left-truncated to
      leave room for max_gen_toks), greedy unless do_sample / temperature say otherwise, the text
      cut at the first `until` string.

Scoring is batched as the harness's backends do: rows sorted longest first, eval.batch_size rows
per batch (rounded up to the mesh's batch shards), each right-padded to a bucket length (a power
of two, at most data.seq_len) so one program compiles per (batch, bucket). Rows that share their
input (the choices of a multiple-choice question whose answers are one token) are scored once.
Each batch is one global array sharded over the run's batch axes; outputs come back replicated.

Multi-host: every JAX process runs the harness on all requests identically (the harness sees
rank 0 of 1 everywhere: its own data-parallel split would give processes different programs to
run), builds the same global batches, and gets every result; only process 0 writes files.

Data: no code path downloads at run time here, so importing this module sets HF_HUB_OFFLINE=1
and HF_DATASETS_OFFLINE=1 unless the user set either. On a machine that can fetch the harness's
datasets, run with HF_HUB_OFFLINE=0 (they land in HF_DATASETS_CACHE, which can be copied to
machines without the network).
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import json
import logging
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from research import loading
from research.errors import ConfigError, UserError
from research.evaluation import generate as generate_lib
from research.parallel import mesh as mesh_lib

SUPPORTED = '>=0.4.13,<0.5'  # the harness versions this module is written against (setup.cfg)
INSTALL = "pip install -c constraints.txt -e '.[eval]'"
_OFFLINE_VARIABLES = ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE')
_MIN_BUCKET = 16
# A task that sets no max_gen_toks gets the harness's Hugging Face default, 256 new tokens, at
# most half the context: the prompt keeps the other half.
_DEFAULT_MAX_GEN_TOKS = 256
_SAMPLING_KWARGS = ('temperature', 'top_k', 'top_p')


def installed_version() -> str | None:
  try:
    return importlib.metadata.version('lm_eval')
  except importlib.metadata.PackageNotFoundError:
    return None


def check_harness_version(version: str | None) -> None:
  """Raises a UserError unless `version` of lm_eval is one this module supports."""
  if version is None:
    raise UserError(f'lm_eval (lm-evaluation-harness) is not installed: {INSTALL}')
  if Version(version) not in SpecifierSet(SUPPORTED):
    raise UserError(f'lm_eval=={version} is installed, but lmforge supports lm_eval{SUPPORTED}: '
                    f'{INSTALL}')


def _offline_unless_asked() -> None:
  """Offline unless the user set either variable. datasets and huggingface_hub read them when
  first imported; where one is imported already, its setting is changed as the variable would."""
  if any(name in os.environ for name in _OFFLINE_VARIABLES):
    return
  for name in _OFFLINE_VARIABLES:
    os.environ[name] = '1'
  for module, names in (('huggingface_hub.constants', ('HF_HUB_OFFLINE',)),
                        ('datasets.config', _OFFLINE_VARIABLES)):
    if module in sys.modules:
      for name in names:
        setattr(sys.modules[module], name, True)


check_harness_version(installed_version())  # before importing a harness it may not be written for
_offline_unless_asked()

# pylint: disable=g-import-not-at-top,wrong-import-position
from lm_eval import utils as harness_utils
from lm_eval.api import model as harness_model
from lm_eval.api import registry as harness_registry
from lm_eval.models import utils as model_utils
# pylint: enable=g-import-not-at-top,wrong-import-position


# ----------------------------------------------------------------------------- scoring


def _bucket(length: int, context: int) -> int:
  """Padded row length: the next power of two (at least _MIN_BUCKET), at most the context."""
  return min(context, max(_MIN_BUCKET, 1 << (length - 1).bit_length()))


@functools.lru_cache(maxsize=8)
def _compiled_scores(model, out_sharding):
  """jit(variables, inputs_BT, lengths_B) -> (logp_BT, greedy_BT, last_BV), replicated.

  logp_BT[b, t] = log p(inputs[b, t + 1] | inputs[b, :t + 1]) and greedy_BT[b, t] whether that
  token is the argmax, for t < lengths_B[b] - 1; last_BV[b] = the log-softmax after the row's last
  input token, which scores whichever token follows (rows sharing their input share it).
  """

  def scores(variables, inputs_BT, lengths_B):
    logits_BTV = model.apply(variables, inputs_BT).astype(jnp.float32)
    # log-softmax read at one token per position: no second [B, T, V] array (vocabularies of
    # 128k tokens make that gigabytes).
    norm_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    next_BT = jnp.roll(inputs_BT, -1, axis=1)  # the last column is read from last_BV instead
    logp_BT = jnp.take_along_axis(logits_BTV, next_BT[..., None], axis=-1)[..., 0] - norm_BT
    greedy_BT = jnp.argmax(logits_BTV, axis=-1) == next_BT
    rows_B, last_B = jnp.arange(inputs_BT.shape[0]), lengths_B - 1
    last_BV = logits_BTV[rows_B, last_B] - norm_BT[rows_B, last_B][:, None]
    return logp_BT, greedy_BT, last_BV

  return jax.jit(scores, out_shardings=out_sharding)


def _global_batch(run, array: np.ndarray) -> jax.Array:
  """`array` (the same on every process) as one array sharded over the run's batch axes."""
  sharding = mesh_lib.batch_sharding(run.mesh, run.rules, array.ndim)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _host(x: jax.Array) -> np.ndarray:
  """A replicated output: every process holds all of it."""
  return np.asarray(x.addressable_data(0))


# ----------------------------------------------------------------------------- the model


@harness_registry.register_model('lmforge')
class HarnessLM(harness_model.TemplateLM):
  """A decoder `research.LanguageModel` as an lm-evaluation-harness model (module docstring).

  HarnessLM(lm) or HarnessLM(workdir='runs/x', step=None, overrides=()); batch_size: rows per
  scoring and generation batch (default the run's eval.batch_size).
  """

  backend = 'causal'

  def __init__(self, lm=None, *, workdir: str | None = None, step: int | None = None,
               overrides: Sequence[tuple[str, Any]] = (), batch_size: int | str | None = None,
               max_batch_size: int | None = None, device: str | None = None):
    super().__init__()
    if (lm is None) == (workdir is None):
      raise UserError('give the harness model one run: a research.LanguageModel or workdir=...')
    for name, value in (('device', device), ('max_batch_size', max_batch_size)):
      if value is not None:
        raise UserError(f'{name}={value}: an lmforge run is placed on its own mesh '
                        '(--config.mesh.*) and batched by batch_size: drop it')
    if lm is None:
      lm = loading.load(workdir, step=step, overrides=overrides)
    if lm.family != 'decoder':
      raise UserError(f'{lm.workdir} is a {lm.family} run: lm-evaluation-harness tasks run on '
                      'decoder runs here')
    self.lm = lm
    self.tokenizer = lm.require_tokenizer()
    self.max_length = generate_lib.context_length(lm.config)
    self.batch_size = _batch_rows(lm.run, lm.config.eval.batch_size if batch_size is None
                                  else batch_size)

  # ------------------------------------------------------------------------- tokens

  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def prefix_token_id(self) -> int:
    """What precedes a text with no context: bos where the tokenizer starts sequences with it
    (Llama), else eos. lmforge's own tokenizer declares a bos it never uses: a trained
    document follows the previous one's eos."""
    return self.tokenizer.bos_id if self.tokenizer.adds_bos else self.tokenizer.eos_id

  @property
  def max_gen_toks(self) -> int:
    return min(_DEFAULT_MAX_GEN_TOKS, self.max_length // 2)

  @property
  def tokenizer_name(self) -> str:
    return self.tokenizer.name.replace('/', '__')

  def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                 left_truncate_len: int | None = None, **kwargs) -> list[int]:
    """Token ids, with bos where the tokenizer adds one (as transformers' `encode` does), unless
    add_special_tokens=False or the text already starts with bos."""
    del kwargs
    tok = self.tokenizer
    add_bos = tok.adds_bos and add_special_tokens is not False
    if add_bos and add_special_tokens is None and string.startswith(tok.id_to_piece(tok.bos_id)):
      add_bos = False
    ids = tok.encode(string, add_bos=add_bos)
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def get_model_info(self) -> dict:
    """Written into the harness's results['config']."""
    return {'workdir': self.lm.workdir, 'step': self.lm.step, 'family': self.lm.family}

  # ------------------------------------------------------------------------- loglikelihood

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """[(logp sum, is_greedy)] of ((context, continuation), context ids, continuation ids)."""
    del disable_tqdm, kwargs
    inputs, finals = [], []
    for (strings, context_ids, continuation_ids) in requests:
      whole = self._checked_row(strings, context_ids, continuation_ids)
      inputs.append(tuple(whole[:-1]))
      finals.append(whole[-1])
    by_input: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(inputs):
      by_input.setdefault(row, []).append(i)
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    for batch in _longest_first(list(by_input), self.batch_size):
      logp_BT, greedy_BT, last_BV = self._score_batch(batch)
      for b, row in enumerate(batch):
        for i in by_input[row]:
          n, m = len(row), len(requests[i][2])
          logp = float(logp_BT[b, n - m:n - 1].sum() + last_BV[b, finals[i]])
          greedy = bool(greedy_BT[b, n - m:n - 1].all() and last_BV[b].argmax() == finals[i])
          results[i] = (logp, greedy)
          if requests[i][0] is not None:
            self.cache_hook.add_partial('loglikelihood', requests[i][0], results[i])
    return results

  def _checked_row(self, strings, context_ids, continuation_ids) -> list[int]:
    """Context + continuation, keeping the last max_length + 1 tokens (the model reads all but
    the last)."""
    what = f'the request {strings!r}' if strings is not None else 'a rolling window'
    if not continuation_ids:
      raise UserError(f'{what} has an empty continuation: the task gives nothing to score')
    if len(continuation_ids) > self.max_length:
      raise UserError(f'{what} has a continuation of {len(continuation_ids)} tokens, more than the '
                      f'model context (data.seq_len={self.max_length})')
    if not context_ids:
      context_ids = [self.prefix_token_id]
    return (list(context_ids) + list(continuation_ids))[-(self.max_length + 1):]

  def _score_batch(self, rows: list[tuple[int, ...]]):
    """(logp_BT, greedy_BT, last_BV) on the host for `rows`, padded to a full batch."""
    width = _bucket(max(len(r) for r in rows), self.max_length)
    filled = rows + [rows[0]] * (self.batch_size - len(rows))
    inputs_BT = np.full((self.batch_size, width), self.tokenizer.pad_id, np.int32)
    for b, row in enumerate(filled):
      inputs_BT[b, :len(row)] = row
    lengths_B = np.array([len(r) for r in filled], np.int32)
    run = self.lm.run
    with run.context():
      fn = _compiled_scores(self.lm.model, mesh_lib.replicated(run.mesh))
      out = fn(self.lm.variables, _global_batch(run, inputs_BT), _global_batch(run, lengths_B))
    return tuple(_host(x) for x in out)

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """log p of each whole document, over the harness's disjoint windows of max_length tokens
    (the first one starts from prefix_token_id)."""
    windows, owners = [], []
    for i, (string,) in enumerate(req.args for req in requests):
      for window in harness_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1):
        context_ids, continuation_ids = harness_utils.make_disjoint_window(window)
        windows.append((None, context_ids, continuation_ids))
        owners.append(i)
    totals = [0.0] * len(requests)
    for i, (logp, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
      totals[i] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial('loglikelihood_rolling', req.args, total)
    return totals

  # ------------------------------------------------------------------------- generation

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Continuations by LanguageModel.generate, batched by generation settings, each cut at the
    first of its `until` strings (eos ends a row inside generate)."""
    del disable_tqdm
    collator = model_utils.Collator([req.args for req in requests],
                                    sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]),
                                    group_by='gen_kwargs', group_fn=lambda a: a[1])
    texts = []
    for chunk in collator.get_batched(n=self.batch_size):
      contexts, gen_kwargs = [c for c, _ in chunk], chunk[0][1]
      settings, until = self._generation_settings(gen_kwargs)
      rows = [self._prompt_row(c, settings['max_new_tokens']) for c in contexts]
      for context, ids in zip(contexts, self.lm.generate(rows, **settings)):
        text = model_utils.postprocess_generated_text(self.tokenizer.decode(ids), stop=until,
                                                      think_end_token=None)
        texts.append(text)
        self.cache_hook.add_partial('generate_until', (context, gen_kwargs), text)
    return collator.get_original(texts)

  def _generation_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
    """LanguageModel.generate's keyword arguments and the stop strings of a task's
    generation_kwargs (normalised by the harness: max_gen_toks, do_sample, until)."""
    kwargs = dict(model_utils.normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
    until = model_utils.handle_stop_sequences(kwargs.pop('until', None), eos=None)
    max_new_tokens = kwargs.pop('max_gen_toks')
    if max_new_tokens >= self.max_length:
      raise UserError(f'a task asks for max_gen_toks={max_new_tokens} new tokens, as many as the '
                      f'model context (data.seq_len={self.max_length}) or more: lower it in the '
                      "task's generation_kwargs")
    settings = {'max_new_tokens': max_new_tokens}
    if kwargs.pop('do_sample', False):
      settings.update({k: kwargs[k] for k in _SAMPLING_KWARGS if k in kwargs})
    ignored = sorted(set(kwargs) - set(_SAMPLING_KWARGS))
    if ignored:
      logging.warning('lm_eval generation_kwargs %s do not apply to lmforge generation: ignored',
                      {k: kwargs[k] for k in ignored})
    return settings, until

  def _prompt_row(self, context: str, max_new_tokens: int) -> list[int]:
    """The prompt's tokens, left-truncated so that max_new_tokens more fit in the context."""
    ids = self.tok_encode(context, left_truncate_len=self.max_length - max_new_tokens)
    return ids or [self.prefix_token_id]


def _batch_rows(run, batch_size) -> int:
  """Rows per batch: `batch_size`, rounded up to a multiple of the mesh's batch shards."""
  if isinstance(batch_size, str) and batch_size.isdigit():
    batch_size = int(batch_size)
  if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
    raise UserError(f'batch_size={batch_size!r}: give a positive number of rows per batch '
                    '(default eval.batch_size)')
  shards = mesh_lib.batch_divisor(run.mesh, run.rules)
  return -(-batch_size // shards) * shards


def _longest_first(rows: list[tuple[int, ...]], batch_size: int):
  """Batches of `rows`, longest first (the harness's order: the first batch shows the largest
  shape, and rows of similar length share buckets)."""
  ordered = sorted(rows, key=lambda r: (-len(r), r))
  for start in range(0, len(ordered), batch_size):
    yield ordered[start:start + batch_size]


def lm_eval_model(workdir_or_lm, **kwargs) -> HarnessLM:
  """The harness model of a workdir (kwargs: step, overrides, batch_size) or of a loaded
  research.LanguageModel (kwargs: batch_size): research.lm_eval_model."""
  if isinstance(workdir_or_lm, (str, os.PathLike)):
    return HarnessLM(workdir=os.fspath(workdir_or_lm), **kwargs)
  return HarnessLM(workdir_or_lm, **kwargs)


# ----------------------------------------------------------------------------- tasks


def task_names(tasks: str | Sequence[str]) -> list[str]:
  """'hellaswag,arc_easy' or a list -> names; a UserError when there are none."""
  names = tasks.split(',') if isinstance(tasks, str) else list(tasks)
  names = [n.strip() for n in names if n.strip()]
  if not names:
    raise UserError('no lm_eval tasks given: set --config.eval.lm_eval.tasks, e.g. '
                    'hellaswag,arc_easy (`lm-eval ls tasks` lists them)')
  return names


def check_settings(*, num_fewshot: int, limit: int, include_path: str) -> None:
  """ConfigError for eval.lm_eval values that cannot work."""
  if not isinstance(num_fewshot, int) or num_fewshot < -1:
    raise ConfigError('eval.lm_eval.num_fewshot', num_fewshot,
                      "must be an integer >= 0, or -1 for each task's own default")
  if not isinstance(limit, int) or limit < 0:
    raise ConfigError('eval.lm_eval.limit', limit, 'must be an integer >= 0 (0: every example)')
  if include_path and not os.path.isdir(include_path):
    raise ConfigError('eval.lm_eval.include_path', include_path,
                      'no such directory: give a directory of task YAML files')


def _fingerprint(include_path: str) -> tuple:
  """The task YAMLs under `include_path` with their sizes and times: what the index reads."""
  files = []
  for root, _, names in os.walk(include_path) if include_path else ():
    for name in names:
      if name.endswith('.yaml'):
        stat = os.stat(os.path.join(root, name))
        files.append((os.path.join(root, name), stat.st_size, stat.st_mtime_ns))
  return tuple(sorted(files))


@functools.lru_cache(maxsize=8)
def _cached_task_manager(include_path: str, fingerprint: tuple, include_defaults: bool):
  del fingerprint  # part of the cache key only
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  return TaskManager(include_path=include_path or None, include_defaults=include_defaults)


def task_manager(include_path: str = '', names: Sequence[str] = ()):
  """The harness's TaskManager: its own tasks and include_path's YAMLs. Indexing its thousands
  of task files takes seconds, so one is kept per include_path (and state of its files); when
  every one of `names` is a plain task of include_path (not a group, which may name the
  harness's own tasks), only that directory is indexed."""
  fingerprint = _fingerprint(include_path)
  if include_path and names:
    local = _cached_task_manager(include_path, fingerprint, False)
    if all(name in local.all_subtasks for name in names):
      return local
  return _cached_task_manager(include_path, fingerprint, True)


def check_task_names(names: Sequence[str], manager, include_path: str = '') -> None:
  """A UserError naming the first task the harness does not know, with similar names."""
  for name in names:
    if name in manager.all_tasks or (name.endswith('.yaml') and os.path.isfile(name)):
      continue
    similar = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
    hint = f'similar: {", ".join(similar)}; ' if similar else ''
    where = f' --include_path={include_path}' if include_path else ''
    raise UserError(f'lm_eval task {name!r} is unknown to lm_eval {installed_version()}: '
                    f'{hint}`lm-eval ls tasks{where}` lists them; tasks of your own are YAML files '
                    'in a directory given as include_path (--config.eval.lm_eval.include_path)')


def _load_task(manager, name: str) -> list:
  """The Task or Group objects `name` stands for, with their data loaded (tags: their tasks).

  The harness reads each task's first example while building it, so a task with no examples
  fails there: an IndexError (an empty split, or a process_docs that keeps nothing) or a
  StopIteration (an empty data file), named here.
  """
  try:
    loaded = manager.load([name])
  except ConnectionError as e:  # what datasets raises for data it cannot fetch or find cached
    raise UserError(f'lm_eval task {name!r}: its data is not available on this machine '
                    f'({_first_line(e)}): run on a machine that can fetch it (HF_HUB_OFFLINE=0), '
                    'or pre-download it there into HF_DATASETS_CACHE and copy that directory '
                    'here') from None
  except FileNotFoundError as e:
    raise UserError(f'lm_eval task {name!r}: its data was not found ({_first_line(e)}): check '
                    "the task YAML's dataset_path and dataset_kwargs (data_files)") from None
  except (IndexError, StopIteration) as e:
    if isinstance(e, IndexError) and not str(e).endswith('for size 0'):
      raise
    raise UserError(f'lm_eval task {name!r} has no examples to score: its evaluation split is '
                    'empty (check its data files, split names and process_docs)') from None
  if name in loaded.get('groups', {}):
    return [loaded['groups'][name]]
  if name in loaded['tasks']:
    return [loaded['tasks'][name]]
  return list(loaded['tasks'].values())


def _first_line(error: Exception) -> str:
  return str(error).splitlines()[0] if str(error) else type(error).__name__


def flat_metrics(results: dict) -> dict[str, float]:
  """{'task/metric': number} of the harness's results: 'acc,none' -> 'acc' (another filter stays
  in the name: 'exact_match,strict-match'), stderrs and the examples scored ('sample_len')
  included, names and aliases left out."""
  metrics = {}
  for task, values in results['results'].items():
    for key, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        metrics[f'{task}/{key.removesuffix(",none")}'] = float(value)
  return metrics


def lm_eval_metrics(lm, *, tasks: str | Sequence[str], num_fewshot: int = -1, limit: int = 0,
                    include_path: str = '', out: str = '') -> dict[str, float]:
  """Scores `lm` (a research.LanguageModel or HarnessLM) on lm-evaluation-harness `tasks`.

  num_fewshot: -1 keeps each task's default; limit: examples per task (0: all); include_path: a
  directory of extra task YAMLs. Returns flat_metrics of the harness's results; with `out`,
  process 0 writes the harness's results JSON to out/lm_eval.json.

  Raises:
    UserError: no or unknown tasks, a task whose data is not available here, a task with no
      examples to score, bad settings.
  """
  from lm_eval import evaluator  # pylint: disable=g-import-not-at-top
  names = task_names(tasks)
  check_settings(num_fewshot=num_fewshot, limit=limit, include_path=include_path)
  model = lm if isinstance(lm, HarnessLM) else HarnessLM(lm)
  manager = task_manager(include_path, names)
  check_task_names(names, manager, include_path)
  objects = [obj for name in names for obj in _load_task(manager, name)]
  results = evaluator.simple_evaluate(
      model=model, tasks=objects, task_manager=manager, limit=limit or None,
      num_fewshot=None if num_fewshot < 0 else num_fewshot, log_samples=False)
  metrics = flat_metrics(results)
  if jax.process_index() == 0:
    logging.info('lm_eval: %s', ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()))
    if out:
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, 'lm_eval.json'), 'w') as f:
        json.dump(results, f, indent=2, default=harness_utils.handle_non_serializable,
                  ensure_ascii=False)
  return metrics


def lm_eval_task(model, *, tasks: str = '', out: str = '', step: int | None = None,
                 overrides: Sequence[tuple[str, str]] = ()) -> dict:
  """--task=lm_eval: {step, **lm_eval_metrics} with the eval.lm_eval settings of `model`, a
  research.LanguageModel or a workdir (opened with research.load at `step` with `overrides`,
  after its task names and settings are checked: bad ones fail before the slow restore).
  `tasks` ('a,b'; eval.during_training's lm_eval:a,b) replaces eval.lm_eval.tasks."""
  loaded = isinstance(model, loading.LanguageModel)
  if loaded and (step is not None or overrides):
    raise UserError('step and overrides choose what to load from a workdir: pass them to '
                    'research.load, not with a loaded model')
  settings = (model.config if loaded else loading.load_config(model, overrides)).eval.lm_eval
  names = task_names(tasks or settings.tasks)
  check_settings(num_fewshot=settings.num_fewshot, limit=settings.limit,
                 include_path=settings.include_path)
  check_task_names(names, task_manager(settings.include_path, names), settings.include_path)
  lm = model if loaded else loading.load(model, step=step, overrides=overrides)
  return {'step': lm.step, **lm_eval_metrics(
      lm, tasks=names, num_fewshot=settings.num_fewshot, limit=settings.limit,
      include_path=settings.include_path, out=out)}
