r"""A deterministic C4-shaped corpus for tests and benchmarks: gzipped JSON lines of documents.

  python benchmarks/make_corpus.py --gb=0.25 --seed=0 --out=/tmp/corpus_250mb
  # -> /tmp/corpus_250mb/part-00000.jsonl.gz ... ({"text", "url", "timestamp"} rows)

Words are drawn from a Zipf-Mandelbrot law (rank r with probability proportional to
1 / (r + 2.7), over a 50,000-word vocabulary of made-up words whose length grows with rank, as in
natural text). Document lengths are log-normal (median 300 words, sigma 1.0, clipped to
[20, 20,000] words): many short pages and a long tail, like web text. Documents have sentences
and paragraphs (line breaks). `--gb` counts uncompressed text bytes; the same (gb, seed) always
gives the same files, byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import string

import numpy as np

VOCAB_WORDS = 50_000
ZIPF_OFFSET = 2.7
MEDIAN_WORDS, LENGTH_SIGMA, MIN_WORDS, MAX_WORDS = 300, 1.0, 20, 20_000
WORDS_PER_SENTENCE, SENTENCES_PER_PARAGRAPH = 18, 5
PART_BYTES = 64 * 2**20  # uncompressed text per output file


def vocabulary(rng: np.random.Generator) -> np.ndarray:
  """Made-up lowercase words, shorter for frequent ranks (about 2 letters at the top)."""
  ranks = np.arange(VOCAB_WORDS)
  lengths = np.clip(np.round(2 + np.log1p(ranks) * 0.9 + rng.normal(0, 1, VOCAB_WORDS)), 1, 14)
  letters = np.array(list(string.ascii_lowercase))
  words, seen = [], set()
  for n in lengths.astype(int):
    while True:
      word = ''.join(rng.choice(letters, n))
      if word not in seen:
        break
      n += 1
    seen.add(word)
    words.append(word)
  return np.array(words, dtype=object)


def documents(seed: int):
  """An endless deterministic stream of document texts."""
  rng = np.random.default_rng(seed)
  words = vocabulary(rng)
  p = 1.0 / (np.arange(VOCAB_WORDS) + ZIPF_OFFSET)
  p /= p.sum()
  while True:
    lengths = np.clip(rng.lognormal(np.log(MEDIAN_WORDS), LENGTH_SIGMA, 256), MIN_WORDS,
                      MAX_WORDS).astype(int)
    ids = rng.choice(VOCAB_WORDS, size=int(lengths.sum()), p=p)
    begin = 0
    for n in lengths:
      yield _text(words[ids[begin:begin + n]])
      begin += n


def _text(tokens: np.ndarray) -> str:
  sentences = [' '.join(tokens[i:i + WORDS_PER_SENTENCE]).capitalize() + '.'
               for i in range(0, len(tokens), WORDS_PER_SENTENCE)]
  return '\n'.join(' '.join(sentences[i:i + SENTENCES_PER_PARAGRAPH])
                   for i in range(0, len(sentences), SENTENCES_PER_PARAGRAPH))


def make_corpus(out: str, gb: float, seed: int = 0) -> list[str]:
  """Writes `gb` GB (10^9 bytes) of documents as part-NNNNN.jsonl.gz files; returns the paths."""
  os.makedirs(out, exist_ok=True)
  total, target, paths, part, number = 0, int(gb * 1e9), [], None, 0
  for index, text in enumerate(documents(seed)):
    if total >= target:
      break
    if part is None or part_bytes >= PART_BYTES:
      if part is not None:
        part.close()
      paths.append(os.path.join(out, f'part-{len(paths):05d}.jsonl.gz'))
      # mtime=0: the same bytes on every run.
      part = gzip.GzipFile(paths[-1], 'wb', compresslevel=1, mtime=0)
      part_bytes = 0
    row = {'text': text, 'url': f'https://example.com/{seed}/{index}',
           'timestamp': f'2019-04-{1 + index % 28:02d}T12:00:00Z'}
    part.write((json.dumps(row) + '\n').encode())
    size = len(text.encode())
    total += size
    part_bytes += size
    number += 1
  part.close()
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--gb', type=float, required=True, help='uncompressed text, in 10^9 bytes')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', required=True, help='output directory')
  args = parser.parse_args()
  paths = make_corpus(args.out, args.gb, args.seed)
  print(json.dumps({'files': len(paths), 'out': args.out, 'gb': args.gb, 'seed': args.seed}))


if __name__ == '__main__':
  main()
