"""Quantized matmuls through Qwix: quantized training (QAT) and post-training weights (PTQ).

`config.model.quantization` selects what is quantized, per layer kind:

  mode          'none' | 'qat' | 'ptq'
  weight_qtype  'int8' | 'int4' | 'float8_e4m3fn' | 'float8_e5m2' (aliases 'e4m3', 'e5m2')
  act_qtype     '' (weight-only) or one of the same: the matmul inputs too
  bwd_qtype     qat only: '' (float gradients) or a qtype for the backward matmuls
  layers        comma-separated kinds: attention (q/k/v/out and cross), mlp, moe (experts), head
  group_size    0: one scale per output channel; G: one per G input features and channel
  symmetric     True: absmax scales; False: min-max scales with a zero point (integer qtypes)

`build(model, config.model)` (called by research.models.build_model, the one place models are
built) returns the model unchanged for mode 'none', else the model with Qwix's interception of
its einsums:

  qat  QtProvider: the forward matmul takes fake-quantized operands (quantize, then dequantize
       to the compute dtype, or a native int8/fp8 matmul where XLA has one), and the gradient
       is straight-through: d(quantize)/dx = 1 inside the clipping range, so the float master
       weights train. On CPU the int8/fp8 numerics run in emulation.
  ptq  PtqProvider: parameters of the selected layers are Qwix QArrays (int8/int4 values,
       float32 scales, zero points when asymmetric), stored as such in the checkpoint;
       `research.compress quantize` writes them. Each matmul dequantizes its weight (or runs an
       integer matmul where the backend has one). Inference only.

Why Qwix (rather than AQT): Qwix is Google's successor to AQT for JAX, written for Flax (linen
and NNX) models: it quantizes a model by intercepting jnp.einsum / lax.dot_general inside the
modules, so no layer here carries quantization code, and one rule set serves both QAT and PTQ
(AQT needs its dot_general injected into every layer). It also stores int4 natively (jnp.int4)
and supports per-group ("subchannel", tile_size) scales.

fp8 scaling in Qwix 0.1.8: *current* (just-in-time) scaling only: each matmul's scale is
computed from the absmax of the tensor being quantized in that step (per channel, or per group).
Qwix also has static activation scales (act_static_scale: a running mean of calibration
statistics, SimpleMovingAverage), which is calibration, not the amax-history *delayed* scaling
of Transformer Engine / Flax's fp8_ops; delayed scaling is not available, and it is not
emulated here.

Where the layers call einsum on a non-weight pair (attention scores, MoE dispatch), an
act_qtype quantizes those operands too, because Qwix matches rules by module path and op,
not by parameter. The MoE router stays float32: it is a plain matmul Qwix does not intercept.
"""

from __future__ import annotations

from typing import Sequence

import jax

from research.errors import ConfigError

MODES = ('none', 'qat', 'ptq')
QTYPES = {'int8': 'int8', 'int4': 'int4', 'float8_e4m3fn': 'float8_e4m3fn',
          'e4m3': 'float8_e4m3fn', 'float8_e5m2': 'float8_e5m2', 'e5m2': 'float8_e5m2'}
INT_QTYPES = ('int8', 'int4')
ENTRY_METHODS = ('__call__', 'hidden', 'logits', 'scalars', 'encode', 'decode_logits')

# Layer kind -> regex over Qwix's module path ('stack/layer_0/attn', 'stack/layers/mlp',
# 'unembed'); a tied head is the embedding table's own einsum ('embed').
LAYER_KINDS = {
    'attention': r'(.*/)?(attn|cross)',
    'mlp': r'(.*/)?mlp',
    'moe': r'(.*/)?moe(/shared)?',
    'head': r'(unembed|embed)',
}


def layer_kinds(q) -> list[str]:
  """config.model.quantization.layers as a list of kinds (validated by check_config)."""
  return [k.strip() for k in str(q.layers).split(',') if k.strip()]


def qtype_of(name: str) -> str:
  return QTYPES[name]


def contraction_dims(cfg, kinds: Sequence[str]) -> dict[str, int]:
  """{description: size} of the innermost input (contraction) axis of each quantized weight,
  which a group size must divide. `cfg` is the resolved TransformerConfig."""
  dims = {}
  if 'attention' in kinds:
    dims['attention q/k/v input (model.d_model)'] = cfg.d_model
    dims['attention output input (head_dim)'] = cfg.head_dim
  if 'mlp' in kinds:
    dims['mlp input (model.d_model)'] = cfg.d_model
    dims['mlp output input (model.d_ff)'] = cfg.d_ff
  if 'moe' in kinds and cfg.moe.num_experts:
    dims['moe expert input (model.d_model)'] = cfg.d_model
    dims['moe expert output input (model.moe.d_ff)'] = cfg.moe.d_ff
  if 'head' in kinds:
    dims['head input (model.d_model)'] = cfg.d_model
  return dims


def group_size_problem(cfg, kinds: Sequence[str], group_size: int) -> str:
  """'' when `group_size` divides every quantized weight's input axis, else why not."""
  if group_size <= 0:
    return ''
  bad = {k: v for k, v in contraction_dims(cfg, kinds).items() if v % group_size}
  if not bad:
    return ''
  what = ', '.join(f'{k}={v}' for k, v in bad.items())
  return f'does not divide {what}: pick a divisor of these, or 0 (per channel)'


