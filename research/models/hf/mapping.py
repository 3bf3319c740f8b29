"""One table per Hugging Face family, read both ways: HF checkpoint <-> lmforge parameters.

A family (gpt2.py, bert.py, t5.py, llama.py) is a `Family`: how its config.json becomes an lmforge
config and back, why an lmforge config may not be expressible in it, and its parameter table,
`tensors(config)`: a list of `Tensor` entries, one per lmforge parameter, each naming

  path       the lmforge parameter, in the unscanned layout ('stack/layer_0/attn/query'; a
             scanned model's 'stack/layers/attn/query' is the stack of its layers' entries)
  hf         the HF tensor that holds it; or a tuple of names, one tensor per slice of the
             parameter's leading axis (stacked: see below)
  transform  a pair of pure numpy functions (to lmforge, back to HF) made only of reshapes and
             transposes, so that HF -> lmforge -> HF (and back) is bit-identical
  part       for a fused HF tensor (GPT-2's c_attn holds query, key and value): which of its
             `count` equal slices along `axis` this parameter is; import splits, export
             concatenates

For example Llama's query projection, a torch Linear [H*K, D], is lmforge's [D, H, K]:

  Tensor('stack/layer_0/attn/query', 'model.layers.0.self_attn.q_proj.weight',
         linear_in_heads(h, k))   # transpose, then split the last axis into (H, K)

A stacked entry is the opposite of a part: HF stores one tensor per slice of the lmforge
parameter's new leading axis. lmforge's MoE experts are one [E, ...] array, HF's checkpoints keep
one tensor per expert; `transform` maps each of them to its slice [e] (`stacked_names` spells
the names):

  Tensor('stack/layer_0/moe/w_gate',
         stacked_names('model.layers.0.block_sparse_moe.experts.{}.w1.weight', 4),
         TRANSPOSE)   # [F, D] per expert <-> w_gate [E, D, F]

Import reads the HF tensors of the experts a device shard holds and stacks them; export writes
expert e's tensor from slice [e]. A stacked entry has no part and no fallback.

Import (research/models/hf/streaming.py) and export walk the same table.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------
# Transforms: reshapes and transposes only, each with its exact inverse.


@dataclasses.dataclass(frozen=True)
class Transform:
  """HF layout -> lmforge layout, and back."""
  to_lmforge: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]

  def then(self, after: 'Transform') -> 'Transform':
    """This transform, then `after` (towards lmforge); the inverse runs in reverse order."""
    return Transform(lambda x: after.to_lmforge(self.to_lmforge(x)),
                     lambda x: self.to_hf(after.to_hf(x)))


IDENTITY = Transform(lambda x: x, lambda x: x)
# torch's Linear stores [out, in]; lmforge's matrices are [in, out].
TRANSPOSE = Transform(np.transpose, np.transpose)


def split_last(heads: int, head_dim: int) -> Transform:
  """[..., H*K] <-> [..., H, K]."""
  return Transform(lambda x: x.reshape(*x.shape[:-1], heads, head_dim),
                   lambda x: x.reshape(*x.shape[:-2], heads * head_dim))


def split_first(heads: int, head_dim: int) -> Transform:
  """[H*K, ...] <-> [H, K, ...]."""
  return Transform(lambda x: x.reshape(heads, head_dim, *x.shape[1:]),
                   lambda x: x.reshape(heads * head_dim, *x.shape[2:]))


def linear_in_heads(heads: int, head_dim: int) -> Transform:
  """A torch Linear into heads, [H*K, D] <-> lmforge's [D, H, K] (query, key, value)."""
  return TRANSPOSE.then(split_last(heads, head_dim))


def linear_out_heads(heads: int, head_dim: int) -> Transform:
  """A torch Linear out of heads, [D, H*K] <-> lmforge's [H, K, D] (attention output)."""
  return TRANSPOSE.then(split_first(heads, head_dim))


# ------------------------------------------------------------------------------------------------
# The table.


