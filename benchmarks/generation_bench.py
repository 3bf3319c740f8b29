r"""Batched generation benchmark: lmforge's KV-cache decoder on prompts of mixed lengths.

  python benchmarks/generation_bench.py                 # CPU: lmforge, transformers, the old path
  python benchmarks/generation_bench.py --cases=lmforge,transformers --prompts=16
  python benchmarks/generation_bench.py --gpu           # decode ms/token, gpt2_small, batch 1, 64

CPU mode (default): one randomly initialised GPT-2 124M (`transformers.GPT2LMHeadModel(
GPT2Config())` after torch.manual_seed(0)), imported into lmforge with research.models.hf.convert
(float32), continues 64 prompts of 16-200 seeded random token ids by 64 greedy tokens each
(no early stop: no eos), as one batch:

  lmforge       research.inference.decoding.generate_rows: left-padded into a 32-token bucket,
                one compiled program (prefill + while loop over the KV cache)
  transformers  GPT2LMHeadModel.generate on the left-padded batch with its attention mask
                (torch threads = cores, SDPA attention, its dynamic KV cache)
  old_path      the evaluation path lmforge had before the batched KV cache (research/evaluation/
                generate.py at commit 5f98a8f, copied below as `old_full_buffer_greedy`): the
                prompts right-padded into one buffer of the longest prompt + 64 tokens rounded
                up to 32, and every step runs the whole buffer through the model without a
                cache. Each of its steps costs the same, so it is timed over the first
                --old_steps steps of that same buffer and reported per generated token.

Each case prints one JSON line: tokens_per_sec (new tokens, all rows, per second of the timed
call), seconds, and the untimed call before it (lmforge: first_call_s, compilation plus one
generation; transformers: warmup_s, a 2-row call; old_path: compile_s, compilation only);
transformers also prints the fraction of rows whose tokens equal lmforge's
(`same_tokens_as_lmforge`).

GPU mode (--gpu): configs/decoder/gpt2_small.py (bfloat16, randomly initialised) decodes
--gpu_new_tokens tokens after --gpu_prompt_len-token prompts at batch 1 and 64; decode_ms_per_token
is the time of one decode step (one token for every row) with the prefill subtracted: (t(N) -
t(1)) / (N - 1), each the best of --repeats timed calls after a compiling one. --allow_cpu runs
the same code on CPU (a smoke test of the script, e.g. --config=configs/decoder/shakespeare.py).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CASES = ('lmforge', 'transformers', 'old_path')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--cases', default=','.join(CASES), help=f'CPU mode: comma list of {CASES}')
  p.add_argument('--prompts', type=int, default=64, help='prompts, decoded as one batch')
  p.add_argument('--min_len', type=int, default=16)
  p.add_argument('--max_len', type=int, default=200)
  p.add_argument('--new_tokens', type=int, default=64)
  p.add_argument('--old_steps', type=int, default=4, help='old_path: timed steps')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--gpu', action='store_true', help='decode latency of --config on a GPU')
  p.add_argument('--allow_cpu', action='store_true', help='--gpu mode on any backend (smoke)')
  p.add_argument('--config', default=os.path.join(REPO, 'configs/decoder/gpt2_small.py'))
  p.add_argument('--batch_sizes', default='1,64', help='--gpu mode')
  p.add_argument('--gpu_prompt_len', type=int, default=128)
  p.add_argument('--gpu_new_tokens', type=int, default=128)
  p.add_argument('--repeats', type=int, default=3, help='--gpu mode: timed calls, best kept')
  return p.parse_args(argv)


def emit(record: dict) -> None:
  record['date'] = datetime.date.today().isoformat()
  print(json.dumps(record), flush=True)


def load_avg() -> float:
  return round(os.getloadavg()[0], 2)


# ----------------------------------------------------------------------------- CPU mode


def random_gpt2(seed: int):
  """(transformers model, lmforge config, lmforge params) of one randomly initialised GPT-2."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from research.models import hf  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  reference = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(tmp)
    config, params = hf.convert(tmp)
  config.model.dtype = 'float32'
  return reference, config, params


def make_prompts(args) -> list[list[int]]:
  rng = np.random.default_rng(args.seed)
  lengths = rng.integers(args.min_len, args.max_len + 1, args.prompts)
  return [rng.integers(0, 50_257, n).tolist() for n in lengths]


