"""Mixture-of-experts decoder on Shakespeare: configs/decoder/shakespeare.py with E = 8 top-2
experts in every layer, at the dense model's active parameters.

Train and sample:
  python -m research.train --config=configs/decoder/shakespeare_moe.py \
      --workdir=runs/shakespeare_moe
  python -m research.sample --workdir=runs/shakespeare_moe --prompt="ROMEO:"
Benchmark the dispatch paths against the dense model of the same active parameters (one JSON
line each; BENCHMARKS.md, "MoE dispatch"):
  python -m research.benchmark --config=configs/decoder/shakespeare_moe.py:dense --batch_size=16
  python -m research.benchmark --config=configs/decoder/shakespeare_moe.py --batch_size=16
  python -m research.benchmark --config=configs/decoder/shakespeare_moe.py:dropless --batch_size=16
  python -m research.benchmark --config=configs/decoder/shakespeare_moe.py:expert_choice \
      --batch_size=16

The dense model's d_ff F = 768 (SwiGLU at 8/3 x 256, rounded to 256) becomes 8 experts of width
F/2 = 384, two per token: every token passes through F of expert width, so the training FLOPs
per token are the dense model's plus the router's 256 x 8 per layer (research/training/flops.py:
22.86 MFLOP against 22.81). Parameters: 10.76M in all, 3.68M active (dense: 3.67M). Token-choice top-2
with capacity factor 1.25 (GShard's per-choice convention), Switch load-balancing loss 0.01,
router z-loss 1e-3, gates the softmax over all experts (Switch).

Variants (`path:VARIANT`):
  dense          the dense model of the same active parameters (configs/decoder/shakespeare.py)
  top1           one expert of width F per token (Switch), capacity factor 1.25
  dropless       top-2 without capacity: grouped matmuls over the sorted assignments (ragged_dot)
  aux_free       top-2 balanced by the DeepSeek-V3 selection bias instead of the Switch loss
  expert_choice  each expert takes its top 2T/E tokens per sequence (capacity factor 1.0, so 2
                 experts per token on average). NOT causal: in a decoder it sees the future
                 (model.moe.allow_noncausal=True), so its loss means nothing; for speed only.
  tiny           a few steps of a 2 x 64 model, for smoke tests.
"""

import os

from research import config_lib


def get_config(arg=None):
  dense = os.path.join(os.path.dirname(__file__), 'shakespeare.py')
  c = config_lib.load_config_file(dense + (':tiny' if arg == 'tiny' else ''))
  c.name = 'decoder/shakespeare_moe'
  c.model.d_ff = 768  # the dense width shakespeare.py derives (8/3 x 256, rounded to 256), pinned

  c.model.moe.num_experts = 8
  c.model.moe.router = 'top_k'
  c.model.moe.top_k = 2
  c.model.moe.d_ff = 384  # F / top_k: the dense model's active width
  c.model.moe.capacity_factor = 1.25
  c.model.moe.load_balance_coef = 0.01
  c.model.moe.z_loss_coef = 1e-3

  if arg == 'dense':
    c.name += ':dense'
    c.model.moe.num_experts = 0
  elif arg == 'top1':
    c.name += ':top1'
    c.model.moe.top_k = 1
    c.model.moe.d_ff = 768
  elif arg == 'dropless':
    c.name += ':dropless'
    c.model.moe.router = 'dropless'
  elif arg == 'aux_free':
    c.name += ':aux_free'
    c.model.moe.balance = 'aux_free'
  elif arg == 'expert_choice':
    c.name += ':expert_choice'
    c.model.moe.router = 'expert_choice'
    c.model.moe.capacity_factor = 1.0  # 2T/E tokens per expert: 2 experts per token on average
    c.model.moe.allow_noncausal = True
  elif arg == 'tiny':
    c.model.d_ff = 128
    c.model.moe.num_experts = 4
    c.model.moe.d_ff = 64
  elif arg:
    raise config_lib.unknown_variant(
        arg, ('dense', 'top1', 'dropless', 'aux_free', 'expert_choice', 'tiny'))
  return c
