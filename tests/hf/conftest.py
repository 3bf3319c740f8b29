"""Torch on one thread: the reference models are tiny, and on a shared machine torch's thread pool
spends more time waiting for cores than multiplying (10x slower generation on 2 busy cores)."""

try:
  import torch
except ImportError:  # the tests here skip themselves
  torch = None

if torch is not None:
  torch.set_num_threads(1)
