"""Smaller and cheaper models from a trained workdir: quantization, pruning (and distillation,
which is a fine-tuning config: configs/finetune/distill.py).

  python -m research.compress quantize --workdir=W --out=W2 --bits=8 [...]
  python -m research.compress prune --workdir=W --out=W2 --method=magnitude --sparsity=0.5 [...]

Each subcommand writes a new workdir that research.train / sample / evaluate read like any
other; `python -m research.compress SUBCOMMAND --help` lists its flags.
"""
