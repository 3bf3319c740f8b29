"""Recurrent sequence mixers against attention: cost, quality, recall (MQAR) and decoding.

Modules: `cost` (the chunkwise kernel's forward + backward timed beside sparse_attention's
attention cases), `mqar` (multi-query associative recall: a dataset and its objective),
`decode` (tokens/s and cache bytes of research.inference.decoding), `plot` (PNGs) and `run`
(the command; configs in configs/experiments/sequence_mixers/). Nothing is imported here.
"""
