"""Decoding: greedy, temperature, top-k and nucleus sampling with a KV cache."""

from __future__ import annotations

from research.inference.decoding import (check_length, check_sampling_args, check_stop,
                                         cut_at_eos, cut_at_stop, cut_ids_at_stop, generate,
                                         generate_rows, generate_with_logits, init_cache,
                                         left_pad, prompt_bucket, sample_logits)

__all__ = ['check_length', 'check_sampling_args', 'check_stop', 'cut_at_eos', 'cut_at_stop',
           'cut_ids_at_stop', 'generate', 'generate_rows', 'generate_with_logits', 'init_cache',
           'left_pad', 'prompt_bucket', 'sample_logits']
