r"""Data-path benchmarks: preparation throughput and peak memory, loader start-up and tokens/s.

  # preparation (Beam, DirectRunner): MB/s of input text and the peak resident memory of the
  # whole process tree (the pipeline's driver and its worker processes), sampled every 0.1 s
  python benchmarks/data_bench.py prepare --source='jsonl:/tmp/corpus_250mb/*.jsonl.gz' \
      --out=/tmp/prepared_250mb --workers=2 [--vocab_size=32768 | --tokenizer=PATH]
  # loading (Grain): seconds to open the prepared corpus, then host batches per second
  python benchmarks/data_bench.py loader --prepared=/tmp/prepared_250mb \
      --objective=causal_lm --seq_len=1024 --batch_size=64 --steps=50 [--workers=2]

Each prints one JSON line. Make corpora with benchmarks/make_corpus.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_rss(process) -> int:
  import psutil  # pylint: disable=g-import-not-at-top

  total = 0
  for p in [process, *process.children(recursive=True)]:
    try:
      total += p.memory_info().rss
    except psutil.Error:
      pass
  return total


def bench_prepare(args) -> dict:
  import psutil  # pylint: disable=g-import-not-at-top

  command = [sys.executable, '-m', 'research.data.prepare', f'--source={args.source}',
             f'--out={args.out}', f'--workers={args.workers}']
  command += [f'--tokenizer={args.tokenizer}'] if args.tokenizer else [
      f'--vocab_size={args.vocab_size}']
  start = time.perf_counter()
  child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  process, peak = psutil.Process(child.pid), 0
  while child.poll() is None:
    peak = max(peak, _tree_rss(process))
    time.sleep(0.1)
  seconds = time.perf_counter() - start
  out, err = child.communicate()
  if child.returncode:
    raise SystemExit(err[-3000:])
  splits = json.loads(out.strip().splitlines()[-1])
  text_bytes = sum(s['bytes'] for s in splits.values())
  return {'bench': 'prepare', 'source': args.source, 'workers': args.workers,
          'tokenizer': 'given' if args.tokenizer else f'trained, {args.vocab_size} pieces',
          'input_mb': round(text_bytes / 1e6, 1), 'seconds': round(seconds, 1),
          'mb_per_s': round(text_bytes / 1e6 / seconds, 2),
          'tokens': sum(s['tokens'] for s in splits.values()),
          'peak_rss_mb': round(peak / 2**20, 1)}


def bench_loader(args) -> dict:
  sys.path.insert(0, REPO)
  from research import config_lib  # pylint: disable=g-import-not-at-top
  from research.data import loader, pipeline, prepared  # pylint: disable=g-import-not-at-top

  manifest = prepared.read_manifest(args.prepared)
  c = config_lib.base_config()
  c.data.source = f'prepared:{args.prepared}'
  c.data.vocab_size = manifest['vocab_size']
  c.data.seq_len = args.seq_len
  c.train.batch_size = args.batch_size
  c.objective.name = args.objective
  c.model.family = 'encoder_decoder' if args.objective == 'span_corruption' else 'decoder'
  start = time.perf_counter()
  dataset = pipeline.load_dataset(c.data)
  startup = time.perf_counter() - start
  builder = loader.BatchBuilder(dataset=dataset, config=c)
  batches = loader.train_batches(builder, 0, args.steps + 1, workers=args.workers, buffer=4)
  next(batches)  # the first batch includes the workers' start-up
  start = time.perf_counter()
  for _ in range(args.steps):
    next(batches)
  seconds = time.perf_counter() - start
  tokens = args.steps * args.batch_size * args.seq_len
  return {'bench': 'loader', 'prepared': args.prepared, 'objective': args.objective,
          'workers': args.workers, 'seq_len': args.seq_len, 'batch_size': args.batch_size,
          'corpus_tokens': dataset.train.num_tokens, 'startup_s': round(startup, 3),
          'tokens_per_s': round(tokens / seconds)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='bench', required=True)
  p = sub.add_parser('prepare')
  p.add_argument('--source', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--workers', type=int, default=1)
  p.add_argument('--vocab_size', type=int, default=32768)
  p.add_argument('--tokenizer', default='')
  p = sub.add_parser('loader')
  p.add_argument('--prepared', required=True)
  p.add_argument('--objective', default='causal_lm')
  p.add_argument('--seq_len', type=int, default=1024)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--steps', type=int, default=50)
  p.add_argument('--workers', type=int, default=0)
  args = parser.parse_args()
  result = bench_prepare(args) if args.bench == 'prepare' else bench_loader(args)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
