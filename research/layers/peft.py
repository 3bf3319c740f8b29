"""Parameter-efficient layers: LoRA deltas on the einsum projections, bottleneck adapters.

Both are off unless the TransformerConfig asks for them (`peft.method`, research/training/peft.py),
so a base model's parameters and outputs are unchanged by this file.

LoRA (Hu et al. 2021). A projection y = x W, with W's leading `fan_in` axes contracted against x,
gains y += (alpha / r) (x A) B with A [*in, r] (normal, std 1/sqrt(fan in)) and B [r, *out]
(zeros, so training starts from the base model). The pair is stored beside the weight as
`NAME_lora_a` / `NAME_lora_b`; `research.training.peft.merge_lora` folds it into W.

Adapters (Houlsby et al. 2019): h + up(gelu(down(h))) on each sublayer's output, up zeros.
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """The model-side PEFT settings (hashable); all zeros: a plain model."""
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: str = ''  # full-match regex on parameter paths ('stack/layer_0/attn/query')
  prompt_tokens: int = 0
  adapter_dim: int = 0


def lora_delta(module: nn.Module, cfg: PeftConfig, name: str, x, in_shape, out_shape, dtype):
  """(alpha / r) (x A) B for the weight `name` of `module`, or None when LoRA does not target it.

  x's last len(in_shape) axes are contracted; the result has x's other axes then `out_shape`.
  """
  if not cfg.lora_rank or not re.fullmatch(cfg.lora_targets, '/'.join((*module.path, name))):
    return None
  in_shape, out_shape = tuple(in_shape), tuple(out_shape)
  fan_in = math.prod(in_shape)
  a = module.param(f'{name}_lora_a', nn.initializers.normal(fan_in ** -0.5),
                   (*in_shape, cfg.lora_rank), jnp.float32)
  b = module.param(f'{name}_lora_b', nn.initializers.zeros, (cfg.lora_rank, *out_shape),
                   jnp.float32)
  h = jnp.tensordot(x, a.astype(dtype), axes=len(in_shape))
  return jnp.tensordot(h, b.astype(dtype), axes=1) * (cfg.lora_alpha / cfg.lora_rank)


def lora_merged(a, b, alpha: float):
  """The weight delta A B (alpha / r) that `lora_delta` applies, in W's shape."""
  rank = a.shape[-1]
  return jnp.tensordot(a, b, axes=1) * (alpha / rank)


class Adapter(nn.Module):
  """Bottleneck MLP with a zero-initialised up-projection: h + up(gelu(down(h)))."""
  dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h_BTD):
    d = h_BTD.shape[-1]
    down_DA = self.param('down', nn.initializers.normal(d ** -0.5), (d, self.dim), jnp.float32)
    up_AD = self.param('up', nn.initializers.zeros, (self.dim, d), jnp.float32)
    z_BTA = jax.nn.gelu(jnp.einsum('btd,da->bta', h_BTD, down_DA.astype(self.dtype)))
    return h_BTD + jnp.einsum('bta,ad->btd', z_BTA, up_AD.astype(self.dtype))
