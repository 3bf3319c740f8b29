"""2 processes x 4 CPU devices (jax.distributed, gloo) each read only their own rows of a
prepared corpus, and together they make exactly the 1-process batch."""

from __future__ import annotations

import json
import socket
import sys
import textwrap

import numpy as np
import pytest

from research.data import loader
from research.data import pipeline
from tests import helpers

pytestmark = pytest.mark.multiprocess

STEPS = (0, 7)
_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    import numpy as np
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    address, process, overrides, out = sys.argv[1:5]
    jax.distributed.initialize(coordinator_address=address, num_processes=2,
                               process_id=int(process))
    from jax.experimental import multihost_utils
    from research.data import pipeline
    from research.training import trainer
    from tests import helpers
    config = helpers.tiny_config(**json.loads(overrides))
    run = trainer.build_run(config)
    dataset = pipeline.load_dataset(config.data)
    for step in %s:
      host = trainer.host_train_batch(run, dataset, step)
      np.savez(f'{out}/rows_p{jax.process_index()}_s{step}.npz', **host)
      device = trainer.device_batch(run, host)
      whole = {k: multihost_utils.process_allgather(v, tiled=True) for k, v in device.items()}
      if jax.process_index() == 0:
        np.savez(f'{out}/global_s{step}.npz', **whole)
''' % (STEPS,))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['mlm'])
def test_two_processes_read_disjoint_rows_that_make_the_global_batch(prepared_corpus, tmp_path,
                                                                     objective):
  overrides = {'data.source': f'prepared:{prepared_corpus}', 'data.vocab_size': 512,
               'data.num_sentinels': 8, 'data.seq_len': 32, 'train.batch_size': 16,
               'data.cache_dir': str(tmp_path / 'cache'), 'objective.name': objective,
               'model.family': 'encoder'}
  address = f'127.0.0.1:{_free_port()}'
  env = helpers.subprocess_env(4, JAX_PLATFORMS='cpu')
  helpers.run_processes([[sys.executable, '-c', _SCRIPT, address, str(i), json.dumps(overrides),
                          str(tmp_path)] for i in range(2)], env, timeout=300)

  config = helpers.tiny_config(**overrides)
  builder = loader.BatchBuilder(dataset=pipeline.load_dataset(config.data), config=config)
  for step in STEPS:
    want = builder.train(step)  # one process, all 16 rows
    rows = [np.load(tmp_path / f'rows_p{i}_s{step}.npz') for i in range(2)]
    whole = np.load(tmp_path / f'global_s{step}.npz')
    for key, value in want.items():
      assert rows[0][key].shape[0] == rows[1][key].shape[0] == 8  # each read only its half
      np.testing.assert_array_equal(np.concatenate([rows[0][key], rows[1][key]]), value)
      np.testing.assert_array_equal(whole[key], value)
