"""Feed-forward blocks: ReLU, GELU (two matrices) and SwiGLU (three), by `model.activation`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.layers import peft as peft_lib

# 'gelu' is the tanh approximation (GPT-2's gelu_new); 'gelu_exact' is erf GELU (BERT).
# Gated variants multiply act(x W_gate) into x W_in: SwiGLU (Llama), GeGLU (T5 v1.1).
ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': jax.nn.gelu,
               'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False),
               'swiglu': jax.nn.silu, 'geglu': jax.nn.gelu}
GATED = {'swiglu', 'geglu'}


def apply_activation(h_BTF, activation: str, gate_BTF=None):
  """act(h), or act(gate) * h for the gated activations; any leading shape (MLP and experts)."""
  act = ACTIVATIONS[activation]
  return act(gate_BTF) * h_BTF if activation in GATED else act(h_BTF)


def check_activation(name: str) -> None:
  if name not in ACTIVATIONS:
    raise ConfigError('model.activation', name, f'choose one of {sorted(ACTIVATIONS)}')


class MLP(nn.Module):
  d_ff: int
  activation: str = 'gelu'
  use_bias: bool = False
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  peft: peft_lib.PeftConfig = peft_lib.PeftConfig()  # LoRA deltas on the matrices

  def _dense(self, name, shape, axes, std):
    return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(std), axes),
                      shape, jnp.float32).astype(self.dtype)

  def _matmul(self, x_BTI, name, w_IO):
    y_BTO = jnp.einsum('bti,io->bto', x_BTI, w_IO)
    delta_BTO = peft_lib.lora_delta(self, self.peft, name, x_BTI, w_IO.shape[:1], w_IO.shape[1:],
                                    self.dtype)
    return y_BTO if delta_BTO is None else y_BTO + delta_BTO

  @nn.compact
  def __call__(self, x_BTD):
    check_activation(self.activation)
    d = x_BTD.shape[-1]
    w_in_DF = self._dense('w_in', (d, self.d_ff), ('embed', 'mlp'), self.init_std)
    h_BTF = self._matmul(x_BTD, 'w_in', w_in_DF)
    if self.use_bias:
      h_BTF += self.param('b_in', nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
                          (self.d_ff,), jnp.float32).astype(self.dtype)
    if self.activation in GATED:
      w_gate_DF = self._dense('w_gate', (d, self.d_ff), ('embed', 'mlp'), self.init_std)
      h_BTF = apply_activation(h_BTF, self.activation,
                               self._matmul(x_BTD, 'w_gate', w_gate_DF))
    else:
      h_BTF = apply_activation(h_BTF, self.activation)
    h_BTF = nn.with_logical_constraint(h_BTF, ('batch', 'length', 'mlp'))
    w_out_FD = self._dense('w_out', (self.d_ff, d), ('mlp', 'embed'), self.out_init_std)
    y_BTD = self._matmul(h_BTF, 'w_out', w_out_FD)
    if self.use_bias:
      y_BTD += self.param('b_out', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                          (d,), jnp.float32).astype(self.dtype)
    return y_BTD