@dataclasses.dataclass(frozen=True)
class Part:
  """Slice `index` of `count` equal slices along `axis` of a fused HF tensor (HF layout)."""
  axis: int
  index: int
  count: int


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One lmforge parameter and the HF tensor(s) that hold it (see the module docstring).

  `fallback`: names read instead of `hf` when a checkpoint lacks it (import only; export writes
  `hf`), e.g. a T5 head tied in the checkpoint but untied in lmforge.
  """
  path: str
  hf: str | tuple[str, ...]  # a tuple: stacked, one HF tensor per slice of the leading axis
  transform: Transform = IDENTITY
  part: Part | None = None
  fallback: tuple[str, ...] = ()

  def __post_init__(self):
    if self.stacked and (self.part is not None or self.fallback):
      raise ValueError(f'{self.path}: a stacked entry has no part and no fallback')

  @property
  def stacked(self) -> bool:
    return isinstance(self.hf, tuple)

  @property
  def names(self) -> tuple[str, ...]:
    """The HF tensors this entry reads and writes: `hf`, or its stacked names in order."""
    return self.hf if self.stacked else (self.hf,)


def stacked_names(pattern: str, count: int) -> tuple[str, ...]:
  """pattern.format(i) for i < count: the names of a stacked entry, e.g. one per expert."""
  return tuple(pattern.format(i) for i in range(count))


def to_lmforge(entry: Tensor, hf_array: np.ndarray) -> np.ndarray:
  """The lmforge parameter from the whole HF tensor `entry.hf` (a stacked entry: slice [i] of
  it from its i-th HF tensor)."""
  if entry.part is not None:
    hf_array = np.split(hf_array, entry.part.count, axis=entry.part.axis)[entry.part.index]
  return entry.transform.to_lmforge(hf_array)


def to_hf(entries: Sequence[Tensor], arrays: Sequence[np.ndarray]) -> np.ndarray:
  """The HF tensor that `entries` (all naming it; one, or the parts of a fused one) fill; a
  stacked entry's array is its slice for this tensor."""
  if len(entries) == 1 and entries[0].part is None:
    return entries[0].transform.to_hf(arrays[0])
  parts = sorted(zip(entries, arrays), key=lambda pair: pair[0].part.index)
  return np.concatenate([e.transform.to_hf(x) for e, x in parts], axis=parts[0][0].part.axis)


def hf_shape(entry: Tensor, lmforge_shape: Sequence[int]) -> tuple[int, ...]:
  """The shape of the whole HF tensor `entry.hf` (each of a stacked entry's), from its lmforge
  parameter's shape."""
  if entry.stacked:
    lmforge_shape = lmforge_shape[1:]
  # A zero-stride view: reshapes and transposes of it allocate nothing.
  shape = list(entry.transform.to_hf(np.broadcast_to(np.float32(0), tuple(lmforge_shape))).shape)
  if entry.part is not None:
    shape[entry.part.axis] *= entry.part.count
  return tuple(shape)


def group_by_hf(entries: Sequence[Tensor]) -> dict[str, list[Tensor]]:
  """HF name -> the entries that fill it, in table order."""
  groups: dict[str, list[Tensor]] = {}
  for entry in entries:
    for name in entry.names:
      groups.setdefault(name, []).append(entry)
  return groups


# ------------------------------------------------------------------------------------------------
# Scanned layouts: 'stack/layers/X' [L, ...] is the stack of 'stack/layer_{i}/X'.

_LAYER = re.compile(r'^(?P<stack>.+?)/layer_(?P<index>\d+)/(?P<rest>.+)$')


def scanned_path(path: str) -> tuple[str, int | None]:
  """('stack/layers/attn/query', 0) for 'stack/layer_0/attn/query'; (path, None) outside a stack."""
  match = _LAYER.match(path)
  if match is None:
    return path, None
  return f"{match['stack']}/layers/{match['rest']}", int(match['index'])


# ------------------------------------------------------------------------------------------------
# Families.


