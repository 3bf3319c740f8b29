"""Post-training, weight-only quantization of a trained workdir (int8 or int4), through Qwix.

  python -m research.compress quantize --workdir=runs/shakespeare --out=runs/shakespeare-int8 \\
      --bits=8
  python -m research.compress quantize --workdir=W --out=W2 --bits=4 --group_size=32 \\
      --asymmetric --layers=attention,mlp

From Python: `quantize_workdir(workdir, out, bits=8, group_size=0, asymmetric=False)`.

The latest intact checkpoint of --workdir (LoRA folded in) is restored and the weights of the
selected layer kinds (--layers: attention, mlp, moe, head) are quantized: per output channel
(--group_size=0) or per group of --group_size input features of each channel; symmetric
(absmax scale, the step is max|w| / (2^(bits-1) - 0.5)) or --asymmetric (min-max scale with a
zero point). --out is a new workdir: its config.json records the quantization
(model.quantization: mode 'ptq', weight_qtype, layers, group_size, symmetric), its Orbax
checkpoint holds the int8/int4 values with their float32 scales (and zero points), no float
copy of the quantized weights and no optimizer state, and the tokenizer is copied. research.sample,
research.evaluate and research.load read it like any workdir; each quantized matmul runs on the
dequantized weight (or an integer matmul where XLA has one): research/layers/quantization.py,
which also says why Qwix and what it offers for fp8. Prints one JSON line: parameter bytes
before and after, and the checkpoint's bytes on disk.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import jax
from absl import flags

from research import cli, config_lib, loading
from research.errors import UserError

# The subcommand's own flags: research.compress runs prune and quantize in one process too.
FLAGS = flags.FlagValues()
BITS = {8: 'int8', 4: 'int4'}
DEFAULT_LAYERS = 'attention,mlp,moe'


def define_flags() -> None:
  """The subcommand's flags, defined when it runs (once per process)."""
  if 'bits' in FLAGS:
    return
  own = {'flag_values': FLAGS}
  flags.DEFINE_string('workdir', None, 'the trained workdir to quantize (read only)', **own)
  flags.DEFINE_string('out', None, 'the new, quantized workdir (must not exist)', **own)
  flags.DEFINE_integer('bits', 8, 'weight bits: 8 (int8) or 4 (int4)', **own)
  flags.DEFINE_integer('group_size', 0, 'a scale per this many input features of each output '
                       'channel; 0: one per output channel', **own)
  flags.DEFINE_bool('asymmetric', False, 'min-max scales with a zero point (default: symmetric)',
                    **own)
  flags.DEFINE_string('layers', DEFAULT_LAYERS, 'comma-separated layer kinds to quantize: '
                      'attention, mlp, moe, head', **own)
  flags.DEFINE_integer('step', None, 'the checkpoint step to quantize (default: the latest)',
                       **own)


def _check_out(out: str) -> None:
  if os.path.exists(out):
    raise UserError(f'--out={out} exists: give a new directory (the quantized workdir is '
                    'written from scratch)')


def quantized_config(config, *, bits: int, group_size: int, asymmetric: bool, layers: str):
  """`config` with model.quantization set for PTQ, validated; one-line UserErrors name the
  command's flags."""
  from research import models  # pylint: disable=g-import-not-at-top
  from research.layers import quantization  # pylint: disable=g-import-not-at-top
  if bits not in BITS:
    raise UserError(f'--bits={bits}: choose 8 (int8) or 4 (int4)')
  if config.model.quantization.mode != 'none':
    raise UserError(f'--workdir is quantized already (model.quantization.mode='
                    f'{config.model.quantization.mode!r}): give the float workdir')
  kinds = [k.strip() for k in layers.split(',') if k.strip()]
  unknown = [k for k in kinds if k not in quantization.LAYER_KINDS]
  if not kinds or unknown:
    raise UserError(f'--layers={layers}: give comma-separated kinds from '
                    f'{sorted(quantization.LAYER_KINDS)}')
  if group_size < 0:
    raise UserError(f'--group_size={group_size}: must be >= 0 (0: per output channel)')
  model_cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  problem = quantization.group_size_problem(model_cfg, kinds, group_size)
  if problem:
    raise UserError(f'--group_size={group_size}: {problem}')
  config = copy.deepcopy(config)
  q = config.model.quantization
  q.mode, q.weight_qtype, q.act_qtype, q.bwd_qtype = 'ptq', BITS[bits], '', ''
  q.layers, q.group_size, q.symmetric = ','.join(kinds), group_size, not asymmetric
  try:
    return config_lib.finalize(config)
  except UserError as e:  # e.g. a tied head: say which flag to change
    raise UserError(f'--layers={layers}: {e}') from None


