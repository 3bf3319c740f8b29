"""The trainer: sharded state, jitted train and eval steps, and the loop around them.

`train(config, workdir)` is the whole job (research.train is a thin command around it):
state is initialised directly sharded from logical-axis rules, batches are a pure function of
(seed, step), and the loop evaluates, logs, checkpoints, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from research import config_lib, models, objectives
from research.errors import ConfigError, UserError
from research.data import loader
from research.layers import moe as moe_lib
from research.parallel import mesh as mesh_lib, pipeline
from research.training import checkpointing, flops as flops_lib, optimizers, peft, pruning
from research.training import guards, metrics as metrics_lib, resume_check, workdir_lock
from research.training.metrics import MetricsWriter


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # Non-gradient model variables updated by the forward pass ({'moe_state': ...} for MoE
  # models with aux-free balancing), an objective's own state (DPO's frozen reference) and the
  # sparsity masks of pruned runs ({'pruning_masks': ...}, research/training/pruning.py);
  # {} otherwise.
  model_state: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Run:
  """Everything a training (or evaluation) run needs, built once from a config."""
  config: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  model: nn.Module  # training mode (dropout on)
  eval_model: nn.Module
  objective: objectives.Objective
  tx: optax.GradientTransformation
  state_shardings: Any  # where the train step computes with the state: device memory
  batch_sharding: jax.sharding.NamedSharding  # every batch array: rows over the batch axes
  # Where the state lives between steps: state_shardings, with the fields train.offload names
  # in pinned host memory (the same object when nothing is offloaded).
  stored_shardings: Any = None
  # PEFT (config.peft): True per trainable parameter; None when every parameter trains.
  trainable: Any = None
  # train.pruning: {path: pruning.Layout} of the pruned parameters; None without pruning.
  prunable: Any = None
  # Jitted programs built once per run (the eval step): evaluations during training and the
  # evaluation tasks that share the run then reuse one compiled program.
  programs: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @contextlib.contextmanager
  def context(self):
    """Mesh and logical rules, needed while tracing anything that names logical axes."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield


def init_state_fn(model, tx, init_args, rng, objective=None, config=None) -> TrainState:
  """The initial TrainState from a PRNG key: what init_state jits and planners trace.

  An objective with `init_model_state(params)` (DPO: the frozen reference) adds its entries;
  one with `init_frozen_state(config, init_args)` (distill: the teacher) adds placeholders of a
  frozen model's variables, which `load_frozen_state` fills at a fresh start. A config with
  train.pruning adds all-True sparsity masks.
  """
  variables = model.init({'params': rng}, *init_args)
  params = variables['params']
  model_state = {k: v for k, v in variables.items() if k == moe_lib.STATE_COLLECTION}
  if objective is not None and hasattr(objective, 'init_model_state'):
    model_state.update(objective.init_model_state(params))
  if objective is not None and hasattr(objective, 'init_frozen_state'):
    model_state.update(objective.init_frozen_state(config, init_args))
  if config is not None and pruning.enabled(config):
    model_state[pruning.MASKS] = pruning.init_masks(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=model_state)


def _abstract_key():
  # Traced, never materialised: a concrete key would be placed on the mesh's devices.
  return jax.eval_shape(lambda: jax.random.key(0))


def _state_initializer(run: 'Run') -> Callable:
  divisor = mesh_lib.batch_divisor(run.mesh, run.rules)
  # Host zeros of the right shapes: no device work, so this also runs for meshes of devices
  # this process cannot touch (an ahead-of-time compile for a TPU topology).
  init_args = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(
      lambda: run.objective.init_args(divisor, run.config)))
  return functools.partial(init_state_fn, run.model, run.tx, init_args, objective=run.objective,
                           config=run.config)