def check_config(model_cfg, cfg) -> None:
  """Validates config.model.quantization (one-line ConfigErrors). `cfg`: the resolved
  TransformerConfig (derived widths)."""
  q = model_cfg.get('quantization', None)
  if q is None:
    return
  prefix = 'model.quantization.'
  if q.mode not in MODES:
    raise ConfigError(prefix + 'mode', q.mode, f'choose one of {MODES}')
  if q.mode == 'none':
    return
  if q.weight_qtype not in QTYPES:
    raise ConfigError(prefix + 'weight_qtype', q.weight_qtype, f'choose one of {sorted(QTYPES)}')
  for field in ('act_qtype', 'bwd_qtype'):
    if q[field] and q[field] not in QTYPES:
      raise ConfigError(prefix + field, q[field], f"choose '' (float) or one of {sorted(QTYPES)}")
  if q.bwd_qtype and q.mode != 'qat':
    raise ConfigError(prefix + 'bwd_qtype', q.bwd_qtype, "applies to mode='qat' only: use ''")
  kinds = layer_kinds(q)
  unknown = [k for k in kinds if k not in LAYER_KINDS]
  if not kinds or unknown:
    raise ConfigError(prefix + 'layers', q.layers, f'give comma-separated kinds from '
                      f'{sorted(LAYER_KINDS)}, e.g. "attention,mlp"')
  if q.group_size < 0:
    raise ConfigError(prefix + 'group_size', q.group_size, 'must be >= 0 (0: per channel)')
  problem = group_size_problem(cfg, kinds, q.group_size)
  if problem:
    raise ConfigError(prefix + 'group_size', q.group_size, problem)
  if not q.symmetric and qtype_of(q.weight_qtype) not in INT_QTYPES:
    raise ConfigError(prefix + 'symmetric', q.symmetric, f'asymmetric (zero-point) scales are '
                      f'for int8/int4; {q.weight_qtype} is symmetric: set it True')
  if q.mode == 'ptq':
    if 'head' in kinds and model_cfg.tie_embeddings:
      raise ConfigError(prefix + 'layers', q.layers, 'head: the head shares the embedding '
                        'table (model.tie_embeddings), whose lookup needs float rows: drop head')
    if 'moe' in kinds and cfg.moe.num_experts and cfg.moe.router == 'dropless':
      raise ConfigError(prefix + 'layers', q.layers, "moe: the dropless router's ragged_dot "
                        'takes float weights in Qwix PTQ: drop moe, or quantize with mode=qat')


def rules(q) -> list:
  """The Qwix rules of config.model.quantization: one per selected layer kind."""
  import qwix  # pylint: disable=g-import-not-at-top
  common = dict(
      weight_qtype=qtype_of(q.weight_qtype),
      act_qtype=qtype_of(q.act_qtype) if q.act_qtype else None,
      tile_size=int(q.group_size) or None,
      weight_calibration_method='absmax' if q.symmetric else 'minmax',
  )
  if q.mode == 'qat':
    common['bwd_qtype'] = qtype_of(q.bwd_qtype) if q.bwd_qtype else None
  return [qwix.QtRule(module_path=LAYER_KINDS[kind], **common) for kind in layer_kinds(q)]


def _patch_qwix() -> None:
  """Qwix 0.1.8's PTQ WithAux.astype re-boxes a QArray as if it were an array and raises
  ("Unsupported type: QArray") when a linen layer casts its weight (`w.astype(self.dtype)`, as
  every layer here does). Casting the QArray (its scale: the dequantized dtype) is what it
  means."""
  from qwix._src.providers import ptq  # pylint: disable=g-import-not-at-top
  if not getattr(ptq.WithAux, '_lmforge_astype', False):
    ptq.WithAux.astype = lambda self, dtype: self.replace(array=self.array.astype(dtype))
    ptq.WithAux._lmforge_astype = True  # pylint: disable=protected-access


def provider(q):
  """The Qwix provider of config.model.quantization (mode qat or ptq)."""
  import qwix  # pylint: disable=g-import-not-at-top
  if q.mode == 'qat':
    return qwix.QtProvider(rules(q))
  _patch_qwix()
  return qwix.PtqProvider(rules(q))


def build(model, model_cfg):
  """`model` with config.model.quantization applied (itself for mode 'none')."""
  q = model_cfg.get('quantization', None)
  if q is None or q.mode == 'none':
    return model
  import qwix  # pylint: disable=g-import-not-at-top
  # Every entry point that runs matmuls, not only __call__: decoding applies `hidden` and
  # `logits` (decoder) or `encode` and `decode_logits` (encoder-decoder) directly.
  methods = [m for m in ENTRY_METHODS if callable(getattr(type(model), m, None))]
  return qwix.quantize_model(model, provider(q), methods=methods)


def quantize_params(float_params, abstract_quantized_params):
  """The PTQ parameter tree of `float_params` (unboxed): the selected weights as Qwix QArrays
  in WithAux, quantized as the PTQ model's abstract tree (its init under eval_shape) says."""
  import qwix  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return qwix.quantize_params(float_params, nn.meta.unbox(abstract_quantized_params))


def is_quantized_leaf(x) -> bool:
  from qwix._src.providers import ptq  # pylint: disable=g-import-not-at-top
  return isinstance(x, ptq.WithAux)


def dequantize_params(params):
  """A PTQ parameter tree back to float32 arrays (the other leaves unchanged)."""
  import qwix  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: qwix.dequantize(x.array) if is_quantized_leaf(x) else x, params,
                      is_leaf=is_quantized_leaf)
