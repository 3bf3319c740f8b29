"""Every test sees 8 simulated CPU devices (set before JAX initialises its backend)."""

import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# libtpu (the ahead-of-time TPU compile tests) locks /tmp/libtpu_lockfile for a process's whole
# life; test processes only describe TPU topologies, so several may load it at once.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
# Many tests compile the same tiny programs (a train step, a decode loop): a persistent
# compilation cache shared by the xdist workers and test subprocesses compiles each once
# (about a third of the suite's time). Keys include the program, options and jax version.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), f'lmforge-test-jax-cache-{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.3')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
