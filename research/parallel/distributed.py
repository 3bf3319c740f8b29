"""Multi-host start-up: JAX's own multi-controller runtime, nothing home-made."""

from __future__ import annotations

import jax
from absl import flags

_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 for jax.distributed (multi-host)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'total processes (multi-host)')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'this process, 0..num_processes-1')
_CPU_COLLECTIVES = flags.DEFINE_string('cpu_collectives', 'gloo',
                                       'CPU collectives for multi-process CPU runs')


def initialize_from_flags() -> None:
  """Calls jax.distributed.initialize when flags ask for several processes.

  On TPU pods and under SLURM JAX detects the cluster itself; pass --num_processes=-1 there to
  initialise from the environment.
  """
  if _NUM_PROCESSES.value is None:
    return
  # Must precede any backend query; it only affects the CPU client.
  jax.config.update('jax_cpu_collectives_implementation', _CPU_COLLECTIVES.value)
  if _NUM_PROCESSES.value == -1:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
