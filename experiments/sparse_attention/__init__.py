"""Sparse and sliding-window attention: cost vs length and quality (issue 7).

Modules: `cost` (timing and memory of attention cases), `quality` (variants, the synthetic
long-range retrieval probe), `plot` (PNGs) and `run` (the command; configs in
configs/experiments/sparse_attention/). Nothing is imported here.
"""
