"""The pipeline's measured train-step time against its schedule's prediction, on simulated CPU
devices: GPipe (repeats 1) and circular repeats.

  python -m benchmarks.pipeline_bench --stages=2,4 --micro_batches=1,2,4,8 --repeats=1,2

One JSON line per (stages, repeats, micro-batches) case, after one for the unpipelined reference
(one device, same model and batch). A pipelined step runs R M + S - 1 iterations in which each
of the S stages applies L / (R S) layers to B / M rows, so its devices do (R M + S - 1) / (R M)
times the reference's layer work, (1 - bubble)^-1. Simulated CPU devices share the host's
cores, so stages do not run in parallel here and the prediction is `serial_ideal_s` =
reference x (R M + S - 1) / (R M); on real accelerators it would be that over S
(`parallel_ideal_s`). The head and embeddings run on every stage (not pipelined), which the
predictions leave out. `overhead` = measured / serial_ideal_s: the buffer rolls, micro-batch
gathers, the circular weight reshuffle and the head. Circular cases need M >= S.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _set_devices(n: int) -> None:
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  os.environ['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={n}'])
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def step_time(config, devices, steps: int) -> float:
  """Median wall time of a compiled train step (the first, compiling call excluded)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from research.training import trainer  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  run = trainer.build_run(config, devices=devices)
  state = trainer.init_state(run, seed=0)
  step = trainer.make_train_step(run)
  dataset = helpers.PatternDataset(config.data.vocab_size)
  batch = trainer.device_batch(run, trainer.host_train_batch(run, dataset, 0))
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--stages', default='2,4')
  parser.add_argument('--micro_batches', default='1,2,4,8')
  parser.add_argument('--repeats', default='1,2')
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--d_model', type=int, default=128)
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=5)
  args = parser.parse_args()
  stages = [int(s) for s in args.stages.split(',')]
  _set_devices(max(stages))
  import jax  # pylint: disable=g-import-not-at-top
  from research.parallel import pipeline  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top

  def config(**overrides):
    return helpers.tiny_config(**{
        'model.d_model': args.d_model, 'model.num_layers': args.layers,
        'model.num_heads': 4, 'model.scan_layers': True, 'model.dtype': 'float32',
        'data.seq_len': args.seq_len, 'train.batch_size': args.batch_size, 'mesh.data': 1,
        **overrides})

  common = dict(layers=args.layers, d_model=args.d_model, seq_len=args.seq_len,
                batch_size=args.batch_size, cpu_cores=os.cpu_count(), backend='cpu')
  reference = step_time(config(), jax.devices()[:1], args.steps)
  print(json.dumps({'case': 'reference', 'stages': 1, 'micro_batches': 1,
                    'step_time_s': round(reference, 5), **common}), flush=True)
  for s in stages:
    for r in (int(x) for x in args.repeats.split(',')):
      for m in (int(x) for x in args.micro_batches.split(',')):
        if (r > 1 and m < s) or args.layers % (s * r):
          continue  # circular repeats need M >= S; chunks must divide the layers
        measured = step_time(config(**{'mesh.stage': s, 'mesh.pipeline_repeats': r,
                                       'mesh.pipeline_micro_batches': m}),
                             jax.devices()[:s], args.steps)
        stretch = pipeline.iterations(s, m, r) / (r * m)
        print(json.dumps({
            'case': 'gpipe' if r == 1 else 'circular', 'stages': s, 'repeats': r,
            'micro_batches': m, 'bubble_fraction': round(pipeline.bubble_fraction(s, m, r), 4),
            'step_time_s': round(measured, 5), 'serial_ideal_s': round(reference * stretch, 5),
            'parallel_ideal_s': round(reference / s * stretch, 5),
            'overhead': round(measured / (reference * stretch), 3), **common}), flush=True)

if __name__ == '__main__':
  main()
