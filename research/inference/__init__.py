"""Decoding: greedy, temperature, top-k and nucleus sampling with a KV cache."""

from __future__ import annotations

from research.inference.decoding import (check_length, check_sampling_args, generate,
                                         generate_with_logits, init_cache, sample_logits)

__all__ = ['check_length', 'check_sampling_args', 'generate', 'generate_with_logits',
           'init_cache', 'sample_logits']
