"""RoPE fields of an HF config.json <-> lmforge's model.rope_theta and model.rope_scaling.

transformers 5 writes `rope_parameters` ({'rope_type', 'rope_theta', 'factor', ...}; Gemma 3
nests one such dict per layer type), transformers 4 a top-level `rope_theta` and a
`rope_scaling` dict (its oldest configs say 'type' for 'rope_type'). Reading a config.json,
transformers 5 takes rope_scaling before rope_parameters and fills a missing rope_theta from the
top level; `parameters` does the same, so lmforge reads what transformers would run.

Types: 'default'; 'linear' (factor: every frequency divided); 'llama3' (factor, low_freq_factor,
high_freq_factor, original_max_position_embeddings: research/layers/positions.py). Others (yarn,
dynamic, longrope, ...) are refused with the type's name.
"""

from __future__ import annotations

from research.errors import UserError
from research.layers import positions

# HF rope_type -> lmforge's model.rope_scaling.kind, and back.
KINDS = {'default': 'none', 'linear': 'linear', 'llama3': 'llama3'}
HF_TYPES = {kind: rope_type for rope_type, kind in KINDS.items()}
_LLAMA3 = ('low_freq_factor', 'high_freq_factor')


def parameters(hf: dict) -> dict:
  """The one rope_parameters dict of a config.json (not nested by layer type), as transformers
  5 reads it."""
  params = dict(hf.get('rope_scaling') or hf.get('rope_parameters') or {})
  params.setdefault('rope_theta', hf.get('rope_theta', 10_000.0))
  return params


def rope_type(params: dict) -> str:
  return params.get('rope_type', params.get('type', 'default'))


def _required(params: dict, key: str, where: str):
  if params.get(key) is None:
    raise UserError(f'{where}: rope_type={rope_type(params)!r} needs {key!r}: add it to '
                    'rope_parameters (the values the model was trained with)')
  return params[key]


def set_rope(model, params: dict, hf: dict, where: str) -> None:
  """Sets `model.rope_theta` and `model.rope_scaling` (a config's model section) from one
  rope_parameters dict of config.json `hf`; `where` names it in errors ('llama rope_parameters')."""
  kind = rope_type(params)
  if kind not in KINDS:
    raise UserError(f"{where}: rope_type={kind!r} is not supported: lmforge converts 'default', "
                    "'linear' and 'llama3' RoPE")
  if params.get('partial_rotary_factor', 1.0) != 1.0:
    raise UserError(f"{where}: partial_rotary_factor={params['partial_rotary_factor']} is not "
                    'supported: lmforge rotates the whole head (1.0)')
  model.rope_theta = float(params['rope_theta'])
  model.rope_scaling.kind = KINDS[kind]
  if kind == 'default':
    return
  model.rope_scaling.factor = float(_required(params, 'factor', where))
  if kind == 'llama3':
    for key in _LLAMA3:
      model.rope_scaling[key] = float(_required(params, key, where))
    # transformers: a top-level value first (Phi-3's exception), then the dict's, then the
    # model's context.
    model.rope_scaling.original_max_len = int(
        hf.get('original_max_position_embeddings') or
        params.get('original_max_position_embeddings') or hf['max_position_embeddings'])


def hf_parameters(rope: positions.Rope) -> dict:
  """transformers 5's rope_parameters of one resolved Rope."""
  out = {'rope_type': HF_TYPES[rope.scaling], 'rope_theta': rope.theta}
  if rope.scaling != 'none':
    out['factor'] = rope.factor
  if rope.scaling == 'llama3':
    out.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor,
               original_max_position_embeddings=rope.original_max_len)
  return out


def hf_fields(rope: positions.Rope) -> dict:
  """config.json's RoPE fields for one RoPE on every layer: rope_parameters (transformers 5), and
  rope_theta with rope_scaling when scaled (transformers 4, which ignores rope_parameters)."""
  params = hf_parameters(rope)
  out = {'rope_theta': rope.theta, 'rope_parameters': params}
  if rope.scaling != 'none':
    out['rope_scaling'] = {k: v for k, v in params.items() if k != 'rope_theta'}
  return out