def _array_bytes(x) -> int:
  bits = jax.numpy.iinfo(x.dtype).bits if jax.numpy.issubdtype(x.dtype, jax.numpy.integer) \
      else x.dtype.itemsize * 8
  return x.size * bits // 8


def tree_bytes(tree) -> int:
  """Bytes of the arrays of `tree` at their element width (int4: half a byte)."""
  return sum(_array_bytes(x) for x in jax.tree.leaves(tree))


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
             for f in files)


def quantize_workdir(workdir: str, out: str, *, bits: int = 8, group_size: int = 0,
                     asymmetric: bool = False, layers: str = DEFAULT_LAYERS,
                     step: int | None = None) -> dict:
  """Writes `out`, the weight-only quantized copy of `workdir`'s checkpoint; returns a summary.

  Raises:
    UserError: no such workdir (or checkpoint), an existing `out`, bits not 8 or 4, a group size
      that does not divide a quantized weight's input dimension, an unknown layer kind.
  """
  from research.data import hf_tokenizer, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from research.layers import quantization  # pylint: disable=g-import-not-at-top
  from research.training import peft, trainer  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise UserError(f'--workdir={workdir}: not a workdir (no config.json): give one that '
                    'research.train or research.convert wrote')
  _check_out(out)
  source_config = loading.load_config(workdir)  # checks the workdir before anything is loaded
  config = quantized_config(source_config, bits=bits, group_size=group_size,
                            asymmetric=asymmetric, layers=layers)
  lm = loading.load(workdir, step=step)
  merged_config, params = peft.merged_model(lm.config, lm.params)  # LoRA folded in
  config = quantized_config(merged_config, bits=bits, group_size=group_size,
                            asymmetric=asymmetric, layers=layers)
  run = loading.run_here(config)
  abstract = trainer.abstract_state(run).params
  with run.context():
    quantized = jax.jit(quantization.quantize_params,
                        out_shardings=run.state_shardings.params)(params, abstract)
  loading.save_workdir(out, config, run, quantized, lm.model_state)
  tokenizer = []
  if tokenizer_lib.find_tokenizer(workdir) is not None:
    tokenizer = hf_tokenizer.copy_tokenizer_files(workdir, out)
  return {'workdir': workdir, 'out': out, 'step': lm.step, 'bits': bits,
          'group_size': group_size, 'symmetric': not asymmetric,
          'layers': config.model.quantization.layers,
          'param_bytes_float': tree_bytes(params), 'param_bytes_quantized': tree_bytes(quantized),
          'checkpoint_bytes_float': dir_bytes(os.path.join(workdir, 'checkpoints')),
          'checkpoint_bytes_quantized': dir_bytes(os.path.join(out, 'checkpoints')),
          'tokenizer': tokenizer}


# ------------------------------------------------------------------------------------------------
# Command.


def _help() -> str:
  own = FLAGS.get_key_flags_for_module(sys.modules[__name__])
  lines = [(__doc__ or '').strip(), '', 'flags:']
  for flag in own:
    default = '' if flag.default is None else f' (default {flag.default!r})'
    lines.append(f'  --{flag.name}: {flag.help}{default}')
  return '\n'.join(lines) + '\n'


def _parse(argv: list[str]) -> None:
  rest = argv[1:]
  for arg in rest:
    name = arg.lstrip('-').split('=', 1)[0] if arg.startswith('-') else None
    if name is None:
      raise UserError(f'unexpected argument {arg!r}: flags are written --name=value')
  cli.check_flags(rest, uses_config=False, flag_values=FLAGS)
  FLAGS.unparse_flags()  # a second call in one process starts from the defaults
  try:
    FLAGS([argv[0]] + rest)
  except flags.Error as e:
    raise UserError(str(e).splitlines()[0]) from None
  if not FLAGS.workdir or not FLAGS.out:
    raise UserError('--workdir and --out are required, e.g. --workdir=runs/shakespeare '
                    '--out=runs/shakespeare-int8 --bits=8')


def main(argv: list[str]) -> int:
  """`python -m research.compress quantize ...`; argv[0] is the program name. Returns the exit
  status: 0, or 2 with one line on stderr."""
  cli.quiet_backends()
  define_flags()
  if any(arg in cli.HELP_ARGS or arg.startswith('--help=') for arg in argv[1:]):
    sys.stdout.write(_help())
    return 0
  try:
    _parse(argv)
    cli.quiet_logs()
    result = quantize_workdir(FLAGS.workdir, FLAGS.out, bits=FLAGS.bits,
                              group_size=FLAGS.group_size, asymmetric=FLAGS.asymmetric,
                              layers=FLAGS.layers, step=FLAGS.step)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if jax.process_index() == 0:
    print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
