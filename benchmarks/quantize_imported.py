"""Post-training weight quantization of an imported transformers model: memory and fidelity.

  python benchmarks/quantize_imported.py [--batches=4] [--seq_len=256]

Nothing can be downloaded here, so the imported model is a randomly initialised GPT-2 124M
(`transformers.GPT2LMHeadModel(GPT2Config())` after torch.manual_seed(0)): the real matrix
shapes (768 x 2304, 768 x 3072, ...), biases and tied embeddings of the family, saved with
save_pretrained and imported by research.convert.import_hf like any local checkpoint. It is then
quantized by research.compress.quantize_workdir (int8 per output channel, int4 in groups of 32,
attention, MLP and the tied head left float: Qwix quantizes the einsums of attention and MLP)
and scored on the same token batches (ids drawn from a fixed seed: a random model has no text to
prefer) against the float import:
  perplexity   exp of the mean next-token loss (near the vocabulary size for a random model:
               what matters is how little quantization moves it);
  kl           mean KL(float || quantized) of the next-token distributions, nats;
  top1_agree   fraction of positions whose argmax token is the float model's;
  param_bytes  bytes of the restored parameters (int4 counted at half a byte).
One JSON line per case is appended to benchmarks/results/quantize_imported_cpu.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CASES = (('float32', None, 0), ('int8-channel', 8, 0), ('int4-g32', 4, 32))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batches', type=int, default=4)
  p.add_argument('--batch_size', type=int, default=4)
  p.add_argument('--seq_len', type=int, default=256)
  p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results',
                                               'quantize_imported_cpu.jsonl'))
  return p.parse_args(argv)


def import_random_gpt2(workdir: str) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from research import convert  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
  with tempfile.TemporaryDirectory() as hf_dir:
    model.save_pretrained(hf_dir)
    convert.import_hf(hf_dir, workdir, overrides=[('model.dtype', 'float32')])


def log_probs(workdir: str, batches: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
  """Per batch, float32 log-probabilities [B, T - 1, V] of each next token (research.load's
  logits: a quantized workdir dequantizes in its matmuls); and the parameter bytes."""
  import research  # pylint: disable=g-import-not-at-top
  from research.compress import quantize  # pylint: disable=g-import-not-at-top
  lm = research.load(workdir)
  out = []
  for b in batches:
    logits = np.asarray(lm(b), np.float64)[:, :-1]
    logits -= logits.max(-1, keepdims=True)
    out.append((logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32))
  return out, quantize.tree_bytes(lm.params)


def main(argv=None) -> None:
  args = parse_args(argv)
  from research.compress import quantize  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 50257, (args.batch_size, args.seq_len), dtype=np.int32)
             for _ in range(args.batches)]
  with tempfile.TemporaryDirectory() as root:
    base = os.path.join(root, 'float32')
    import_random_gpt2(base)
    reference, _ = log_probs(base, batches)
    for name, bits, group in CASES:
      directory = base
      if bits is not None:
        directory = os.path.join(root, name)
        quantize.quantize_workdir(base, directory, bits=bits, group_size=group)
      logp, param_bytes = log_probs(directory, batches)
      nll = float(np.mean([-np.take_along_axis(lp, b[:, 1:, None], -1).mean()
                           for lp, b in zip(logp, batches)]))
      kl = float(np.mean([(np.exp(r) * (r - q)).sum(-1).mean() for r, q in zip(reference, logp)]))
      agree = float(np.mean([(r.argmax(-1) == q.argmax(-1)).mean()
                             for r, q in zip(reference, logp)]))
      record = {'case': name, 'model': 'GPT-2 124M, random init (torch seed 0), imported',
                'bits': bits or 32, 'group_size': group, 'perplexity': float(np.exp(nll)),
                'kl': kl, 'top1_agree': agree, 'param_bytes': int(param_bytes),
                'tokens': args.batches * args.batch_size * (args.seq_len - 1),
                'date': datetime.date.today().isoformat(), 'machine': platform.machine(),
                'command': 'python benchmarks/quantize_imported.py'}
      print(json.dumps(record), flush=True)
      with open(args.out, 'a') as f:
        f.write(json.dumps(record) + '\n')


if __name__ == '__main__':
  main()