@dataclasses.dataclass(frozen=True)
class Family:
  """A Hugging Face model type and its two-way mapping onto lmforge.

  lmforge_config(hf_config: dict) -> ConfigDict; raises UserError for HF options lmforge lacks.
  hf_config(config) -> dict: config.json for `architecture` (assumes `unsupported` is empty).
  tensors(config) -> [Tensor]: the parameter table.
  unsupported(config) -> [str]: why `config` cannot be expressed in this family, one
    'model.FIELD=VALUE (needs ...)' per reason; empty when it can.
  ignored(config) -> regexes (full match) of checkpoint tensors that carry nothing lmforge
    reads: buffers (rotary inv_freq, attention masks) and tied duplicates (lm_head).
  canonical_name(name) -> the name the table uses, for checkpoints saved with other spellings
    (no 'transformer.' prefix, LayerNorm gamma/beta).
  """
  model_type: str
  architecture: str
  lmforge_config: Callable[[dict], Any]
  hf_config: Callable[[Any], dict]
  tensors: Callable[[Any], list[Tensor]]
  unsupported: Callable[[Any], list[str]]
  ignored: Callable[[Any], tuple[str, ...]] = lambda config: ()
  canonical_name: Callable[[str], str] = lambda name: name


def field(config, name: str, default: Any = None) -> Any:
  """config['model.attention.pattern'] by dotted name; `default` when a level is missing (a
  config saved before the field existed)."""
  node = config
  for key in name.split('.'):
    if node is None or key not in node:
      return default
    node = node[key]
  return node


def differences(config, wanted: dict[str, Any]) -> list[str]:
  """"model.position='rope' (needs 'learned')" per field whose value is not the wanted one (a
  tuple: any of them). Missing fields are taken to hold the wanted value (their default)."""
  reasons = []
  for name, value in wanted.items():
    allowed = value if isinstance(value, tuple) else (value,)
    got = field(config, name, allowed[0])
    if got not in allowed:
      needs = ' or '.join(repr(v) for v in allowed)
      reasons.append(f'{name}={got!r} (needs {needs})')
  return reasons


# Options of lmforge models that a family expresses only when it has them: each family's
# `unsupported` overrides its own (llama.py: Qwen's qkv biases and QK-norm, RoPE scaling;
# gemma.py: embedding scale, soft-capping, a local RoPE base) and requires these elsewhere.
PLAIN = {
    'model.moe.num_experts': 0,
    'peft.method': 'none',
    'model.qkv_bias': False,
    'model.qk_norm': False,
    'model.attention_softcap': 0.0,
    'model.final_softcap': 0.0,
    'model.embed_scale': False,
    'model.rope_scaling.kind': 'none',
    'model.rope_local_theta': 0.0,
    # μP's output and attention multipliers have no Hugging Face config field.
    'model.parameterization': 'sp',
    # Recurrent mixers (research/layers/mixers.py) have no layer in these families.
    'model.mixer.pattern': 'attention',
}


def plain_heads_reasons(model_cfg) -> list[str]:
  """Why `config.model` is not plain multi-head attention (head_dim = d_model / num_heads, no
  grouped-query heads), which GPT-2 and BERT are; [] when it is."""
  m, reasons = model_cfg, []
  if m.num_kv_heads not in (0, m.num_heads):
    reasons.append(f'model.num_kv_heads={m.num_kv_heads} (needs {m.num_heads}: no GQA)')
  if m.head_dim not in (0, m.d_model // m.num_heads):
    reasons.append(f'model.head_dim={m.head_dim} (needs d_model / num_heads)')
  return reasons


def hf_common(config, family: Family) -> dict:
  """config.json fields every family writes. Token ids are null: the tokenizer files say them."""
  return {'architectures': [family.architecture], 'model_type': family.model_type,
          'vocab_size': int(config.model.vocab_size or config.data.vocab_size),
          'initializer_range': float(config.model.init_std),
          'torch_dtype': 'float32', 'dtype': 'float32',
          'bos_token_id': None, 'eos_token_id': None, 'pad_token_id': None}
