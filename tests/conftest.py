"""Every test sees 8 simulated CPU devices (set before JAX initialises its backend)."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# libtpu (the ahead-of-time TPU compile tests) locks /tmp/libtpu_lockfile for a process's whole
# life; test processes only describe TPU topologies, so several may load it at once.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
