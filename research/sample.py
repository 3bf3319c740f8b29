"""Sample from a trained run.

  python -m research.sample --workdir=runs/shakespeare --prompt="ROMEO:"

What "sample" means follows the run's model family:
  decoder          the prompt continued (greedy, temperature, top-k, top-p; KV cache);
  encoder          fill-mask: the top candidates with probabilities at every [MASK] of the prompt
                   (--top_k candidates, 5 when 0);
  encoder_decoder  the prompt as encoder input, the target decoded by sampling or, with
                   --beam_size > 1, length-normalised beam search (--length_penalty).

An option that does not apply to the run's family is an error (exit 2), not a silent no-op:
--beam_size/--length_penalty on a decoder, sampling options on an encoder's fill-mask or on
beam search, a [MASK] prompt on a decoder or encoder-decoder, a span-corruption (T5) prompt
without a sentinel such as <extra_id_0>.

Everything comes from the workdir that research.train wrote, through research.load: config.json,
the tokenizer and the latest (or --step) checkpoint. Flags: --max_new_tokens=200
--temperature=0.8 (0: greedy) --top_k=0 (off) --top_p=0.95 (1: off) --seed=0 --num_samples=1.
Each sample is printed as prompt + continuation, stopping at the end-of-document token.

In a notebook:  texts = sample('runs/shakespeare', 'ROMEO:', max_new_tokens=100, temperature=0.8,
top_k=0, top_p=0.95, seed=0)
"""

from __future__ import annotations

import re
import sys
from typing import Sequence

from absl import flags
import jax
import numpy as np

