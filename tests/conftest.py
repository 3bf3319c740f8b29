"""Every test sees 8 simulated CPU devices (set before JAX initialises its backend)."""

import atexit
import os
import shutil
import tempfile

import pytest

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

# Many tests compile the same tiny programs (one config's train step, its evaluation, its
# decoding loop): JAX's persistent compilation cache, in a directory of this session's own that
# the xdist workers and the commands tests run (they inherit the environment) share, compiles
# each once. The controller makes it before the workers start; nothing outlives the session.
if 'PYTEST_XDIST_WORKER' not in os.environ and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='lmforge-test-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.2'
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Tests marked `slow` start first, so that on several workers (make test runs two) the long
  ones overlap with the many short ones instead of running alone at the end."""
  del config
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # stable: order kept


@pytest.fixture
def one_device_meshes(monkeypatch):
  """Runs that name no devices build their mesh on the first device only. For tests of what a
  run computes or writes, not of its sharding (sharded equals unsharded is tested in
  tests/parallel and tests/models): the same programs compile and run about a quarter faster
  than on the 8 simulated devices."""
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS above)
  from research.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  one = jax.devices()[:1]
  monkeypatch.setattr(mesh_lib, 'default_devices', lambda: one)