def build_run(config, *, devices=None) -> Run:
  """Validates the config against the devices and builds model, optimizer and shardings."""
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.rules_of(config.mesh)
  divisor = mesh_lib.batch_divisor(mesh, rules)
  micro = config.train.batch_size // config.train.micro_batches
  if micro % divisor:
    raise ConfigError('train.batch_size', config.train.batch_size,
                      f'each of the {config.train.micro_batches} micro-batches ({micro} '
                      f'sequences) must divide over the {divisor} batch shards of the mesh')
  m = pipeline.micro_batches_of(config)
  if pipeline.stages_of(config) > 1 and (micro // m) % divisor:
    raise ConfigError('mesh.pipeline_micro_batches', m,
                      f'each pipeline micro-batch ({micro} / {m} = {micro // m} sequences) must '
                      f'divide over the {divisor} batch shards of the mesh: use fewer '
                      'micro-batches or a larger train.batch_size')
  if config.train.batch_size % jax.process_count():
    raise ConfigError('train.batch_size', config.train.batch_size,
                      f'must divide over {jax.process_count()} processes')
  model = models.build_model(config, deterministic=False)
  eval_model = models.build_model(config)
  tx = optimizers.make_optimizer(config.train, config.model)
  peft_cfg = config.get('peft', None)
  if peft_cfg is not None:
    tx = peft.wrap_optimizer(tx, peft_cfg)
  run = Run(config=config, mesh=mesh, rules=rules, model=model, eval_model=eval_model,
            objective=objectives.get_objective(config.objective.name), tx=tx,
            state_shardings=None, batch_sharding=mesh_lib.batch_sharding(mesh, rules))
  with run.context():
    abstract = jax.eval_shape(_state_initializer(run), _abstract_key())
    run.state_shardings = mesh_lib.logical_shardings(abstract, mesh, rules)
  if pruning.enabled(config):
    run.prunable = pruning.layouts(abstract.params)
  run.stored_shardings = _stored_shardings(run.state_shardings, config.train.get('offload',
                                                                                'none'), mesh)
  if peft_cfg is not None and peft_cfg.method != 'none':
    params = nn.meta.unbox(abstract.params)
    peft.check_trainable(params, peft_cfg)
    run.trainable = peft.trainable_mask(params, peft_cfg)
  return run


def _stored_shardings(state_shardings: TrainState, offload: str, mesh) -> TrainState:
  fields = config_lib.OFFLOAD[offload]
  if not fields:
    return state_shardings
  if mesh_lib.HOST_MEMORY not in mesh_lib.memory_kinds(mesh):
    raise ConfigError('train.offload', offload,
                      f'{mesh.devices.flat[0].platform} devices here have no '
                      f'{mesh_lib.HOST_MEMORY} memory (only {sorted(mesh_lib.memory_kinds(mesh))}'
                      "): use train.offload='none'")
  return state_shardings.replace(**{
      f: mesh_lib.with_memory_kind(getattr(state_shardings, f), mesh_lib.HOST_MEMORY)
      for f in fields})


def move(tree, shardings):
  """`tree` placed on `shardings`, across memory kinds too: `tree` itself when it is there
  already. (jax.device_put refuses a change of memory kind for single-device arrays: "Memory
  kind mismatch with xla::PjRtBuffers".)"""
  leaves, targets = jax.tree.leaves(tree), jax.tree.leaves(shardings)
  if all(getattr(x, 'sharding', None) == s for x, s in zip(leaves, targets)):
    return tree
  return jax.jit(lambda x: x, out_shardings=shardings)(tree)


def device_params(run: Run, params):
  """`params` in device memory, where the eval step, decoding and the guards read them: a
  copy when train.offload keeps them on the host, else `params` themselves."""
  return move(params, run.state_shardings.params)


def init_state(run: Run, seed: int) -> TrainState:
  """Parameters and optimizer state, created directly in their shards (never whole on a host)."""
  init = _state_initializer(run)
  with run.context():
    return jax.jit(lambda rng: nn.meta.unbox(init(rng)),
                   out_shardings=run.stored_shardings)(jax.random.key(seed))


def abstract_state(run: Run):
  """ShapeDtypeStructs with the current mesh's shardings, offloaded fields in host memory: the
  target of a restore and what the train step takes. A checkpoint records no memory kinds, so
  one written with any train.offload restores onto any other."""
  init = _state_initializer(run)
  with run.context():
    shapes = jax.eval_shape(lambda rng: nn.meta.unbox(init(rng)), _abstract_key())
  return checkpointing.abstract_like(shapes, run.stored_shardings)


def logical_params(run: Run):
  """The parameters' ShapeDtypeStructs boxed with their logical axis names (nn.Partitioned):
  what tools that read parameters by their axes (research.compress prune) need."""
  with run.context():
    return jax.eval_shape(_state_initializer(run), _abstract_key()).params


def loss_kwargs(run: Run) -> dict:
  """Config-derived keyword arguments of the objective's loss (DPO's beta), if it has any."""
  kwargs_of = getattr(run.objective, 'loss_kwargs', None)
  return kwargs_of(run.config) if kwargs_of is not None else {}


def make_train_step(run: Run) -> Callable:
  """jit(state, batch) -> (state, metrics): summed gradients over micro-batches, one update."""
  model, objective, tx = run.model, run.objective, run.tx
  m = run.config.train.micro_batches
  trainable = run.trainable
  extra = loss_kwargs(run)
  schedule = optimizers.make_schedule(run.config.train)
  base_rng = jax.random.key(run.config.seed + 1)
  offloaded = config_lib.OFFLOAD[run.config.train.get('offload', 'none')]
  prunable = run.prunable

  def fetch(state: TrainState, field: str) -> TrainState:
    # An offloaded field comes to device memory where the step first reads it (the optimizer
    # state only for the update, after the backward pass has freed its activations), and goes
    # back to the host through out_shardings; XLA schedules both transfers. The whole field
    # comes at once (libtpu stages it as temporaries): streaming it leaf by leaf would need a
    # per-leaf optimizer update.
    if field not in offloaded:
      return state
    value = jax.device_put(getattr(state, field), getattr(run.state_shardings, field))
    return state.replace(**{field: value})

  def grads_of(params, model_state, batch, rng):
    grad_fn = jax.grad(lambda p: objective.loss_fn(model, p, batch, rngs={'dropout': rng},
                                                   model_state=model_state, **extra),
                       has_aux=True)
    return grad_fn(params)

  def step_fn(state: TrainState, batch):
    state = fetch(state, 'params')
    if prunable:  # masks updated on the schedule; the forward pass sees the pruned weights
      state = pruning.prune_state(run.config.train.pruning, prunable, state)
    rng = jax.random.fold_in(base_rng, state.step)
    if m == 1:
      grads, aux = grads_of(state.params, state.model_state, batch, rng)
    else:
      micro = jax.tree.map(lambda x: pipeline.split_micro(x, m), batch)

      def body(acc, i):
        mb = jax.tree.map(lambda x: x[i], micro)
        g, a = grads_of(state.params, state.model_state, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, (g, a)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          grads_of, state.params, state.model_state, jax.tree.map(lambda x: x[0], micro), rng))
      (grads, aux), _ = jax.lax.scan(body, zeros, jnp.arange(m))
      # Per-micro-batch means: each micro-batch proposes a new state and its own MoE metrics.
      for key in ('model_state', 'moe_metrics'):
        if key in aux:
          aux[key] = jax.tree.map(lambda x: x / m, aux[key])
    weight_sum = jnp.maximum(aux['weight_sum'], 1.0)
    grads = jax.tree.map(lambda g: g / weight_sum, grads)
    if trainable is not None:  # PEFT: frozen parameters' gradients are never used
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    state = fetch(state, 'opt_state')
    if prunable:  # pruned weights stay exactly 0: no gradient, momentum or decay reaches them
      params, opt_state = pruning.masked_update(tx, grads, state.opt_state, state.params,
                                                state.model_state[pruning.MASKS])
    else:
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    metrics = {'loss': aux['loss_sum'] / weight_sum, 'accuracy': aux['correct'] / weight_sum,
               'grad_norm': optax.tree_utils.tree_norm(grads), 'lr': schedule(state.step),
               'target_tokens': aux['weight_sum']}
    # Objective-specific sums (DPO's rewards), per unit of weight like the loss.
    metrics.update({k: v / weight_sum for k, v in aux.get('metrics', {}).items()})
    if prunable:
      metrics['pruning/sparsity'] = pruning.sparsity_of(params, prunable)
    model_state = state.model_state
    if 'moe_loss_sum' in aux:  # MoE: 'loss' stays the cross-entropy; the aux loss beside it
      metrics['moe/aux_loss_total'] = aux['moe_loss_sum'] / weight_sum
      metrics.update(aux['moe_metrics'])
      model_state = {**model_state, **aux['model_state']}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state)
    return guards.guard_step(run.config.train, state, new_state, metrics)

  with run.context():
    return jax.jit(step_fn, in_shardings=(run.stored_shardings, run.batch_sharding),
                   out_shardings=(run.stored_shardings, None), donate_argnums=(0,))


