"""Small shared builders for tests: tiny configs and in-memory datasets."""

from __future__ import annotations

import os
import subprocess

import jax
import numpy as np

from research import config_lib


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
  """The environment for a command a test runs: `devices` simulated CPU devices, the tests'
  other XLA flags (fast compilation) kept, and `extra` variables on top."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  if devices > 1:
    flags.append(f'--xla_force_host_platform_device_count={devices}')
  return {**os.environ, 'XLA_FLAGS': ' '.join(flags), **extra}


def run_processes(commands: list[list[str]], env: dict[str, str], *,
                  timeout: int) -> list[str]:
  """Starts `commands` together (the processes of one jax.distributed job), waits for all and
  returns their outputs; if any failed, the assertion shows every process's last lines, since
  the first to fail is often not process 0.

  Several processes run without the session's persistent compilation cache: JAX writes an entry
  from process 0 only and not atomically, so a partner process can load one while it is being
  written (a CI run aborted in a cross-process barrier with the cache shared)."""
  if len(commands) > 1:
    env = {k: v for k, v in env.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for command in commands]
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()  # after a timeout, none is left waiting in a barrier for the others
  report = [f'--- process {i} of {len(procs)}: exit {p.returncode}\n{out[-3000:]}'
            for i, (p, out) in enumerate(zip(procs, outputs))]
  assert all(p.returncode == 0 for p in procs), '\n'.join(report)
  return outputs


def tiny_config(**overrides):
  """A 2-layer, 64-wide decoder on 64-token sequences; `overrides` are 'a.b' -> value."""
  c = config_lib.base_config()
  c.data.vocab_size = 128
  c.data.seq_len = 32
  c.model.d_model = 64
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.activation = 'swiglu'
  c.train.batch_size = 16
  c.train.steps = 10
  c.train.warmup_steps = 2
  c.train.lr = 3e-3
  c.train.log_every = 1
  c.train.eval_every = 5
  c.train.eval_batches = 2
  c.train.checkpoint_every = 5
  return config_lib.finalize(config_lib.set_fields(c, overrides))


class SyntheticTokenizer:
  eos_id, pad_id, bos_id, unk_id = 1, 0, 3, 2

  def __init__(self, vocab_size):
    self.vocab_size = vocab_size


class PatternDataset:
  """A learnable in-memory corpus: documents repeat one of 16 fixed short patterns, then EOS.

  Same interface as research.data.pipeline.Dataset (train_batch / eval_batch are pure functions
  of their arguments), so trainer tests do not depend on the Shakespeare build.
  """

  def __init__(self, vocab_size=128, num_tokens=50_000, seed=0):
    rng = np.random.default_rng(seed)
    self.tokenizer = SyntheticTokenizer(vocab_size)
    patterns = [rng.integers(4, vocab_size, rng.integers(3, 9)) for _ in range(16)]
    pieces = []
    while sum(len(p) for p in pieces) < num_tokens:
      pattern = patterns[rng.integers(len(patterns))]
      pieces.append(np.concatenate([np.tile(pattern, rng.integers(5, 30)), [1]]))
    self.tokens = np.concatenate(pieces)[:num_tokens].astype(np.int32)
    split = int(0.9 * num_tokens)
    self.train_tokens, self.valid_tokens = self.tokens[:split], self.tokens[split:]

  def _windows(self, tokens, starts, seq_len, process_index, process_count):
    per = len(starts) // process_count
    starts = starts[process_index * per:(process_index + 1) * per]
    return np.stack([tokens[s:s + seq_len + 1] for s in starts])

  def train_batch(self, seed, step, global_batch, seq_len, process_index=0, process_count=1):
    starts = np.random.default_rng([seed, step]).integers(
        0, len(self.train_tokens) - seq_len - 1, global_batch)
    return self._windows(self.train_tokens, starts, seq_len, process_index, process_count)

  def eval_batch(self, batch_index, global_batch, seq_len, process_index=0, process_count=1):
    starts = (batch_index * global_batch + np.arange(global_batch)) * seq_len
    return self._windows(self.valid_tokens, starts, seq_len, process_index, process_count)

  def num_eval_batches(self, global_batch, seq_len):
    return (len(self.valid_tokens) - 1) // (global_batch * seq_len)


def batch_loss_and_grads(run, params, dataset, step=0):
  """Mean loss and its gradients on the training batch at `step`, under `run`'s mesh: what the
  layout-equivalence tests compare across meshes."""
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  batch = trainer.device_batch(run, trainer.host_train_batch(run, dataset, step=step))

  def loss(params):
    loss_sum, aux = run.objective.loss_fn(run.eval_model, params, batch)
    return loss_sum / aux['weight_sum']

  with run.context():
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
  return float(value), jax.device_get(grads)


def assert_grads_close(grads, ref_grads, *, rtol: float = 1e-5, label: str = '') -> None:
  """Every gradient leaf within `rtol` of the reference's, in relative norm (a sharded or
  rearranged run against one device)."""
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    ref = ref_grads
    for key in path:
      ref = ref[key.key]
    rel = np.linalg.norm(g - ref) / np.linalg.norm(ref)
    assert rel < rtol, f'{label} {jax.tree_util.keystr(path)}: relative error {rel:.2e}'
