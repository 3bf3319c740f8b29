"""Every test sees 8 simulated CPU devices (set before JAX initialises its backend)."""

import os

# Tests compile hundreds of tiny programs and run each a few times, so LLVM's optimisations
# cost more than they save: without them the suite takes about a third less CPU time. Commands
# that tests run in subprocesses keep the flag (tests.helpers.subprocess_env).
FAST_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + f' {FAST_COMPILE}'
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# libtpu (the ahead-of-time TPU compile tests) locks /tmp/libtpu_lockfile for a process's whole
# life; test processes only describe TPU topologies, so several may load it at once.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


def pytest_collection_modifyitems(config, items):
  """Tests marked `slow` start first, so that on several workers (make test runs two) the long
  ones overlap with the many short ones instead of running alone at the end."""
  del config
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # stable: order kept