def make_eval_step(run: Run) -> Callable:
  """jit(params, batch, model_state={}) -> summed loss, weights, correct predictions and the
  objective's own metric sums (aux['metrics'], e.g. DPO's rewards). One program per run."""
  if 'eval_step' not in run.programs:
    run.programs['eval_step'] = _build_eval_step(run)
  return run.programs['eval_step']


def _build_eval_step(run: Run) -> Callable:
  model, objective = run.eval_model, run.objective
  extra = loss_kwargs(run)

  def eval_fn(params, batch, model_state):
    aux = objective.loss_fn(model, params, batch, model_state=model_state, **extra)[1]
    return {**{k: aux[k] for k in ('loss_sum', 'weight_sum', 'correct')},
            'metrics': aux.get('metrics', {})}

  with run.context():
    step = jax.jit(eval_fn, in_shardings=(run.state_shardings.params, run.batch_sharding,
                                          run.state_shardings.model_state))
  return lambda params, batch, model_state=None: step(params, batch, model_state or {})


def device_batch(run: Run, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded over the mesh's batch axes."""
  return {k: jax.make_array_from_process_local_data(run.batch_sharding, v)
          for k, v in host_batch.items()}


def loading_slice(run: Run) -> tuple[int, int]:
  """(index, count): this process loads block `index` of `count` equal, contiguous blocks of
  every global batch, the rows its devices hold under `run.batch_sharding`.

  Usually one block per process. When a mesh axis that does not split the batch spans processes
  (mesh.stage with its stages on different hosts, the slice boundary of a multi-slice pod), the
  processes along it hold the same rows and so load the same block: giving each its own block
  would feed different rows to the copies of one batch shard (stage 0 would embed rows that
  stage 1 never scores)."""
  if jax.process_count() == 1:
    return 0, 1
  size = run.config.train.batch_size
  rows = {}  # process -> the batch rows its devices hold
  for device, index in run.batch_sharding.devices_indices_map((size, 1)).items():
    rows.setdefault(device.process_index, set()).update(range(size)[index[0]])
  blocks = sorted({(min(r), max(r) + 1) for r in rows.values()})
  count = len(blocks)
  loaders = [sum(1 for r in rows.values() if (min(r), max(r) + 1) == b) for b in blocks]
  if (blocks != [(i * size // count, (i + 1) * size // count) for i in range(count)]
      or any(len(r) != size // count for r in rows.values()) or len(set(loaders)) > 1):
    raise ConfigError('mesh', dict(run.mesh.shape), 'every process must hold one contiguous '
                      'block of the batch rows, each block on as many processes as the others; '
                      f'here the processes hold rows {sorted(blocks)}')
  mine = rows[jax.process_index()]
  return blocks.index((min(mine), max(mine) + 1)), count


def batch_builder(run: Run, dataset) -> loader.BatchBuilder:
  """This process's host batches of `dataset` for `run` (research.data.loader)."""
  index, count = loading_slice(run)
  return loader.BatchBuilder(dataset=dataset, config=run.config, process_index=index,
                             process_count=count)


def host_train_batch(run: Run, dataset, step: int) -> dict[str, np.ndarray]:
  """This process's rows of the training batch at `step`: a pure function of (seed, step)."""
  return batch_builder(run, dataset).train(step)


def prefetched_train_batches(run: Run, dataset, first: int, stop: int, depth: int = 2):
  """Device batches for steps first..stop-1, each transfer issued `depth` steps ahead.

  When the loop takes batch s (and then dispatches its step, which returns at once), batches
  s+1..s+depth are already on their way to the devices. Host batches come from
  `research.data.loader.train_batches`: built just in time here, or by `data.workers` Grain
  processes ahead of time. Batches stay a pure function of (seed, step): prefetching changes
  only when the work is done. depth=0 builds each batch just before its step.
  """
  host = loader.train_batches(batch_builder(run, dataset), first, stop,
                              workers=run.config.data.get('workers', 0), buffer=depth)
  queue = collections.deque()

  def put():
    batch = next(host, None)
    if batch is not None:
      queue.append(device_batch(run, batch))

  for _ in range(depth):
    put()
  while True:
    put()
    if not queue:
      return
    yield queue.popleft()


def host_eval_batch(run: Run, dataset, index: int) -> dict[str, np.ndarray]:
  return batch_builder(run, dataset).eval(index)


# Objectives whose targets are the text's own tokens in order: their loss converts to bits per
# byte of text.
_BPB_OBJECTIVES = ('causal_lm', 'prefix_lm')


def scored_bytes(tokenizer, targets_BT: np.ndarray, weights_BT: np.ndarray) -> int:
  """UTF-8 bytes of the text that the scored targets (weight > 0) spell, row by row: what bits
  per byte divides by, so models with different tokenizers compare. (A SentencePiece row that
  starts on a word boundary decodes without its leading space: at most one byte per row.)"""
  total = 0
  for targets_T, weights_T in zip(np.asarray(targets_BT), np.asarray(weights_BT)):
    ids = targets_T[weights_T > 0].tolist()
    if ids:
      total += len(tokenizer.decode(ids).encode('utf-8'))
  return total


def _sum_over_processes(value: float) -> float:
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return float(np.sum(multihost_utils.process_allgather(np.float64(value))))


def token_eval_metrics(totals, prefix: str = 'eval/') -> dict[str, float]:
  """Loss per target token, its perplexity, next-token accuracy, the tokens scored and, where
  the data knows its bytes, bits per byte: the summary of every objective whose loss is a mean
  over tokens."""
  loss = float(totals['loss_sum'] / totals['weight_sum'])
  metrics = {f'{prefix}loss': loss, f'{prefix}perplexity': float(np.exp(loss)),
             f'{prefix}accuracy': float(totals['correct'] / totals['weight_sum']),
             f'{prefix}tokens': float(totals['weight_sum'])}
  if 'bytes' in totals:  # nats per token -> bits per byte of the text those tokens spell
    metrics[f'{prefix}bpb'] = float(totals['loss_sum'] / np.log(2) / totals['bytes'])
  return metrics


def evaluate(run: Run, params, dataset, eval_step=None, *, num_batches: int | None = None,
             model_state=None):
  """Validation metrics over `num_batches` per evaluation set (0/None: the whole split), and
  bits per byte (`scored_bytes`) for objectives that score the text's own tokens.

  A mixture reports each source as eval/NAME/... and their total as eval/... The objective's
  `eval_metrics(totals, prefix)` summarises when it has one (DPO, reward models: preference
  accuracy and reward margin over pairs, no perplexity); else `token_eval_metrics`.
  `eval/batches` and `eval/split_batches` say what the numbers cover: the trainer scores
  train.eval_batches of the split, research.evaluate all of it, so the two losses of one
  checkpoint differ.
  """
  c = run.config
  eval_step = eval_step or make_eval_step(run)
  builder = batch_builder(run, dataset)
  summarise = getattr(run.objective, 'eval_metrics', token_eval_metrics)
  sets = dataset.eval_sets() if hasattr(dataset, 'eval_sets') else {'': dataset}
  metrics, grand, scored, split = {}, None, 0, 0
  tokenizer = getattr(dataset, 'tokenizer', None)  # tests' synthetic data may have no decoder
  count_bytes = hasattr(tokenizer, 'decode') and c.objective.name in _BPB_OBJECTIVES
  for name, eval_set in sets.items():
    available = eval_set.num_eval_batches(c.train.batch_size, run.objective.window_len(c) - 1)
    if not available:  # never a silent score of zero examples
      raise UserError(f'the validation split{f" of {name}" if name else ""} holds less than one '
                      f'batch (train.batch_size={c.train.batch_size} windows of '
                      f'{run.objective.window_len(c)} tokens): add validation text or lower '
                      'train.batch_size')
    n = min(num_batches or available, available)
    totals, num_bytes = None, 0
    for i in range(n):
      host = builder.eval(i, eval_set)
      out = eval_step(params, device_batch(run, host), model_state)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
      if count_bytes:  # on the host while the device scores the batch
        num_bytes += scored_bytes(tokenizer, host['targets'], host['weights'])
    totals = jax.device_get(totals)
    if count_bytes:
      # Processes that load the same block (loading_slice) count its bytes once between them.
      loaders = jax.process_count() // loading_slice(run)[1]
      totals['bytes'] = _sum_over_processes(num_bytes) // loaders
    metrics.update(summarise(totals, f'eval/{name}/' if name else 'eval/'))
    grand = totals if grand is None else {k: jax.tree.map(np.add, grand[k], totals[k])
                                          for k in grand if k in totals}
    scored, split = scored + n, split + available
  if len(sets) > 1:
    metrics.update(summarise(grand, 'eval/'))
  return {**metrics, 'eval/batches': float(scored), 'eval/split_batches': float(split)}


def describe_eval(ev: dict[str, float]) -> str:
  """One line: the headline metrics and what they cover, e.g. 'eval loss 4.5790, perplexity
  97.4; 8 of 45 validation batches (32,768 tokens, train.eval_batches; research.evaluate
  scores all 45)'."""
  if 'eval/perplexity' in ev:
    head = f"eval loss {ev['eval/loss']:.4f}, perplexity {ev['eval/perplexity']:.1f}"
  else:
    head = f"eval loss {ev['eval/loss']:.4f}, accuracy {ev['eval/accuracy']:.3f}"
  if 'eval/bpb' in ev:
    head += f", {ev['eval/bpb']:.3f} bits/byte"
  head += ''.join(f", {k.split('/')[-1].replace('_', ' ')} {ev[k]:.3f}"
                  for k in sorted(ev)
                  if k.startswith(('eval/dpo/', 'eval/reward/')) and k.endswith('margin'))
  unit = 'pairs' if 'eval/pairs' in ev else 'tokens'
  n, total = int(ev['eval/batches']), int(ev['eval/split_batches'])
  amount = f"{ev.get(f'eval/{unit}', 0):,.0f} {unit}"
  if n >= total:
    return f'{head}; the whole validation split ({total} batches, {amount})'
  return (f'{head}; {n} of {total} validation batches ({amount}, train.eval_batches; '
          f'research.evaluate scores all {total})')


def load_dataset(run: Run, workdir: str):
  """The run's data: the token streams of `config.data`, or the objective's own examples when it
  reads them itself (sft, dpo, reward: JSONL files)."""
  if hasattr(run.objective, 'load_dataset'):
    return run.objective.load_dataset(run.config, workdir)
  from research.data import pipeline  # pylint: disable=g-import-not-at-top
  data = run.config.data
  source = run.config.get('init_from', '')
  if source and not data.tokenizer and pipeline.has_tokenizer(source):
    # The source model's ids: its tokenizer (research.convert imports one), not a new one.
    data = data.copy_and_resolve_references()
    data.tokenizer = source
  return pipeline.load_dataset(data, workdir=workdir)


def _is_due(step: int, every: int, last: int) -> bool:
  return step % every == 0 or step == last


def train(config, workdir: str, *, dataset=None, hooks: Sequence[Callable] = (),
          devices=None) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its newest intact checkpoint. Returns final
  metrics; after SIGTERM or SIGINT (a checkpoint saved) they hold `preempted_at` and
  `preempted_by` (the signal's name).

  `hooks` are called as hook(step, state, metrics) after every step (metrics only on log steps,
  else None): experiments observe the run through them without forking the loop.

  Raises:
    UserError: the workdir is in use or holds a run with another config (nothing written), a
      step was not finite, a checkpoint could not be saved, or the disk refused a write.
  """
  run = build_run(config, devices=devices)  # validates the config against the devices first
  try:
    with workdir_lock.hold(workdir):  # before anything in the workdir is written
      resume_check.check_resume(config, workdir)
      return _train_locked(run, workdir, dataset=dataset, hooks=hooks)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    user_error = guards.io_user_error(e, workdir)  # permission / disk full: one line
    if user_error is None:
      raise
    raise user_error from e


def _train_locked(run: Run, workdir: str, *, dataset, hooks) -> dict[str, float]:
  c = run.config
  os.makedirs(workdir, exist_ok=True)
  if dataset is None:
    dataset = load_dataset(run, workdir)
  if dataset.tokenizer.vocab_size > c.model.vocab_size:
    raise ConfigError('model.vocab_size', c.model.vocab_size,
                      f'is smaller than the tokenizer vocabulary ({dataset.tokenizer.vocab_size})')
  if jax.process_index() == 0:
    config_lib.save_config(c, os.path.join(workdir, 'config.json'))

  manager = checkpointing.make_manager(workdir, async_save=c.train.async_checkpoints)
  config_json = resume_check.as_json(c)
  saver = checkpointing.Saver(manager, workdir, keep=c.train.keep_checkpoints,
                              keep_every=c.train.keep_every, config_json=config_json)
  state = checkpointing.restore_good(manager, abstract_state(run), workdir,
                                     move_damaged=jax.process_index() == 0,
                                     config_json=config_json)
  if state is None:
    state = init_state(run, c.seed)
    if c.get('init_from', ''):
      from research.training import restore  # pylint: disable=g-import-not-at-top
      state, _ = restore.init_from(run, state, c.init_from)
    if hasattr(run.objective, 'load_frozen_state'):  # distill: the teacher's checkpoint
      state = run.objective.load_frozen_state(run, state)
  else:
    logging.info('resumed from step %d', int(state.step))
    saver.last_good = int(state.step)
  train_step, eval_step = make_train_step(run), make_eval_step(run)
  from research.evaluation import during_training  # pylint: disable=g-import-not-at-top
  evaluator = during_training.Evaluator.create(run, workdir, dataset)  # inputs checked now

  cfg = models.transformer_config(c.model, seq_len=c.data.seq_len)
  tokens_per_step = c.train.batch_size * c.data.seq_len
  flops_per_step = flops_lib.flops_per_step(cfg, c)
  peak, _ = flops_lib.peak_flops()  # CPUs have no published peak: measured there
  first = int(state.step)
  metrics_lib.drop_rows_after(workdir, first if saver.last_good is not None else -1)
  writer = MetricsWriter(workdir)
  guard = guards.NonFiniteGuard(c.train, saver)
  if 'peft' in c:
    counts = peft.count_params(state.params, c.peft)
    if first == 0:  # once per run, not again on every resume
      writer.write(first, {f'train/{k}': v for k, v in counts.items()})
    if jax.process_index() == 0:
      print(f"parameters: {counts['trainable_params']:,} trainable of "
            f"{counts['total_params']:,} ({c.peft.method})", flush=True)
  last = c.train.steps
  # smoothing=0: the rate (and so the ETA) is the average since the start. Steps are
  # dispatched asynchronously and the host waits only at log steps, so tqdm's default moving
  # average swings between "instant" steps and the one that waits (ETA 1:40 <-> 13:42).
  bar = tqdm(total=last, initial=first, disable=jax.process_index() != 0, dynamic_ncols=True,
             unit='step', desc='train', smoothing=0)
  pending, final, t_log, s_log = [], {}, time.perf_counter(), first
  batches = prefetched_train_batches(run, dataset, first, last, c.train.get('prefetch', 2))
  with guards.Interrupts() as interrupts, contextlib.ExitStack() as on_error:
    on_error.callback(saver.close)  # a failure still lets good saves in flight complete
    on_error.callback(bar.close)  # the error's one line then starts a line of its own
    for step in range(first + 1, last + 1):
      state, metrics = train_step(state, next(batches))  # batch index step - 1
      if step == first + 1:
        bar.unpause()  # the first call compiled the step: keep compile time out of the rate
      pending.append(metrics)
      saver.poll()  # a failed background save surfaces here, at the next step
      logged = None
      if _is_due(step, c.train.log_every, last):
        host = jax.device_get(pending)  # the only host sync between logs
        now = time.perf_counter()
        tokens_per_sec = tokens_per_step * (step - s_log) / (now - t_log)
        logged = {f'train/{k}': float(np.mean([h[k] for h in host])) for k in host[0]}
        logged['train/tokens_per_sec'] = tokens_per_sec
        # Wall time per step since the last log (compile excluded after the first log): what
        # a pipeline's bubble, (1 + bubble) x the per-stage time, is checked against.
        logged['train/step_time_s'] = (now - t_log) / (step - s_log)
        logged['train/tflops_per_sec_per_device'] = (
            flops_per_step * (step - s_log) / (now - t_log) / run.mesh.size / 1e12)
        logged['train/mfu'] = logged['train/tflops_per_sec_per_device'] * 1e12 / peak
        writer.write(step, logged)
        guard.check(s_log + 1, host)  # after the row is written: the log shows the bad step
        bar.set_postfix(loss=f"{logged['train/loss']:.3f}", tok_s=f'{tokens_per_sec:,.0f}')
        pending, t_log, s_log = [], time.perf_counter(), step
        final.update(logged)
      if _is_due(step, c.train.eval_every, last):
        # Offloaded parameters visit the device for the evaluation only.
        on_device = state.replace(params=device_params(run, state.params))
        ev = evaluate(run, on_device.params, dataset, eval_step,
                      num_batches=c.train.eval_batches, model_state=state.model_state)
        bar.write(f'step {step}: {describe_eval(ev)}')
        if evaluator is not None:
          tasks = evaluator(step, on_device)
          bar.write(f'step {step}: {during_training.describe(tasks, evaluator.entries)}')
          ev.update(tasks)
        writer.write(step, ev)
        final.update(ev)
        t_log = time.perf_counter()  # evaluation time is not training throughput
      for hook in hooks:
        hook(step, state, logged)
      if interrupts.requested or _is_due(step, c.train.checkpoint_every, last):
        guard.check(s_log + 1, jax.device_get(pending))  # steps not yet logged, then params
        guard.check_params(step, state.replace(params=device_params(run, state.params)))
        saver.save(step, state, force=bool(interrupts.requested))
      if interrupts.requested:
        saver.wait()
        bar.write(f'{interrupts.requested}: saved a checkpoint at step {step}; rerun to resume')
        final['preempted_at'], final['preempted_by'] = step, interrupts.requested
        break
      bar.update(1)
    on_error.pop_all()
  bar.close()
  saver.finish()
  manager.close()
  writer.close()
  final['step'] = int(state.step)
  return final