from research import cli, config_lib, loading
from research.errors import UserError, exit_on_user_error
from research.inference import decoding
from research.parallel import distributed

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags. Defined only when run as a command, so that importing this module next
  to another entry point (research.train also has --workdir) never defines a flag twice."""
  defaults = config_lib.base_config().sample
  flags.DEFINE_string('workdir', None, 'a workdir written by research.train')
  flags.DEFINE_string('prompt', defaults.prompt, 'text to continue (not empty)')
  flags.DEFINE_integer('max_new_tokens', defaults.max_new_tokens, 'tokens to generate per sample')
  flags.DEFINE_float('temperature', defaults.temperature, '0 is greedy decoding')
  flags.DEFINE_integer('top_k', defaults.top_k, 'keep the k most likely tokens (0: off)')
  flags.DEFINE_float('top_p', defaults.top_p, 'nucleus sampling mass (1: off)')
  flags.DEFINE_integer('seed', 0, 'sampling seed')
  flags.DEFINE_integer('num_samples', 1, 'samples of the prompt, drawn as one batch')
  flags.DEFINE_integer('step', None, 'checkpoint step to load (default: the latest)')
  flags.DEFINE_integer('beam_size', 1, 'encoder-decoder: beam search width (1: sampling)')
  flags.DEFINE_float('length_penalty', 0.6, 'encoder-decoder beam search: GNMT alpha')


# Flags that mean something only for some families (the others: workdir, prompt, step, apply to
# all). `top_k` is the number of candidates in fill-mask.
_APPLIES = {
    'decoder': {'max_new_tokens', 'temperature', 'top_k', 'top_p', 'seed', 'num_samples'},
    'encoder': {'top_k'},
    'encoder_decoder': {'max_new_tokens', 'temperature', 'top_k', 'top_p', 'seed', 'num_samples',
                        'beam_size', 'length_penalty'},
}
_SAMPLING = ('temperature', 'top_k', 'top_p', 'seed')
_WHAT = {'decoder': 'continues the prompt', 'encoder': 'fills each [MASK] (fill-mask)',
         'encoder_decoder': 'decodes a target for the prompt'}


def check_applicable(config, prompt: str, given: set[str], *, beam_size: int = 1) -> None:
  """Raises UserError for an option or prompt that the run's family would silently ignore.

  `given`: the option names the user set explicitly (flags present on the command line).
  """
  family = config.model.family
  objective = config.objective.name
  unused = sorted(given - _APPLIES[family] - {'workdir', 'prompt', 'step'})
  if family == 'encoder_decoder' and beam_size > 1:
    unused += [f for f in _SAMPLING if f in given]  # beam search is deterministic
  elif family == 'encoder_decoder':
    unused += ['length_penalty'] if 'length_penalty' in given else []
  if unused:
    raise UserError(f'--{", --".join(unused)}: not used by this {family} run ({objective}), '
                    f'which {_WHAT[family]}'
                    + (' with beam search' if family == 'encoder_decoder' and beam_size > 1 else '')
                    + '; drop the option')
  if family != 'encoder' and '[MASK]' in prompt:
    sentinel = ('; span corruption marks a gap with a sentinel: <extra_id_0>'
                if objective == 'span_corruption' else '')
    raise UserError(f'--prompt has [MASK], but this {family} run ({objective}) does not fill '
                    f'masks: fill-mask needs an encoder (MLM) run{sentinel}')
  if objective == 'span_corruption' and '<extra_id_' not in prompt:
    raise UserError('--prompt has no sentinel: this run was trained on span corruption and '
                    'predicts the text of each gap, so mark one, e.g. '
                    '--prompt="To be, or not to <extra_id_0>, that is the question"')


_SENTINEL = re.compile(r'<extra_id_(\d+)>')


def gap_fillers(target: str, prompt: str) -> str:
  """A span-corruption target as the text of the prompt's gaps, on one line.

  The target lists each gap's sentinel and its text ('<extra_id_0> yonder <extra_id_1> ...');
  decoding runs on to max_new_tokens, so the text is cut where the first sentinel the prompt
  does not have begins (T5's own post-processing). Line breaks and tabs are shown as \\n and
  \\t: a gap that the model fills with line breaks (a briefly trained one does) would otherwise
  print as blank lines.
  """
  gaps = [int(i) for i in _SENTINEL.findall(prompt)]
  end = f'<extra_id_{max(gaps) + 1 if gaps else 0}>'
  target = target.split(end, 1)[0]
  return target.replace('\n', '\\n').replace('\t', '\\t').strip()


def _continuation_ids(tokens_N: np.ndarray, eos_id: int) -> list[int]:
  ids = tokens_N.tolist()
  return ids[:ids.index(eos_id)] if eos_id in ids else ids


def _fill_mask(lm, prompt: str, top_k: int) -> list[str]:
  from research.inference import fill_mask  # pylint: disable=g-import-not-at-top
  lines = []
  for position, candidates in fill_mask.fill_mask(lm.model, lm.params, lm.require_tokenizer(),
                                                  prompt, top_k=top_k or 5,
                                                  model_state=lm.model_state):
    shown = ', '.join(f'{piece!r} {p:.3f}' for piece, p in candidates)
    lines.append(f'[MASK] at piece {position}: {shown}')
  return ['\n'.join([prompt] + lines)]


def _beams(lm, prompt: str, *, beam_size: int, num_samples: int, max_new_tokens: int,
           length_penalty: float) -> list[str]:
  """The `num_samples` best of `beam_size` beams (lm.generate returns only the best)."""
  from research.inference import seq2seq  # pylint: disable=g-import-not-at-top
  tokenizer = lm.require_tokenizer()
  encoder_BS = np.asarray([tokenizer.encode(prompt) + [tokenizer.eos_id]], np.int32)
  tokens_BKN, _ = seq2seq.beam_search(lm.model, lm.params, encoder_BS, beam_size=beam_size,
                                      max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                                      length_penalty=length_penalty, model_state=lm.model_state)
  return [tokenizer.decode(_continuation_ids(row, tokenizer.eos_id))
          for row in np.asarray(tokens_BKN)[0, :num_samples]]


def sample(workdir: str, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int,
           top_p: float, seed: int, num_samples: int = 1, step: int | None = None,
           beam_size: int = 1, length_penalty: float = 0.6,
           given: Sequence[str] = ()) -> list[str]:
  """`num_samples` continuations of `prompt`, each returned as prompt + continuation.

  `given` names the options the caller set on purpose (the command's flags that are present):
  those that do not apply to the run's family are errors. Beam search on a decoder is always
  one, whether named or not.

  Raises:
    UserError: no run in `workdir`, an empty prompt, a prompt (plus continuation) longer than a
      learned/sinusoidal position table, invalid sampling settings, or options that do not
      apply to the run (check_applicable).
  """
  if not prompt:
    raise UserError('--prompt is empty: give some text to continue, e.g. --prompt="ROMEO:"')
  if num_samples <= 0:
    raise UserError(f'--num_samples={num_samples}: must be a positive integer')
  decoding.check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
  config = loading.load_config(workdir)  # the option checks come before the slow restore
  given = set(given) | ({'beam_size'} if beam_size > 1 else set())
  check_applicable(config, prompt, given, beam_size=beam_size)
  family = config.model.family
  if family == 'encoder_decoder' and beam_size > 1 and num_samples > beam_size:
    raise UserError(f'--num_samples={num_samples} exceeds --beam_size={beam_size}')
  lm = loading.load(workdir, step=step)
  if family == 'encoder':
    return _fill_mask(lm, prompt, top_k)
  if family == 'encoder_decoder' and beam_size > 1:
    targets = _beams(lm, prompt, beam_size=beam_size, num_samples=num_samples,
                     max_new_tokens=max_new_tokens, length_penalty=length_penalty)
  else:  # num_samples copies of the prompt, one batch: each row draws its own sample
    targets = lm.generate([prompt] * num_samples, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
  if family == 'decoder':
    return [prompt + t for t in targets]
  if config.objective.name == 'span_corruption':
    targets = [gap_fillers(t, prompt) for t in targets]
  return [f'{prompt} => {t}' for t in targets]


_OPTIONS = ('max_new_tokens', 'temperature', 'top_k', 'top_p', 'seed', 'num_samples',
            'beam_size', 'length_penalty')


@exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {argv[1:]}: flags are written --name=value')
  cli.quiet_logs()
  distributed.initialize_from_flags()  # before anything touches a JAX backend
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/shakespeare')
  given = [name for name in _OPTIONS if FLAGS[name].present]
  texts = sample(FLAGS.workdir, FLAGS.prompt, max_new_tokens=FLAGS.max_new_tokens,
                 temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
                 seed=FLAGS.seed, num_samples=FLAGS.num_samples, step=FLAGS.step,
                 beam_size=FLAGS.beam_size, length_penalty=FLAGS.length_penalty, given=given)
  if jax.process_index() != 0:
    return
  for i, text in enumerate(texts):
    if len(texts) > 1:
      print(f'--- sample {i + 1} of {len(texts)} ---')
    print(text)
  sys.stdout.flush()


if __name__ == '__main__':
  cli.quiet_backends()  # before JAX starts: no TPU probing on a machine without one
  define_flags()
  cli.run_plain(main)
