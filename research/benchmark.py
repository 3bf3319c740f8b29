"""Training-step speed of a config: one JSON line of tokens/s, MFU, step time and peak memory.

  python -m research.benchmark --config=configs/decoder/gpt2_small.py [--steps=10] [--batch_size=N]

Batches are random tokens (speed does not depend on the text), so no dataset is needed. On CPU
the default batch is 1 sequence (a GPT-2-sized step takes seconds there) and MFU is measured
against this machine's own float32 matmul throughput, since CPUs have no published peak.

On GPU it takes the fast paths: the config's batch, bfloat16 compute (`model.dtype='auto'`),
cuDNN flash attention (`model.attention.implementation='auto'` where cuDNN supports the head size),
the loss over `model.loss_chunk_size` positions at a time when set, donated state, tuned XLA
flags (research.xla_flags, set before JAX starts), one compile (the timed loop calls the
compiled executable) and no host syncs between the timed steps. The JSON line says which
attention implementation, loss chunking, remat policy and XLA flags it ran with.
"""

from __future__ import annotations

import datetime
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from research import cli, models, objectives
from research.layers import attention
from research.training import flops as flops_lib, trainer

_STEPS = flags.DEFINE_integer('steps', 5, 'timed steps (after the warm-up steps)')
_WARMUP = flags.DEFINE_integer('warmup', 0, 'untimed steps after compiling; 0: 1 on CPU, 3 else')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'global batch; 0: the config (1 on CPU)')


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


def cudnn_attention_supported(head_dim: int, seq_len: int, device=None) -> bool:
  """jax's cuDNN flash-attention limits for bf16/fp16 training (jax/_src/cudnn/
  fused_attention_stablehlo.py, check_is_flash_attention): head size a multiple of 8 and at
  most 256 on Hopper and later (128 before); even sequence lengths when a mask is given."""
  device = device or jax.devices()[0]
  capability = getattr(device, 'compute_capability', None)
  try:
    hopper = tuple(int(x) for x in str(capability).split('.')) >= (9, 0)
  except ValueError:
    hopper = False
  return head_dim % 8 == 0 and head_dim <= (256 if hopper else 128) and seq_len % 2 == 0


def resolve_attention(config) -> str:
  """The attention implementation(s) this config runs with here: one name, or 'a+b' when layers
  differ (sparse patterns, research.layers.patterns).

  'auto' is cuDNN flash attention on GPU for half-precision compute (research.layers.attention)
  and the XLA einsums (blockwise for sparse patterns) elsewhere; where cuDNN cannot take the head
  size, `model.attention.implementation` is pinned to 'xla' ('blockwise' when some layer is
  sparse) rather than failing at compile time.
  """
  cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  requested = cfg.attention.implementation
  causal = config.model.family != 'encoder'
  layer_patterns = cfg.attention.layer_patterns(cfg.num_layers)
  impls = sorted({attention.resolve_implementation(requested, cfg.dtype, p, causal=causal)
                  for p in layer_patterns})
  if requested == 'auto' and 'cudnn' in impls and not cudnn_attention_supported(
      cfg.head_dim, config.data.seq_len):
    pinned = 'xla' if all(p.is_full for p in layer_patterns) else 'blockwise'
    config.model.attention.implementation = pinned
    impls = [pinned]
  return '+'.join(impls)


def _with_loss_chunking(run, chunk: int):
  """Gives the run's models `loss_chunk_size` (decoders; others score whole logits)."""
  if 'loss_chunk_size' not in getattr(run.model, '__dataclass_fields__', {}):
    return 0
  run.model = run.model.clone(loss_chunk_size=chunk)
  run.eval_model = run.eval_model.clone(loss_chunk_size=chunk)
  return chunk


def benchmark(config, *, steps: int = 5, batch_size: int = 0, warmup: int = 0) -> dict:
  """Times `steps` jitted train steps on random tokens and returns the measurements."""
  on_cpu = jax.default_backend() == 'cpu'
  warmup = warmup or (1 if on_cpu else 3)
  if batch_size or on_cpu:
    config.train.batch_size = batch_size or 1
    config.train.micro_batches = 1
    config.mesh.data = -1 if config.train.batch_size % jax.device_count() == 0 else 1
    if config.mesh.data == 1 and jax.device_count() > 1:
      config.mesh.fsdp, config.mesh.tensor, config.mesh.expert = 1, 1, 1
  attention_impl = resolve_attention(config)
  run = trainer.build_run(config, devices=None if config.mesh.data == -1 else jax.devices()[:1])
  loss_chunk = _with_loss_chunking(run, int(config.model.get('loss_chunk_size', 0) or 0))
  state = trainer.init_state(run, config.seed)
  train_step = trainer.make_train_step(run)
  b, t = config.train.batch_size, config.data.seq_len
  rng = np.random.default_rng(0)
  tokenizer = objectives.StandInTokenizer(config.data.vocab_size)
  window_len = run.objective.window_len(config)
  batches = [trainer.device_batch(run, run.objective.make_batch(
      rng.integers(tokenizer.first_free_id, tokenizer.vocab_size,
                   (b, window_len)).astype(np.int32),
      tokenizer=tokenizer, config=config, rngs=[np.random.default_rng(i) for i in range(b)]))
             for _ in range(2)]

  compile_start = time.perf_counter()
  with run.context():
    compiled = train_step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - compile_start
  # The compiled executable itself: calling `train_step` would trace and compile again.
  for i in range(warmup):
    state, metrics = compiled(state, batches[i % 2])
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for i in range(steps):  # donated state, no host syncs: each call only enqueues the step
    state, metrics = compiled(state, batches[i % 2])
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / steps

  cfg = models.transformer_config(config.model, seq_len=t)
  tokens_per_sec = b * t / step_s
  flops_per_token = flops_lib.flops_per_step(cfg, config) / (b * t)
  peak, peak_source = flops_lib.peak_flops()
  memory, memory_source = peak_memory_bytes(compiled)
  device = jax.devices()[0]
  return {
      'config': config.name, 'device': device.device_kind, 'backend': jax.default_backend(),
      'num_devices': run.mesh.size, 'batch_size': b, 'seq_len': t,
      'micro_batches': config.train.micro_batches,
      'dtype': jnp.dtype(cfg.dtype).name, 'params': int(sum(
          x.size for x in jax.tree.leaves(state.params))),
      'attention_impl': attention_impl, 'loss_chunk_size': loss_chunk, 'remat': cfg.remat,
      'scan_layers': cfg.scan_layers,
      'tokens_per_sec': tokens_per_sec, 'step_ms': step_s * 1e3,
      'flops_per_token': flops_per_token,
      'tflops_per_sec_per_device': flops_per_token * tokens_per_sec / run.mesh.size / 1e12,
      'mfu': flops_per_token * tokens_per_sec / run.mesh.size / peak, 'peak_flops_source':
      peak_source, 'peak_memory': memory, 'peak_memory_source': memory_source,
      'compile_s': compile_s, 'steps': steps, 'warmup': warmup,
      'loss': float(metrics['loss']), 'jax': jax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'date': datetime.date.today().isoformat(),
  }


def main(config, argv):
  del argv
  print(json.dumps(benchmark(config, steps=_STEPS.value, batch_size=_BATCH.value,
                             warmup=_WARMUP.value)))


if __name__ == '__main__':
  from research import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.configure_for_gpu()  # before the config's validation starts a JAX backend
  cli.run_with_config(main)
