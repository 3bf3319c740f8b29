"""Real multi-host training: 2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo
collectives) give the loss curve of 1 process x 8 devices, and checkpoints move between them.

Each run is `python -m research.train` in subprocesses, exactly as on a pod or a SLURM
cluster, on the embedded corpus (the `:tiny` Shakespeare config). Its second layer is a
mixture of 4 experts on an `fsdp=2 x expert=4` mesh, so the experts' all-to-alls cross the
process boundary too (the first layer stays dense). A pipelined run puts its two GPipe stages on
the two processes (the slice boundary of a multi-slice pod), and its losses are the unpipelined
run's.
"""

import os
import shutil
import json
import socket
import sys

import numpy as np
import pytest

from research.training.metrics import read_metrics
from tests import helpers

pytestmark = pytest.mark.multiprocess

HALF = 3  # steps before the checkpoint that changes hands; the runs go to 2 x HALF
CONFIG = 'configs/decoder/shakespeare.py:tiny'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# The checkpoint test's model and layout: a mixture of experts whose all-to-alls cross processes.
MOE = ('--config.model.moe.num_experts=4', '--config.model.moe.every=2',
       '--config.model.moe.router=dropless', '--config.mesh.preset=fsdp_ep')


def _processes(command, processes: int) -> list[str]:
  """Runs `command` in `processes` processes of 8 / processes CPU devices each (joined by
  jax.distributed on 127.0.0.1 when more than one); waits for all, returns their outputs."""
  env = helpers.subprocess_env(8 // processes, JAX_PLATFORMS='cpu')
  if processes == 1:
    return helpers.run_processes([command], env, timeout=600)
  command = command + [f'--coordinator_address=127.0.0.1:{_free_port()}',
                       f'--num_processes={processes}']
  return helpers.run_processes([command + [f'--process_id={i}'] for i in range(processes)], env,
                               timeout=600)


def _train(workdir, cache_dir, *, processes: int, steps: int, layout=MOE):
  """`research.train` of CONFIG with `layout`'s overrides in `processes` processes."""
  # A constant schedule (after warmup): runs to HALF and to 2 x HALF share their learning rates.
  overrides = [f'--config.train.steps={steps}', '--config.train.log_every=1',
               '--config.train.schedule=constant', '--config.train.warmup_steps=2',
               f'--config.train.checkpoint_every={HALF}', '--config.train.eval_every=100',
               '--config.train.keep_checkpoints=10', f'--config.data.cache_dir={cache_dir}',
               *layout]
  _processes([sys.executable, '-m', 'research.train', f'--config={CONFIG}',
              f'--workdir={workdir}', *overrides], processes)


def _losses(workdir) -> dict[int, float]:
  """Training loss per step; a resumed run's later lines win."""
  return {m['step']: m['train/loss'] for m in read_metrics(workdir) if 'train/loss' in m}


def _assert_same_curve(got: dict[int, float], want: dict[int, float], steps):
  np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=2e-5)


@pytest.mark.slow
def test_two_processes_match_one_and_exchange_checkpoints(tmp_path):
  cache = tmp_path / 'cache'
  one, two = tmp_path / 'one', tmp_path / 'two'
  _train(one, cache, processes=1, steps=2 * HALF)  # also prepares the corpus (tokenizer and shards)
  _train(two, cache, processes=2, steps=HALF)
  reference, first_half = _losses(one), range(1, HALF + 1)
  _assert_same_curve(_losses(two), reference, first_half)

  # Only process 0 logs: one line per logged step, not two.
  steps_logged = [m['step'] for m in read_metrics(two) if 'train/loss' in m]
  assert steps_logged == list(first_half)
  # Both processes wrote their shards of the checkpoint.
  written = {f for _, _, files in os.walk(two / 'checkpoints' / str(HALF)) for f in files} | {
      d for _, dirs, _ in os.walk(two / 'checkpoints' / str(HALF)) for d in dirs}
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= written, sorted(written)

  # 2-process checkpoint -> 1 process: resumes at HALF and continues the same curve.
  resumed_on_one = tmp_path / 'two_then_one'
  shutil.copytree(two, resumed_on_one)
  _train(resumed_on_one, cache, processes=1, steps=2 * HALF)
  second_half = range(HALF + 1, 2 * HALF + 1)
  _assert_same_curve(_losses(resumed_on_one), reference, second_half)

  # 1-process checkpoint -> 2 processes: the same.
  resumed_on_two = tmp_path / 'one_then_two'
  shutil.copytree(one, resumed_on_two)
  shutil.rmtree(resumed_on_two / 'checkpoints' / str(2 * HALF))
  _train(resumed_on_two, cache, processes=2, steps=2 * HALF)
  _assert_same_curve(_losses(resumed_on_two), reference, second_half)