def bench_lmforge(args, config, params, prompts) -> tuple[dict, np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top
  from research import models  # pylint: disable=g-import-not-at-top
  from research.inference import decoding  # pylint: disable=g-import-not-at-top
  model = models.build_model(config)
  params = jax.device_put(params)
  run = functools.partial(decoding.generate_rows, model, params, prompts, jax.random.key(0),
                          max_new_tokens=args.new_tokens, batch_size=len(prompts),
                          temperature=0.0)
  start = time.perf_counter()
  run()  # compiles, then decodes
  first_call_s = time.perf_counter() - start
  start = time.perf_counter()
  tokens = np.asarray(run())
  seconds = time.perf_counter() - start
  bucket = decoding.prompt_bucket(max(len(p) for p in prompts))
  return dict(case='lmforge', path='decoding.generate_rows (KV cache, left-padded batch)',
              prompt_bucket=bucket, cache_slots=bucket + args.new_tokens - 1,
              dtype='float32', seconds=seconds, first_call_s=first_call_s,
              tokens_per_sec=tokens.size / seconds, jax=jax.__version__), tokens


def bench_transformers(args, reference, prompts) -> tuple[dict, np.ndarray]:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  width = max(len(p) for p in prompts)
  tokens_BP = np.zeros((len(prompts), width), np.int64)
  mask_BP = np.zeros((len(prompts), width), np.int64)
  for b, prompt in enumerate(prompts):
    tokens_BP[b, width - len(prompt):] = prompt
    mask_BP[b, width - len(prompt):] = 1
  reference.generation_config.eos_token_id = None  # no early stop, as lmforge's rows

  def run(b):
    with torch.no_grad():
      return reference.generate(torch.tensor(tokens_BP[:b]), attention_mask=torch.tensor(
          mask_BP[:b]), do_sample=False, max_new_tokens=args.new_tokens,
                                min_new_tokens=args.new_tokens, pad_token_id=0)

  start = time.perf_counter()
  run(2)  # torch's lazy initialisation
  warmup_s = time.perf_counter() - start
  start = time.perf_counter()
  out = run(len(prompts)).numpy()[:, width:]
  seconds = time.perf_counter() - start
  attn = reference.config._attn_implementation  # pylint: disable=protected-access
  return dict(case='transformers', path='GPT2LMHeadModel.generate (left padding, DynamicCache)',
              attn_implementation=attn,
              torch_threads=torch.get_num_threads(), dtype='float32', seconds=seconds,
              warmup_s=warmup_s, tokens_per_sec=out.size / seconds, torch=torch.__version__,
              transformers=transformers.__version__), out


def old_full_buffer_greedy(model, max_new_tokens: int, eos_id: int):
  """The evaluation path before the batched KV cache, as research/evaluation/generate.py had it
  at commit 5f98a8f (`_compiled_greedy`), kept here for this comparison only: jit(params,
  model_state, tokens_BL, lengths_B) -> tokens_BL with each row's continuation after its
  prompt; every step runs the whole right-padded buffer through the model, no cache."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = max_new_tokens

  def run(params, model_state, tokens_BL, lengths_B):
    variables = {'params': params, **model_state}
    b = tokens_BL.shape[0]
    rows_B = jnp.arange(b)

    def cond(state):
      i, _, done_B = state
      return (i < n) & ~jnp.all(done_B)

    def body(state):
      i, tokens_BL, done_B = state
      last_B = lengths_B + i - 1  # the position whose logits predict the next token
      x_BLD = model.apply(variables, tokens_BL, method='hidden')
      logits_BV = model.apply(variables, x_BLD[rows_B, last_B][:, None], method='logits')[:, 0]
      token_B = jnp.where(done_B, eos_id, jnp.argmax(logits_BV, axis=-1).astype(jnp.int32))
      tokens_BL = tokens_BL.at[rows_B, last_B + 1].set(token_B)
      return i + 1, tokens_BL, done_B | (token_B == eos_id)

    _, tokens_BL, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens_BL,
                                                      jnp.zeros((b,), bool)))
    return tokens_BL

  return jax.jit(run)


def bench_old_path(args, config, params, prompts) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from research import models  # pylint: disable=g-import-not-at-top
  model = models.build_model(config)
  params = jax.device_put(params)
  needed = max(len(p) for p in prompts) + args.new_tokens  # the buffer for all 64 tokens
  width = max(needed, min(-(-needed // 32) * 32, config.model.max_len))
  tokens_BL = np.zeros((len(prompts), width), np.int32)
  for b, prompt in enumerate(prompts):
    tokens_BL[b, :len(prompt)] = prompt
  lengths_B = np.asarray([len(p) for p in prompts], np.int32)
  fn = old_full_buffer_greedy(model, args.old_steps, eos_id=-1)
  start = time.perf_counter()
  compiled = fn.lower(params, {}, tokens_BL, lengths_B).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(compiled(params, {}, tokens_BL, lengths_B))
  seconds = time.perf_counter() - start
  new = len(prompts) * args.old_steps
  return dict(case='old_path', path='full right-padded buffer per step, no cache (5f98a8f)',
              buffer=[len(prompts), width], timed_steps=args.old_steps, dtype='float32',
              seconds=seconds, compile_s=compile_s, tokens_per_sec=new / seconds)


def run_cpu(args) -> None:
  cases = [c for c in args.cases.split(',') if c]
  unknown = set(cases) - set(CASES)
  if unknown:
    raise SystemExit(f'--cases: unknown {sorted(unknown)}; choose from {CASES}')
  reference, config, params = random_gpt2(args.seed)
  prompts = make_prompts(args)
  common = dict(bench='generation', device=f'cpu, {os.cpu_count()} cores', model='gpt2 124M '
                '(random init, torch seed %d)' % args.seed, prompts=len(prompts),
                prompt_lens=[min(map(len, prompts)), max(map(len, prompts))],
                new_tokens=args.new_tokens, batch=len(prompts), greedy=True)
  ours = None
  if 'lmforge' in cases:
    record, ours = bench_lmforge(args, config, params, prompts)
    emit({**common, **record, 'load_avg_1m': load_avg()})
  if 'transformers' in cases:
    record, theirs = bench_transformers(args, reference, prompts)
    if ours is not None:
      record['same_tokens_as_lmforge'] = float(np.mean(np.all(theirs == ours, axis=1)))
    emit({**common, **record, 'load_avg_1m': load_avg()})
  if 'old_path' in cases:
    emit({**common, **bench_old_path(args, config, params, prompts),
          'load_avg_1m': load_avg()})


# ----------------------------------------------------------------------------- GPU mode


def run_gpu(args) -> None:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from research import config_lib, models  # pylint: disable=g-import-not-at-top
  from research.inference import decoding  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  if backend != 'gpu' and not args.allow_cpu:
    raise SystemExit(f'--gpu: the JAX backend is {backend!r}, not gpu (install jax[cuda12]; '
                     '--allow_cpu runs the same code here as a smoke test)')
  config = config_lib.load_config(args.config)
  model = models.build_model(config)
  init = lambda rng: nn.meta.unbox(model.init(rng, jnp.zeros((1, 8), jnp.int32))['params'])
  params = jax.jit(init)(jax.random.key(0))
  rng = np.random.default_rng(args.seed)
  vocab = config.data.vocab_size

  def best_seconds(prompt_BP, new_tokens):
    run = lambda: jax.block_until_ready(decoding.generate(
        model, params, prompt_BP, jax.random.key(0), max_new_tokens=new_tokens,
        temperature=0.0))
    run()  # compiles
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    return min(times)

  for batch in (int(b) for b in args.batch_sizes.split(',')):
    prompt_BP = rng.integers(0, vocab, (batch, args.gpu_prompt_len)).astype(np.int32)
    prefill = best_seconds(prompt_BP, 1)
    total = best_seconds(prompt_BP, args.gpu_new_tokens)
    step = (total - prefill) / (args.gpu_new_tokens - 1)
    emit(dict(bench='generation_decode', device=str(jax.devices()[0].device_kind),
              backend=backend, config=os.path.relpath(args.config, REPO),
              dtype=str(jnp.dtype(model.cfg.dtype)), batch=batch,
              prompt_len=args.gpu_prompt_len, new_tokens=args.gpu_new_tokens,
              prefill_ms=prefill * 1e3, decode_ms_per_token=step * 1e3,
              tokens_per_sec=batch / step, jax=jax.__version__))


def main(argv=None):
  args = parse_args(argv)
  if args.gpu:
    run_gpu(args)
  else:
    run_cpu(args)


if __name__ == '__main__':
  main()
