"""Training-step speed of a config: one JSON line of tokens/s, MFU, step time and peak memory.

  python -m research.benchmark --config=configs/decoder/gpt2_small.py [--steps=10] [--batch_size=N]

Batches are random tokens (speed does not depend on the text), so no dataset is needed. On CPU
the default batch is 1 sequence (a GPT-2-sized step takes seconds there) and MFU is measured
against this machine's own float32 matmul throughput, since CPUs have no published peak.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from research import cli, models
from research.training import flops as flops_lib, trainer

_STEPS = flags.DEFINE_integer('steps', 5, 'timed steps (after one compile-and-warm-up step)')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'global batch; 0: the config (1 on CPU)')


class _RandomTokens:
  """Stands in for the tokenizer: the special ids the objectives use, no text."""
  pad_id, eos_id, unk_id, bos_id, mask_id = 0, 1, 2, 3, 4
  num_sentinels = 100
  first_free_id = 256

  def sentinel_id(self, i: int) -> int:
    return 5 + i

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size


def peak_memory_bytes(compiled) -> tuple[int | None, str]:
  """Device-reported peak where the runtime tracks it (GPU/TPU), else XLA's static estimate."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device'
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None, 'unavailable'
  total = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes +
           analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  return int(total), 'xla_memory_analysis'


def benchmark(config, *, steps: int = 5, batch_size: int = 0) -> dict:
  """Times `steps` jitted train steps on random tokens and returns the measurements."""
  on_cpu = jax.default_backend() == 'cpu'
  if batch_size or on_cpu:
    config.train.batch_size = batch_size or 1
    config.train.micro_batches = 1
    config.mesh.data = -1 if config.train.batch_size % jax.device_count() == 0 else 1
    if config.mesh.data == 1 and jax.device_count() > 1:
      config.mesh.fsdp, config.mesh.tensor, config.mesh.expert = 1, 1, 1
  run = trainer.build_run(config, devices=None if config.mesh.data == -1 else jax.devices()[:1])
  state = trainer.init_state(run, config.seed)
  train_step = trainer.make_train_step(run)
  b, t = config.train.batch_size, config.data.seq_len
  rng = np.random.default_rng(0)
  tokenizer = _RandomTokens(config.data.vocab_size)
  window_len = run.objective.window_len(config)
  batches = [trainer.device_batch(run, run.objective.make_batch(
      rng.integers(_RandomTokens.first_free_id, tokenizer.vocab_size,
                   (b, window_len)).astype(np.int32),
      tokenizer=tokenizer, config=config, rngs=[np.random.default_rng(i) for i in range(b)]))
             for _ in range(2)]

  compile_start = time.perf_counter()
  with run.context():
    compiled = train_step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - compile_start
  state, metrics = train_step(state, batches[0])  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = train_step(state, batches[i % 2])
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / steps

  cfg = models.transformer_config(config.model, seq_len=t)
  tokens_per_sec = b * t / step_s
  flops_per_token = flops_lib.flops_per_step(cfg, config) / (b * t)
  peak, peak_source = flops_lib.peak_flops()
  memory, memory_source = peak_memory_bytes(compiled)
  return {
      'config': config.name, 'device': jax.devices()[0].device_kind,
      'num_devices': run.mesh.size, 'batch_size': b, 'seq_len': t,
      'dtype': jnp.dtype(cfg.dtype).name, 'params': int(sum(
          x.size for x in jax.tree.leaves(state.params))),
      'tokens_per_sec': tokens_per_sec, 'step_ms': step_s * 1e3,
      'tflops_per_sec_per_device': flops_per_token * tokens_per_sec / run.mesh.size / 1e12,
      'mfu': flops_per_token * tokens_per_sec / run.mesh.size / peak, 'peak_flops_source':
      peak_source, 'peak_memory': memory, 'peak_memory_source': memory_source,
      'compile_s': compile_s, 'loss': float(metrics['loss']),
  }


def main(config, argv):
  del argv
  print(json.dumps(benchmark(config, steps=_STEPS.value, batch_size=_BATCH.value)))


if __name__ == '__main__':
  cli.run_with_config(main)