# GPipe with the stage axis across processes: mesh.stage=2 is the outermost axis larger than 1
# (research/parallel/mesh.py orders data, stage, fsdp, ...; data=1 here), and jax.devices()
# lists process 0's devices first, so stage 0 is process 0's 4 devices and stage 1 process 1's:
# the stage-to-stage activation transfers (the buffer's roll) cross the process boundary, as
# they would cross the slice boundary (DCN) of a multi-slice pod. 4 scanned layers, 2 a stage.
SCANNED = ('--config.model.scan_layers=true', '--config.model.num_layers=4')
PIPELINED = (*SCANNED, '--config.mesh.preset=', '--config.mesh.data=1', '--config.mesh.stage=2',
             '--config.mesh.fsdp=4', '--config.mesh.pipeline_micro_batches=2')
UNPIPELINED = (*SCANNED, '--config.mesh.preset=fsdp')

# Run in each process of the pipelined layout: the trainer's own mesh and parameter shardings
# (research.train's build_run), as JSON: which processes hold each stage, and which rows of the
# scanned [L, ...] layer parameters each process's devices hold.
_WHERE_STAGES_LIVE = """
import json, sys
import jax
from absl import flags
from research import config_lib
from research.parallel import distributed
from research.training import trainer

args = flags.FLAGS(sys.argv, known_only=True)[1:]  # jax.distributed's flags parsed, then
distributed.initialize_from_flags()  # the config and its overrides left
config = config_lib.load_config(args[0], [a[len('--config.'):].split('=', 1) for a in args[1:]])
run = trainer.build_run(config)
stage = run.mesh.axis_names.index('stage')
devices_S = run.mesh.devices.swapaxes(0, stage).reshape(run.mesh.shape['stage'], -1)
leaf_LX = jax.tree.leaves(trainer.abstract_state(run).params['stack']['layers'])[0]
sharding = jax.tree.leaves(run.state_shardings.params['stack']['layers'])[0]
layers = {}
for device, index in sharding.devices_indices_map(leaf_LX.shape).items():
  layers.setdefault(device.process_index, set()).update(range(leaf_LX.shape[0])[index[0]])
print('STAGES', json.dumps({
    'processes': [sorted({d.process_index for d in ds}) for ds in devices_S],
    'layers': {p: sorted(rows) for p, rows in layers.items()}}))
"""


@pytest.mark.slow
def test_pipeline_stages_on_two_processes_match_one_unpipelined(tmp_path):
  steps = 3
  cache = tmp_path / 'cache'
  # Where the stages live, from the mesh and shardings the trainer builds in each process.
  outputs = _processes([sys.executable, '-c', _WHERE_STAGES_LIVE, CONFIG, *PIPELINED], 2)
  for out in outputs:
    where = json.loads(out.split('STAGES ', 1)[1].splitlines()[0])
    assert where['processes'] == [[0], [1]]  # stage s: process s's devices only
    assert where['layers'] == {'0': [0, 1], '1': [2, 3]}  # and its layers' parameters

  one, two = tmp_path / 'one', tmp_path / 'two'
  _train(one, cache, processes=1, steps=steps, layout=UNPIPELINED)
  _train(two, cache, processes=2, steps=steps, layout=PIPELINED)
  got, want = _losses(two), _losses(one)
  assert sorted(got) == sorted(want) == list(range(1, steps + 1))
  np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=0, atol=1e-5)


@pytest.mark.parametrize('env, expected', [
    ({}, False),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, False),  # an allocation, not a job step
    ({'SLURM_STEP_ID': '0', 'SLURM_NTASKS': '1'}, False),  # one task: nothing to join
    ({'SLURM_STEP_ID': '0', 'SLURM_NTASKS': '4'}, True),  # srun with 4 tasks
    ({'TPU_WORKER_HOSTNAMES': 'w0'}, False),  # a single-host TPU VM
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, True),  # a pod slice
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
])
def test_clusters_are_detected_from_the_environment(env, expected):
  from research.parallel import distributed  # pylint: disable=g-import-not-at-top
  assert distributed.cluster_in_environment(env) is expected
