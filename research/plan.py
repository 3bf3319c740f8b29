"""Memory and FLOP planner: will a config fit a device, and how long will a step take?

  python -m research.plan --config=configs/decoder/gpt2_small.py --device=h100-80gb
  python -m research.plan --config=configs/decoder/gpt2_small.py --num_devices=8 \
      --config.mesh.data=1 --config.mesh.fsdp=8 --device=all
  python -m research.plan --config=configs/decoder/gpt2_small.py --json

Nothing is allocated or compiled: parameter and optimizer-state shapes come from
`jax.eval_shape` of the trainer's own state initializer, per-device sizes from the config's
logical-axis rules over the mesh (`--config.mesh.*`, resolved over `--num_devices`, which need
not exist on this host), activations from the model below and FLOPs from
research.training.flops. `--device=all` adds one fits / does-not-fit row per known device. The
first command prints (in about 3 s on a CPU):

  decoder/gpt2_small on 1 x NVIDIA H100 80 GB (h100-80gb), mesh data=1
  batch 32 x 1,024 tokens, 1 micro-batch: 32 sequences per device per micro-batch
  compute bfloat16 (model.dtype='auto' on gpu), attention cudnn, scan_layers on

                                         total   per device
    parameters                     124,475,904  124,475,904
    parameters (float32)              0.46 GiB     0.46 GiB
    gradients (float32)               0.46 GiB     0.46 GiB
    optimizer state                   0.93 GiB     0.93 GiB
    activations (remat none)                      39.59 GiB
      saved by the layers                         23.64 GiB
      shared (masks, final norms)                  0.36 GiB
      head and loss                                6.14 GiB
      compute-dtype weight copies                  0.23 GiB
      backward working set                         9.21 GiB
    total                                         41.44 GiB

  fits on h100-80gb: 41.44 GiB of 72.00 GiB usable (80 GiB less 10% headroom), 58%
  FLOPs: 7.98e+08 per token, 2.62e+13 per step
  step time at 40% MFU: 66.1 ms (495,685 tokens/s; compute only)

What is counted, per device:
  parameters, optimizer state: the real pytrees (AdamW: mu and nu in float32, a step count),
    each leaf cut by the mesh axes its logical axes map to (research.parallel.mesh's
    logical_shardings, so an axis that does not divide a dimension leaves it replicated, as in
    training). Planning for a named accelerator uses its compute dtype: model.dtype='auto' is
    bfloat16 there, and model.attention.implementation='auto' is cuDNN on GPUs, XLA on TPUs
    (the plan says so). train.offload's state in pinned host memory between steps is its own
    line. The step brings the optimizer state to HBM whole for the update, once the backward
    pass has freed the activations, so the peak holds the larger of the two (an estimate:
    libtpu's compile stages all of it, and the new state, as temporaries); offloaded
    parameters stay on the device for the whole step, so they save HBM only between steps.
  gradients: one float32 copy of the parameters, sharded like them; two with micro-batches
    (the accumulator and the micro-batch's own).
  activations, for one micro-batch of B = batch / micro_batches / batch shards sequences:
    layers x (what the remat policy saves per layer) + shared + head + working set.
    * Per layer without remat ('none'): the residuals JAX's autodiff keeps for the backward
      pass (tests/test_plan.py checks them against jax's saved_residuals within 5 %), in bytes
      per token, with a the compute dtype's size, D model width, F MLP width, H and G query and
      key-value heads, K head dim, S keys attended:
        each norm: its input and normalised value in float32 and its output: (8 + a) D
          (LayerNorm also keeps the centred input: (12 + a) D); a norm on a sublayer's output
          (norm_position='sandwich') and QK-norm keep the same less the output, which only the
          residual add or RoPE reads: 8 D per sublayer and 8 K (H + G) for QK-norm (RMSNorm);
        attention: q, k, v and the attention output: a K (2H + 2G);
        XLA attention: exp(scores) in float32 and the probabilities, (4 + a) H S; cuDNN flash
          attention keeps only its softmax statistics, 4 H;
        MLP hidden: 6a F for tanh-GELU and SwiGLU (pre-activation, polynomial and tanh terms,
          output), 4a F exact GELU, 8a F GeGLU, (a + 1) F ReLU (output and sign);
        a recurrent mixer (`model.mixer`) in attention's place, per head with a [K, V] state
          and chunk C (research/layers/recurrent.py's float32 kernel, `_kernel_residuals`):
          its chunk-layout q, k (and v) and the scan's inputs, about 4 (4K + 2V); the [C, C]
          scores, 4C (linear attention) to 32C (the delta rule's KK^T and solve); the state
          entering each chunk, 4 K V / C (with model.mixer.kernel_remat, the default, only
          the kernel's inputs, 4 (2K + V) + 8, and the backward recomputes the rest); the
          short convolution, its input, a per channel (it is rematerialised);
          the gated norm, feature map and gates, 16 to 36 per element of the output
          (`_mixer_half`). Bidirectional stacks keep the kernel's part twice.
      In half precision the 'none' policy also keeps the bfloat16 copy of every weight.
    * With remat a layer saves its input (a D) and what the policy names:
        full: nothing else;  save_attention_out: the attention output;
        save_qkv_attention: q, k, v and the attention output;
        dots: every matmul output but the MLP's last (q, k, v before RoPE, float32 scores for
          XLA attention, attention output, output projection, MLP input projections);
        dots_no_batch: the matmuls without batch dimensions (the projections only).
      The recurrent mixers name q, k, v (Mamba-2: C and B for every head, and x) and their
      output as attention does, so the named policies keep those; dots keeps their
      projections and the kernel's batched matmuls (QK^T, KK^T, the scan's).
    * Shared, kept once per stack: the boolean mask [T, S], and without remat the masked-score
      fill of XLA's softmax (4 H S per token), RoPE's tables and ReLU's zeros, and what a
      recurrent mixer derives from the segment ids alone (its decay's and solve's masks,
      `_mixer_masks`); each stack's final norm (an encoder's output, for encoder-decoders);
      T5's relative bias tables.
    * Head: float32 exp(logits - logsumexp) for the loss, 4 V per token; with
      `model.loss_chunk_size` N, the fused chunked loss's d hidden (a D) and head gradient.
    * Working set: the largest transient of the backward pass. The head's: d logits in float32
      and its compute-dtype copy, (4 + a) V per token (3 x 4 V x N with a chunked loss). A
      layer's: its gradient buffers (XLA attention: d probabilities and d scores, 2 x 4 H S;
      MLP: 2a F; a recurrent mixer: its kernel's chunk-layout tensors, scores and states)
      plus, with remat, what it recomputes: everything per layer above that the policy did
      not save. Halves run backwards MLP first; XLA may recompute the attention
      half before or after the MLP half's backward (on CPU: before for save_qkv_attention,
      after for save_attention_out), and the plan assumes before, so both halves' recomputed
      residuals are live at once. FSDP adds one layer's gathered weights.
  Activations are cut over the mesh as the model's logical constraints cut them: rows over the
  'batch' rule's axes, heads, MLP and vocabulary over theirs (tensor parallelism), and the
  sequence over the context axis (`mesh.context`, the 'length' rule).
  * Context parallelism (mesh.context = n > 1): each device holds T / n tokens of every
    activation. Self-attention runs research/layers/context_parallel.py's tiled kernel
    (attention 'context_all_gather' or 'context_ring'), which keeps only its own slice's q, k,
    v, output and softmax statistics (4 H per token), no probabilities and no [T, S] mask.
    Its backward working set: d q in float32, the score tiles (4 float32 [H, tile, tile]
    arrays: s, p, d p, d s; tile = model.attention.block_size or the chunk) and the keys and
    values it visits with their float32 gradients: the whole row, gathered again, for
    all_gather; for the ring its slice's gradient accumulators and one block in flight with
    its gradient.
  Fits: params + gradients + optimizer state + activations <= HBM x (1 - 10 %), the headroom
  for XLA's workspace, fragmentation and the runtime (HBM is the nominal size per chip).
  Adding all gradients to the activation peak is an upper bound: gradients fill up while
  activations are freed.

Measured against XLA's own `memory_analysis()` of the compiled train step on CPU (float32, XLA
attention, 8 x 256 tokens per device, d_model 128, 4 layers; tests/test_plan.py), plan
(activations + gradients) / XLA temporaries: 0.96 without remat (scanned layers), 1.19
unrolled (XLA fuses GELU's elementwise residuals across unrolled layers), 1.06 full remat
(1.20 over 8 data-parallel devices), 1.00 save_qkv_attention, 1.15 dots, 1.21 dots_no_batch,
1.33 save_attention_out (an upper bound: see the working set). Recurrent mixers, scanned
(chunk 64, the kernel rematerialised): 0.97 / 0.93 / 1.02 without remat for linear attention /
Mamba-2 / Gated DeltaNet, 0.96 / 0.76 / 0.86 full remat (XLA keeps more of the recomputed layer
live than the plan's working set), 0.98 / 0.82 / 1.01 save_qkv_attention; unrolled without
remat, Gated DeltaNet 0.83 and a hybrid of all four mixers 1.06. On CPU, XLA hoists the
recomputation of unrolled layers (scan_layers=False) back into the forward pass, so remat saves
nothing there; scanned stacks honour the policy. GPU and TPU compilers fuse and schedule
differently, so treat the activations as an estimate to about +-25 %. The step time is
FLOPs / (devices x peak x MFU): compute only, no communication.
"""

from __future__ import annotations

import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from research import cli, config_lib, models, objectives
from research.errors import ConfigError
from research.layers import context_parallel, mixers
from research.models import transformer
from research.parallel import mesh as mesh_lib, pipeline
from research.training import flops as flops_lib, optimizers, trainer

GiB = 2 ** 30
HEADROOM = 0.10  # of HBM, for XLA's workspace, fragmentation and the runtime's own buffers
DEFAULT_MFU = 0.40


@dataclasses.dataclass(frozen=True)
class Device:
  name: str  # what --device takes
  label: str
  hbm_bytes: int  # nominal memory per chip
  platform: str  # 'gpu' | 'tpu': picks the compute dtype and attention for model.*='auto'
  peak_key: str  # key of research.training.flops.PEAK_FLOPS

  @property
  def peak_flops(self) -> float:
    return flops_lib.PEAK_FLOPS[self.peak_key]


DEVICES = {d.name: d for d in (
    Device('h100-80gb', 'NVIDIA H100 80 GB', 80 * GiB, 'gpu', 'h100'),
    Device('h200', 'NVIDIA H200 141 GB', 141 * GiB, 'gpu', 'h200'),
    Device('a100-40gb', 'NVIDIA A100 40 GB', 40 * GiB, 'gpu', 'a100'),
    Device('a100-80gb', 'NVIDIA A100 80 GB', 80 * GiB, 'gpu', 'a100'),
    Device('tpu-v4', 'TPU v4 (32 GiB)', 32 * GiB, 'tpu', 'tpu v4'),
    Device('tpu-v5e', 'TPU v5e (16 GiB)', 16 * GiB, 'tpu', 'tpu v5e'),
    Device('tpu-v5p', 'TPU v5p (95 GiB)', 95 * GiB, 'tpu', 'tpu v5p'),
    Device('tpu-v6e', 'TPU v6e (32 GiB)', 32 * GiB, 'tpu', 'tpu v6e'),
)}


def get_device(name: str) -> Device:
  if name not in DEVICES:
    raise ConfigError('--device', name, f"choose one of {', '.join(DEVICES)} (or 'all')")
  return DEVICES[name]


# ---------------------------------------------------------------------------------------------
# Parameters and optimizer state: real shapes, per-device shards from the rules.


@dataclasses.dataclass(frozen=True)
class StateSizes:
  """Parameter and optimizer-state sizes of one config over one mesh (no devices needed)."""
  params_total: int  # elements
  params_per_device: int  # elements on one device
  param_bytes: int  # per device
  opt_state_bytes: int  # per device
  opt_state_total_bytes: int  # all devices' shards together, replicas counted once
  head_param_bytes: int  # per device: the unembedding (tied embedding table or 'unembed')
  layer_param_bytes_gathered: int  # one layer's weights as FSDP gathers them (tensor-split only)
  stack_param_bytes: int = 0  # per device: the layer stacks' weights (not embeddings, head)


def abstract_boxed_state(config):
  """The trainer's TrainState as ShapeDtypeStructs, still in their logical-axis boxes."""
  model = models.build_model(config, deterministic=False)
  tx = optimizers.make_optimizer(config.train)
  objective = objectives.get_objective(config.objective.name)

  def init(rng):
    # Any batch gives the same parameter shapes; tracing keeps even the dummy inputs abstract.
    return trainer.init_state_fn(model, tx, objective.init_args(1, config), rng)

  return jax.eval_shape(init, jax.eval_shape(lambda: jax.random.key(0)))


def _shard_bytes(leaf, sharding) -> int:
  return math.prod(sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize


def state_sizes(config, mesh) -> StateSizes:
  """Bytes of every state leaf on one device of `mesh` (an AbstractMesh is enough)."""
  rules = mesh_lib.rules_of(config.mesh)
  boxed = abstract_boxed_state(config)
  shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
  state = mesh_lib.unboxed(boxed)
  params, param_shardings = state.params, shardings.params
  per_leaf = jax.tree.map(_shard_bytes, params, param_shardings)
  head = 'embed' if config.model.tie_embeddings else 'unembed'
  head_bytes = sum(jax.tree.leaves(per_leaf.get(head, {})))
  return StateSizes(
      params_total=sum(x.size for x in jax.tree.leaves(params)),
      params_per_device=sum(math.prod(s.shard_shape(x.shape)) for x, s in zip(
          jax.tree.leaves(params), jax.tree.leaves(param_shardings))),
      param_bytes=sum(jax.tree.leaves(per_leaf)),
      opt_state_bytes=sum(jax.tree.leaves(jax.tree.map(_shard_bytes, state.opt_state,
                                                        shardings.opt_state))),
      opt_state_total_bytes=sum(x.size * np.dtype(x.dtype).itemsize
                                for x in jax.tree.leaves(state.opt_state)),
      head_param_bytes=head_bytes,
      layer_param_bytes_gathered=_gathered_layer_bytes(config, mesh, rules),
      stack_param_bytes=sum(b for path, b in jax.tree_util.tree_leaves_with_path(per_leaf)
                            if any(_is_layer_key(k) for k in path)))


def _is_layer_key(key) -> bool:
  """A path entry of a stack's layers: a scanned 'layers' or an unrolled 'layer_<i>'."""
  name = getattr(key, 'key', '')
  return name == 'layers' or (isinstance(name, str) and name.startswith('layer_'))


def _gathered_layer_bytes(config, mesh, rules) -> int:
  """One layer's float32 weights as FSDP all-gathers them: whole except for tensor splits."""
  fsdp = _axis_split('embed', mesh, rules)
  if fsdp == 1:
    return 0
  cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  _, mlp = flops_lib._layer_params(cfg)  # pylint: disable=protected-access
  mixer = max(flops_lib.mixer_params(cfg, kind) for kind in set(cfg.mixer.pattern))
  return (4 * mixer // _axis_split('heads', mesh, rules) +
          4 * mlp // _axis_split('mlp', mesh, rules))


def _axis_split(logical: str, mesh, rules) -> int:
  """How many ways the mesh cuts an array dimension named `logical` (1 when unmapped)."""
  entry = nn.logical_to_mesh_axes((logical,), rules)[0]
  return math.prod(mesh.shape[a] for a in mesh_lib.axes_of(entry))


# ---------------------------------------------------------------------------------------------
# Activations: bytes per sequence (row) on one device; see the module docstring.

# MLP hidden residuals per element of F: (arrays in the compute dtype, extra bytes).
MLP_RESIDUALS = {'relu': (1, 1), 'gelu': (6, 0), 'gelu_exact': (4, 0), 'swiglu': (6, 0),
                 'geglu': (8, 0)}


@dataclasses.dataclass(frozen=True)
class Split:
  """How many ways one device's activations are cut along each logical axis."""
  batch: int = 1
  length: int = 1
  embed: int = 1  # the 'act_embed' rule: activations' width
  heads: int = 1
  kv_heads: int = 1
  mlp: int = 1
  vocab: int = 1

  @classmethod
  def of(cls, mesh, rules) -> 'Split':
    names = {'embed': 'act_embed'}
    return cls(**{f.name: _axis_split(names.get(f.name, f.name), mesh, rules)
                  for f in dataclasses.fields(cls)})


def _cdiv(n: int, d: int) -> int:
  return -(-n // d)


@dataclasses.dataclass(frozen=True)
class _Dims:
  """Per-device widths of one model and its compute dtype's size `a` in bytes."""
  a: int
  d: int
  heads: int
  kv_heads: int
  head_dim: int
  f: int
  v: int
  norm: float  # bytes per element of D that one norm keeps
  post_norm: bool = False  # a second norm on each sublayer's output (norm_position='sandwich')
  qk_norm: bool = False  # a norm over head_dim of each query and key head (model.qk_norm)
  tile: int = 0  # context-parallel attention's tile (0: not context-parallel)
  context: int = 1  # devices a row is split over (mesh.context)

  @classmethod
  def of(cls, cfg: transformer.TransformerConfig, a: int, split: Split) -> '_Dims':
    return cls(a=a, d=_cdiv(cfg.d_model, split.embed), heads=_cdiv(cfg.num_heads, split.heads),
               kv_heads=_cdiv(cfg.num_kv_heads, split.kv_heads), head_dim=cfg.head_dim,
               f=_cdiv(cfg.d_ff, split.mlp), v=_cdiv(cfg.vocab_size, split.vocab),
               norm=(12 if cfg.norm == 'layernorm' else 8) + a,
               post_norm=cfg.norm_position == 'sandwich', qk_norm=cfg.qk_norm)


def _attention_half(m: _Dims, impl: str, t: int, s: int) -> dict[str, float]:
  """Residuals of one attention sublayer (norm included): `t` queries over `s` keys."""
  half = {'norm': t * m.d * m.norm, 'query': t * m.heads * m.head_dim * m.a,
          'key_value': s * 2 * m.kv_heads * m.head_dim * m.a,
          'attention_out': t * m.heads * m.head_dim * m.a}
  # QK-norm and a post-sublayer norm keep a norm's residuals less its output, which only RoPE
  # or the residual add reads (neither keeps it).
  if m.qk_norm:
    half['qk_norm'] = (t * m.heads + s * m.kv_heads) * m.head_dim * (m.norm - m.a)
  if m.post_norm:
    half['post_norm'] = t * m.d * (m.norm - m.a)
  if impl == 'xla':
    half['probs'] = t * m.heads * s * (4 + m.a)  # exp(scores) in float32, probabilities
  else:
    half['softmax_stats'] = t * m.heads * 4
  return half


def _mlp_half(m: _Dims, activation: str, t: int) -> dict[str, float]:
  arrays, extra = MLP_RESIDUALS[activation]
  half = {'norm': t * m.d * m.norm, 'hidden': t * m.f * (arrays * m.a + extra)}
  if m.post_norm:
    half['post_norm'] = t * m.d * (m.norm - m.a)
  return half


def _mixer_shape(cfg, m: _Dims, kind: str) -> flops_lib.MixerShape:
  """A recurrent mixer's widths on one device: its heads split like attention's."""
  return dataclasses.replace(flops_lib.mixer_shape(cfg, kind), heads=m.heads)


def _kernel_residuals(x: flops_lib.MixerShape, chunk: int, t: int,
                      learned: bool) -> dict[str, float]:
  """What JAX keeps per layer of research/layers/recurrent.py's `chunked` (float32
  throughout) for `t` tokens of one direction. A `learned` decay and write strength (Mamba-2,
  Gated DeltaNet; not linear attention's constant ones) need more for their gradients."""
  h, k, v, c = x.heads, x.key_dim, x.value_dim, chunk
  per_head = {
      # q and k in chunk layout (v too when beta is learned: its gradient reads v); the
      # scan's inputs q_state, k_last and u (w is recomputed).
      'chunks': (8 * k + 4 * v * learned) + (8 * k + 4 * v),
      # The decayed scores the scan reads; a learned decay also D [C, C] and QK^T.
      'scores': 4 * c + 8 * c * learned,
      'states': 4 * k * v / c,  # the state entering each chunk, saved by the scan
      'chunk_scalars': 16 * learned + 16 * x.delta,  # decays, betas per position
  }
  if x.delta:  # KK^T, its masked and beta-scaled copies, I + A (twice); the solve's U and W
    per_head['scores'] += 20 * c  # and each chunk's delta (from the scan)
    per_head['chunks'] += 4 * (k + v) + 4 * v
  return {name: t * h * b for name, b in per_head.items()}


def _kernel_inputs(x: flops_lib.MixerShape, kind: str, t: int, a: int) -> float:
  """What a rematerialised kernel (model.mixer.kernel_remat) keeps for `t` tokens: its q, k,
  v, decay and write strength, float32 (Mamba-2: its x per head, and C and B once for all heads
  in the compute dtype, before their broadcast). The reversed direction's are flips of these,
  which JAX recomputes."""
  if kind == 'mamba2':
    return t * (x.heads * (4 * x.value_dim + 8) + 2 * x.key_dim * a)
  return t * x.heads * (4 * (2 * x.key_dim + x.value_dim) + 8)


def _mixer_masks(m: _Dims, cfg, kind: str, t: int, causal: bool) -> float:
  """Bytes a recurrent mixer keeps that depend only on the segment ids, not on the layer's
  inputs: a scanned stack saves them once (JAX hoists them out of the scan), and XLA computes
  them once for an unrolled one. A learned decay's mask and -inf fill (1 + 4 per [C, C]
  entry) and the state's (1 + 4 per position), the delta rule's triangular-solve masks (10 per
  entry); linear attention's constant decay D and scalars, the zeros its feature map selects
  and its normaliser's column of ones. (The convolution's masks are rematerialised.)"""
  x = _mixer_shape(cfg, m, kind)
  c, h = cfg.mixer.chunk_size, x.heads
  if kind == 'linear_attention':
    kernel = t * h * (4 * c + 12)
    return t * h * (8 * x.head_dim + 4) + kernel * (1 if causal else 2)
  return t * h * (5 * c + 5 + x.delta * 10 * c) * (1 if causal else 2)


def _mixer_half(m: _Dims, cfg, kind: str, t: int, causal: bool) -> dict[str, float]:
  """Residuals of one recurrent mixer sublayer (norm included; research/layers/mixers.py) for
  `t` tokens, from JAX's saved residuals: bytes per element, float32 (4) unless `a`."""
  x = _mixer_shape(cfg, m, kind)
  h, p = x.heads, x.head_dim
  # ShortConv is rematerialised: it keeps only its (padded) input, in the compute dtype.
  half = {'norm': t * m.d * m.norm,
          'conv': t * x.conv_channels * m.a,
          'attention_out': t * h * p * m.a}
  if cfg.mixer.kernel_remat:  # the kernel keeps its inputs; its backward recomputes the rest
    half['kernel_inputs'] = _kernel_inputs(x, kind, t, m.a)
  else:
    kernel = _kernel_residuals(x, cfg.mixer.chunk_size, t, learned=kind != 'linear_attention')
    half.update({name: b * (1 if causal else 2) for name, b in kernel.items()})
  if kind == 'linear_attention':
    # phi(q), phi(k): ELU keeps two masks and a float32 array each, ReLU one mask; the
    # normaliser's division keeps the numerator (4 h p) and two float32 scalars per head.
    # Bidirectional: the diagonal counted twice is taken off, which keeps phi(q), phi(k), v
    # and q.k in float32.
    feature = 12 if cfg.mixer.feature_map == 'elu' else 2
    diagonal = 0 if causal else 8 * p + 4 * (p + 1) + 4
    half['mixer_io'] = t * h * (feature * p + 4 * p + 8 + diagonal)
  else:
    # Gated RMSNorm: the gate in float32, SiLU's (3 arrays), the normalised value and its
    # product with the gate; Mamba-2 adds the skip D x and y + D x, Gated DeltaNet q and k in
    # float32 for their L2 norms and the kernel's output y; softplus (3 per head), the norm's
    # and L2 norms' scalars.
    io = 32 * p if kind == 'mamba2' else 36 * p
    scalars = 20 if kind == 'mamba2' else 40
    half['mixer_io'] = t * h * (io + scalars)
  if m.post_norm:
    half['post_norm'] = t * m.d * (m.norm - m.a)
  return half


def _mixer_saved(policy: str, half: dict[str, float], m: _Dims, cfg, kind: str, t: int,
                 causal: bool) -> dict[str, float]:
  """What remat policy `policy` saves of a recurrent mixer sublayer. The mixers name their q,
  k, v (Mamba-2: C, B broadcast over heads, and x) and their output as attention does."""
  x = _mixer_shape(cfg, m, kind)
  h, p = x.heads, x.head_dim
  if policy == 'save_attention_out':
    return {'attention_out': half['attention_out']}
  if policy == 'save_qkv_attention':
    return {'qkv': t * h * (2 * x.key_dim + p) * m.a, 'attention_out': half['attention_out']}
  if policy in ('dots', 'dots_no_batch'):
    saved = {'projections': t * x.projections * m.a, 'out_proj': t * m.d * m.a}
    if policy == 'dots':  # also the kernel's batched matmuls: QK^T (and KK^T), the scan's;
      # the delta rule's block inverse (4 (C' - 1), C' = C rounded up to a power of two) and
      # its products U and W
      c, v = cfg.mixer.chunk_size, x.value_dim
      kernel = h * (4 * c * (1 + x.delta) + 4 * v * (2 + x.delta) + 4 * x.key_dim * v / c)
      if x.delta:
        kernel += h * (4 * ((1 << (c - 1).bit_length()) - 1) + 4 * (x.key_dim + v))
      saved['kernel_dots'] = t * kernel * (1 if causal else 2)
    return saved
  return {}


def _saved_by_policy(policy: str, kind: str, half: dict[str, float], m: _Dims, impl: str,
                     t: int, s: int, gated: bool) -> dict[str, float]:
  """What remat policy `policy` saves of one half ('attention' or 'mlp')."""
  if kind == 'mlp':
    if policy in ('dots', 'dots_no_batch'):
      return {'mlp_in': t * m.f * m.a * (2 if gated else 1)}  # w_in (and w_gate) outputs
    return {}
  if policy == 'save_attention_out':
    return {'attention_out': half['attention_out']}
  if policy == 'save_qkv_attention':
    return {k: half[k] for k in ('query', 'key_value', 'attention_out')}
  if policy in ('dots', 'dots_no_batch'):
    saved = {'query': half['query'], 'key_value': half['key_value'],
             'out_proj': t * m.d * m.a}
    if policy == 'dots':
      saved['attention_out'] = half['attention_out']  # probabilities x values is a matmul
      if impl == 'xla':
        saved['scores'] = t * m.heads * s * 4  # float32 (preferred_element_type)
    return saved
  return {}


def _overlap(saved: dict[str, float], half: dict[str, float], policy: str, rope: bool) -> float:
  """Bytes of `saved` that are also residuals of `half`: not recomputed in the backward."""
  same = {k: v for k, v in saved.items() if k in half}
  if policy in ('dots', 'dots_no_batch') and rope:
    same.pop('query', None)  # matmul outputs are pre-RoPE: q and k are recomputed
    if 'key_value' in same:
      same['key_value'] /= 2
  if 'mlp_in' in saved:
    same['hidden'] = saved['mlp_in']  # the pre-activation(s) are MLP residuals
  return sum(same.values())


@dataclasses.dataclass(frozen=True)
class _Stack:
  """Identical layers of one stack: their halves (residuals without remat) per row. A stack
  whose layers mix differently (`model.mixer`'s pattern) is one _Stack per mixer kind, all
  with the same `stack` index."""
  layers: int
  tokens: int  # queries per row
  # (kind, residuals, keys attended): kind 'attention', 'mlp' or a recurrent mixer's
  halves: tuple[tuple[str, dict[str, float], int], ...]
  stack: int = 0  # which of the model's stacks (encoder-decoder: 0 encoder, 1 decoder)
  causal: bool = True  # the self-mixing half's direction


def _is_context(impl: str) -> bool:
  return impl.startswith('context_')


def _stacks(config, cfg, m: _Dims, impl: str, split: Split) -> list[_Stack]:
  c = config
  if c.model.family == 'encoder_decoder':
    from research.objectives import span_corruption  # pylint: disable=g-import-not-at-top
    _, inputs_len, targets_len = span_corruption.lengths(c)
    s, t = _cdiv(inputs_len, split.length), _cdiv(targets_len, split.length)
    enc_layers = cfg.encoder_layers or cfg.num_layers
    dec_layers = cfg.decoder_layers or cfg.num_layers
    cross = ('attention', _attention_half(m, impl, t, s), s)
    return (_stack_parts(m, cfg, impl, enc_layers, s, (), stack=0, causal=False) +
            _stack_parts(m, cfg, impl, dec_layers, t, (cross,), stack=1, causal=True))
  t = _cdiv(c.data.seq_len, split.length)
  return _stack_parts(m, cfg, impl, cfg.num_layers, t, (), stack=0,
                      causal=c.model.family != 'encoder')


def _stack_parts(m: _Dims, cfg, impl: str, layers: int, t: int, extra: tuple, *, stack: int,
                 causal: bool) -> list[_Stack]:
  """One stack's layers grouped by their self-mixing sublayer (attention or a recurrent mixer,
  `model.mixer`), each followed by the `extra` halves (cross-attention) and the MLP."""
  kinds = cfg.mixer.layer_kinds(layers)
  parts = []
  for kind in dict.fromkeys(kinds):  # in order of first appearance
    if kind == 'attention':
      mixing = (kind, _attention_half(m, impl, t, t), t)
    else:
      mixing = (kind, _mixer_half(m, cfg, kind, t, causal), t)
    halves = (mixing, *extra, ('mlp', _mlp_half(m, cfg.activation, t), t))
    parts.append(_Stack(kinds.count(kind), t, halves, stack=stack, causal=causal))
  return parts


def _by_stack(stacks: list[_Stack]) -> list[list[_Stack]]:
  """The parts of each of the model's stacks, in order."""
  return [[p for p in stacks if p.stack == i] for i in dict.fromkeys(p.stack for p in stacks)]


def _attention_part(parts: list[_Stack]) -> _Stack:
  """The part of one stack with the most attention halves: its masks and position tables are
  the stack's (built once, whatever the layers between its attention layers)."""
  return max(parts, key=lambda p: sum(kind == 'attention' for kind, _, _ in p.halves))


def _layer_saved_and_working(stack: _Stack, policy: str, m: _Dims, impl: str,
                             cfg) -> tuple[float, float]:
  """(bytes one layer keeps until its backward, largest transient of its backward) per row."""
  gated = cfg.activation in ('swiglu', 'geglu')
  rope = cfg.position == 'rope'
  residuals = [sum(h.values()) for _, h, _ in stack.halves]
  temps = [_mixer_backward_temp(m, cfg, kind, stack.tokens) if kind in mixers.RECURRENT
           else _backward_temp(kind, h, m, impl, stack.tokens, s)
           for kind, h, s in stack.halves]
  if policy == 'none':
    return sum(residuals), max(temps)
  saved = [_mixer_saved(policy, h, m, cfg, kind, stack.tokens, stack.causal)
           if kind in mixers.RECURRENT else
           _saved_by_policy(policy, kind, h, m, impl, stack.tokens, s, gated)
           for kind, h, s in stack.halves]
  kept = stack.tokens * m.d * m.a + sum(sum(x.values()) for x in saved)  # + the layer input
  recompute = [r - _overlap(x, h, policy, rope)
               for r, x, (_, h, _) in zip(residuals, saved, stack.halves)]
  # The backward runs the halves last to first. XLA may recompute an earlier half late, after
  # the later half's backward, or early (measured on CPU: early for save_qkv_attention, late for
  # save_attention_out); plan for early: every earlier half's recomputation is still live.
  working = max(sum(recompute[:i + 1]) + temps[i] for i in range(len(temps)))
  return kept, working


def _mixer_backward_temp(m: _Dims, cfg, kind: str, t: int) -> float:
  """Gradient buffers live at once in a recurrent mixer's backward: those of the kernel's
  chunk-layout tensors, [C, C] scores and per-chunk states (one direction at a time), and with
  model.mixer.kernel_remat those tensors themselves, recomputed."""
  x = _mixer_shape(cfg, m, kind)
  kernel = _kernel_residuals(x, cfg.mixer.chunk_size, t, learned=kind != 'linear_attention')
  temp = sum(kernel[name] for name in ('chunks', 'scores', 'states'))
  return temp * (2 if cfg.mixer.kernel_remat else 1)


def _backward_temp(kind: str, half: dict[str, float], m: _Dims, impl: str, t: int,
                   s: int) -> float:
  """Gradient buffers live at once in one half's backward."""
  if kind == 'mlp':
    return 2 * t * m.f * m.a  # d hidden, d pre-activation
  if _is_context(impl):
    kv = 2 * m.kv_heads * m.head_dim * (m.a + 4)  # keys, values and their float32 gradients
    temp = 4 * t * m.heads * m.head_dim + 4 * 4 * m.heads * m.tile ** 2  # d q; one tile
    if impl == 'context_all_gather':
      return temp + t * m.context * kv  # the whole row, gathered
    return temp + 2 * t * kv  # the slice's accumulators and the block in flight
  if impl == 'xla':
    return 2 * t * m.heads * s * 4  # d probabilities, d scores (float32)
  return half['query'] + half['key_value']  # flash backward: d q, d k, d v


def activation_terms(config, cfg, *, a: int, impl: str, split: Split, rows: int,
                     sizes: StateSizes) -> dict[str, float]:
  """Named activation bytes on one device for one micro-batch of `rows` sequences."""
  m = _Dims.of(cfg, a, split)
  if _is_context(impl):
    causal = config.model.family == 'decoder'
    m = dataclasses.replace(m, context=split.length, tile=context_parallel.tile_size(
        cfg.attention.block_size, config.data.seq_len, split.length, causal))
  policy = cfg.remat
  terms = {'layers': 0.0, 'shared': 0.0, 'head': 0.0, 'weight_copies': 0.0,
           'dropout_masks': 0.0}
  working = []
  stacks = _stacks(config, cfg, m, impl, split)
  for stack in stacks:
    kept, layer_working = _layer_saved_and_working(stack, policy, m, impl, cfg)
    terms['layers'] += stack.layers * kept * rows
    working.append(layer_working * rows)
    if cfg.dropout > 0 and policy == 'none':  # boolean masks: one per sublayer
      terms['dropout_masks'] += rows * stack.tokens * m.d * len(stack.halves) * stack.layers
    if policy == 'none':  # with remat they are recomputed with the rest of the layer
      terms['shared'] += rows * sum(_mixer_masks(m, cfg, kind, stack.tokens, stack.causal)
                                    for kind, _, _ in stack.halves if kind in mixers.RECURRENT)
  for parts in _by_stack(stacks):
    part = _attention_part(parts)
    terms['shared'] += rows * _shared(part, m, impl, cfg, policy)
    terms['shared'] += rows * part.tokens * m.d * m.norm  # the stack's final norm
    if cfg.dropout > 0 and policy == 'none':  # and one at the stack's input
      terms['dropout_masks'] += rows * part.tokens * m.d
  terms['shared'] += _relative_bias([_attention_part(p) for p in _by_stack(stacks)], m, cfg)
  terms['head'], head_working = _head(config, m, rows, stacks[-1].tokens, sizes)
  working.append(head_working)
  if a < 4:  # compute-dtype weight copies kept for the backward
    terms['weight_copies'] = (sizes.param_bytes if policy == 'none'
                              else sizes.head_param_bytes) * a / 4
  terms['working_set'] = max(working) + sizes.layer_param_bytes_gathered * a / 4
  stages, micro = pipeline.stages_of(config), pipeline.micro_batches_of(config)
  if stages > 1:
    repeats = pipeline.repeats_of(config)
    _pipeline_terms(terms, working, _by_stack(stacks)[0], m, impl, cfg, rows=rows,
                    stages=stages, micro=micro, repeats=repeats)
    if repeats > 1:  # the stacks' weights reshuffled into the circular order, and their grads
      terms['circular_weights'] = 2 * sizes.stack_param_bytes
    terms['working_set'] = max(working) + sizes.layer_param_bytes_gathered * a / 4
  return terms


def _pipeline_terms(terms, working, parts: list[_Stack], m: '_Dims', impl: str, cfg, *,
                    rows: int, stages: int, micro: int, repeats: int) -> None:
  """The pipeline (research/parallel/pipeline.py) in place of the whole stack on every device:
  a device runs I = R M + S - 1 iterations of one chunk, k = L / (R S) layers, for b = rows / M
  rows each, keeping every iteration's residuals for the backward (all forwards, then all
  backwards).

  Per device: the layers' residuals x I k b / (L rows) = I / (R S M) of the unpipelined
  stack's; with remat 'full', applied to the whole chunk, only each iteration's stage input,
  and the working set gains one chunk's full residuals for b rows (recomputed in the
  backward). Other policies apply per layer, as unpipelined; the TPU compiler's peak for them
  is higher than these terms (Llama 3.1 70B, 4 stages x fsdp 16, save_qkv_attention, 2,048
  tokens: 55.5 GiB a chip against 38.8 planned), a gap not yet explained. The buffer's per-iteration copies and
  the collected outputs, I b + rows rows of D, are the 'pipeline_buffer' term."""
  b, iterations = rows / micro, pipeline.iterations(stages, micro, repeats)
  layers = sum(p.layers for p in parts)
  chunk = layers // (stages * repeats)
  row_bytes = parts[0].tokens * m.d * m.a  # one row of the residual stream
  if cfg.remat == 'full':
    terms['layers'] = iterations * b * row_bytes
    # A chunk's layers are the stack's mix of kinds (on average).
    full = sum(p.layers * _layer_saved_and_working(p, 'none', m, impl, cfg)[0]
               for p in parts) / layers
    working.append(chunk * full * b)
  else:
    terms['layers'] *= iterations / (repeats * stages * micro)
  for i in range(len(parts)):  # a layer's working set, for one micro-batch
    working[i] = working[i] / micro
  terms['pipeline_buffer'] = (iterations * b + rows) * row_bytes


def _shared(stack: _Stack, m: _Dims, impl: str, cfg, policy: str) -> float:
  """Per-row bytes kept once per stack: masks, the XLA softmax's fill value, RoPE tables."""
  shared = 0.0
  attention = [s for kind, _, s in stack.halves if kind == 'attention']
  for s in attention:
    if _is_context(impl):  # context-parallel masks are per tile
      continue
    shared += stack.tokens * s  # boolean mask [T, S]
    if impl == 'xla' and policy == 'none':
      shared += stack.tokens * m.heads * s * 4  # masked-score fill, float32
  if policy == 'none':
    if cfg.position == 'rope' and attention:
      shared += stack.tokens * m.head_dim * 8  # cos and sin (float32, K/2) for queries and keys
    if cfg.activation == 'relu':
      shared += stack.tokens * m.f * m.a  # the zeros ReLU's select keeps
  return shared


def _relative_bias(stacks: list[_Stack], m: _Dims, cfg) -> float:
  """T5's relative position bias: one [H, T, S] float32 table and its bucket ids per attention
  half, the same for every row."""
  if cfg.position != 'relative':
    return 0.0
  return sum(stack.tokens * s * (4 * m.heads + 4) for stack in stacks
             for kind, _, s in stack.halves if kind == 'attention')


def _head(config, m: _Dims, rows: int, t: int, sizes: StateSizes) -> tuple[float, float]:
  """(saved, working-set) bytes of the output head and loss for `rows` rows of `t` tokens."""
  chunk = int(config.model.get('loss_chunk_size', 0) or 0)
  if chunk > 0:
    # The fused chunked loss keeps d hidden and the head's gradient; [B, chunk, V] at a time.
    return rows * t * m.d * m.a + sizes.head_param_bytes, 3 * 4 * rows * min(chunk, t) * m.v
  saved = rows * t * m.v * 4  # exp(logits - logsumexp), float32
  if config.model.get('head_transform', False):
    saved += rows * t * m.d * (m.a + MLP_RESIDUALS[config.model.activation][0] * m.a + m.norm)
  # d logits in float32, and its compute-dtype copy that the unembedding's backward reads.
  return saved, (4 + m.a) * rows * t * m.v


# ---------------------------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True)
class Plan:
  """Memory per device and FLOPs of one training step of a config on a device and mesh."""
  config_name: str
  device: Device
  num_devices: int
  mesh: dict[str, int]
  batch_shards: int
  batch_size: int
  seq_len: int
  micro_batches: int
  rows_per_device: int  # sequences per device per micro-batch
  compute_dtype: str
  dtype_reason: str
  attention_impl: str
  remat: str
  scan_layers: bool
  params_total: int
  params_per_device: int
  param_bytes: int
  grad_bytes: int
  opt_state_bytes: int
  opt_state_total_bytes: int
  # Per device, of the state above, what train.offload keeps in pinned host memory between
  # steps (see total_bytes for what that saves at the step's peak).
  host_bytes: int
  offload: str  # train.offload
  activation_terms: dict[str, float]
  flops_per_token: float
  flops_per_step: float
  mfu: float = DEFAULT_MFU
  headroom: float = HEADROOM
  pipeline_stages: int = 1  # mesh.stage
  pipeline_micro_batches: int = 1  # pipeline micro-batches per train micro-batch
  pipeline_repeats: int = 1  # mesh.pipeline_repeats
  # Peak learning rate per parameter class (train.effective_lr: μP, train.lr_exponents).
  learning_rates: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def bubble_fraction(self) -> float:
    """The pipeline's idle share of the step, (S - 1) / (R M + S - 1); 0 without one."""
    return pipeline.bubble_fraction(self.pipeline_stages, self.pipeline_micro_batches,
                                    self.pipeline_repeats)

  @property
  def activation_bytes(self) -> float:
    return sum(self.activation_terms.values())

  @property
  def total_bytes(self) -> float:
    """HBM per device at the step's peak. Offloaded optimizer state visits HBM only for the
    update, after the backward pass has freed the activations: the larger of the two counts.
    Offloaded parameters are on the device for the whole step: they count as before."""
    total = self.param_bytes + self.grad_bytes + self.opt_state_bytes + self.activation_bytes
    return total - self.offload_saved_bytes

  @property
  def offload_saved_bytes(self) -> float:
    if 'opt_state' not in config_lib.OFFLOAD[self.offload]:
      return 0
    return min(self.opt_state_bytes, self.activation_bytes)

  @property
  def usable_bytes(self) -> float:
    return self.device.hbm_bytes * (1 - self.headroom)

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.usable_bytes

  @property
  def step_time_s(self) -> float:
    """FLOPs over the devices' peak at `mfu`, stretched by the pipeline bubble: the devices
    compute R M chunks' work in R M + S - 1 iterations."""
    compute = self.flops_per_step / (self.num_devices * self.device.peak_flops * self.mfu)
    return compute / (1 - self.bubble_fraction)

  def to_dict(self) -> dict:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'device'}
    out.update(device=self.device.name, device_label=self.device.label,
               hbm_bytes=self.device.hbm_bytes, activation_bytes=self.activation_bytes,
               total_bytes=self.total_bytes, usable_bytes=self.usable_bytes, fits=self.fits,
               step_time_s=self.step_time_s, bubble_fraction=self.bubble_fraction,
               tokens_per_sec=self.batch_size * self.seq_len / self.step_time_s)
    return out


def resolve_num_devices(config, num_devices: int | None = None) -> int:
  """`num_devices`, else the mesh config's product when it has no -1, else this host's."""
  if num_devices:
    return num_devices
  sizes = mesh_lib.axis_sizes(config.mesh).values()
  if -1 in sizes:
    return jax.device_count()
  return math.prod(sizes)


def compute_dtype(config, device: Device) -> tuple[str, str]:
  """The compute dtype on `device` and why: 'auto' is bfloat16 on GPU and TPU."""
  name = config.model.dtype
  if name == 'auto':
    return 'bfloat16', f"model.dtype='auto' on {device.platform}"
  transformer.resolve_dtype(name)  # validates the name
  return name, f'model.dtype={name!r}'


def attention_impl(config, device: Device, dtype: str, context: int = 1) -> str:
  """research.layers.attention.resolve_implementation of full attention, for the target
  device's platform (sparse patterns are planned as full attention: an upper bound); over a
  context axis of `context` > 1 devices, 'context_<strategy>'."""
  att = models.transformer.attention_section(config.model)
  if context > 1:
    return f'context_{att.context_strategy}'
  impl = att.implementation
  if impl != 'auto':
    return impl
  return 'cudnn' if device.platform == 'gpu' and dtype in ('bfloat16', 'float16') else 'xla'


def _check_batch(config, batch_shards: int) -> None:
  micro = config.train.batch_size // config.train.micro_batches
  if micro % batch_shards:
    raise ConfigError('train.batch_size', config.train.batch_size,
                      f'each of the {config.train.micro_batches} micro-batches ({micro} '
                      f'sequences) must divide over the {batch_shards} batch shards of the mesh')


def plan_devices(config, *, num_devices: int | None = None,
                 devices=tuple(DEVICES)) -> list[Plan]:
  """One Plan per named device; the state's shapes are traced once."""
  targets = [get_device(d) if isinstance(d, str) else d for d in devices]
  n = resolve_num_devices(config, num_devices)
  mesh = mesh_lib.abstract_mesh(config.mesh, n)
  rules = mesh_lib.rules_of(config.mesh)
  split = Split.of(mesh, rules)
  _check_batch(config, split.batch)
  sizes = state_sizes(config, mesh)
  cfg = models.transformer_config(config.model, seq_len=config.data.seq_len)
  c = config
  flops_per_step = flops_lib.flops_per_step(cfg, c)
  rows = c.train.batch_size // c.train.micro_batches // split.batch
  grad_bytes = sizes.param_bytes * (2 if c.train.micro_batches > 1 else 1)
  offload = c.train.get('offload', 'none')
  offloaded = {'params': sizes.param_bytes, 'opt_state': sizes.opt_state_bytes}
  host_bytes = sum(offloaded[field] for field in config_lib.OFFLOAD[offload])
  plans = []
  for device in targets:
    dtype, reason = compute_dtype(c, device)
    impl = attention_impl(c, device, dtype, split.length)
    terms = activation_terms(c, cfg, a=jnp.dtype(dtype).itemsize, impl=impl, split=split,
                             rows=rows, sizes=sizes)
    plans.append(Plan(
        config_name=c.name, device=device, num_devices=n, mesh=dict(mesh.shape),
        batch_shards=split.batch, batch_size=c.train.batch_size, seq_len=c.data.seq_len,
        micro_batches=c.train.micro_batches, rows_per_device=rows, compute_dtype=dtype,
        dtype_reason=reason, attention_impl=impl, remat=cfg.remat, scan_layers=cfg.scan_layers,
        params_total=sizes.params_total, params_per_device=sizes.params_per_device,
        param_bytes=sizes.param_bytes, grad_bytes=grad_bytes,
        opt_state_bytes=sizes.opt_state_bytes,
        opt_state_total_bytes=sizes.opt_state_total_bytes, host_bytes=host_bytes,
        offload=offload, activation_terms=terms,
        flops_per_token=flops_per_step / (c.train.batch_size * c.data.seq_len),
        flops_per_step=flops_per_step, pipeline_stages=pipeline.stages_of(c),
        pipeline_micro_batches=pipeline.micro_batches_of(c) if pipeline.stages_of(c) > 1 else 1,
        pipeline_repeats=pipeline.repeats_of(c), learning_rates=learning_rates(c)))
  return plans


def learning_rates(config) -> dict[str, float]:
  """Each parameter class's peak learning rate (research/training/optimizers.py)."""
  factors = optimizers.lr_factors(config.train, config.model)
  return {name: config.train.lr * factor for name, factor in factors.items()}


def plan(config, *, num_devices: int | None = None, device: str = 'h100-80gb') -> Plan:
  """Memory per device and FLOPs of one training step of `config` on `device`s."""
  return plan_devices(config, num_devices=num_devices, devices=(device,))[0]


# ---------------------------------------------------------------------------------------------
# Text.

_TERM_LABELS = {'layers': 'saved by the layers', 'shared': 'shared (masks, final norms)',
                'head': 'head and loss', 'weight_copies': 'compute-dtype weight copies',
                'dropout_masks': 'dropout masks', 'working_set': 'backward working set',
                'pipeline_buffer': 'pipeline buffer (stage inputs, outputs)',
                'circular_weights': 'circular pipeline: reshuffled layer weights, grads'}


def _gib(n: float) -> str:
  return f'{n / GiB:,.2f} GiB'


def format_plan(p: Plan) -> str:
  """The plan as an aligned table: GiB to two decimals, counts with thousands separators."""
  mesh = ' x '.join(f'{a}={s}' for a, s in p.mesh.items() if s != 1) or 'data=1'
  grads = 'gradients (float32' + (', + accumulator)' if p.micro_batches > 1 else ')')
  rows = [('', 'total', 'per device'),
          ('parameters', f'{p.params_total:,}', f'{p.params_per_device:,}'),
          ('parameters (float32)', _gib(4 * p.params_total), _gib(p.param_bytes)),
          (grads, _gib(4 * p.params_total * p.grad_bytes / p.param_bytes), _gib(p.grad_bytes)),
          ('optimizer state', _gib(p.opt_state_total_bytes), _gib(p.opt_state_bytes)),
          (f'activations (remat {p.remat})', '', _gib(p.activation_bytes))]
  rows += [(f'  {_TERM_LABELS[k]}', '', _gib(v)) for k, v in p.activation_terms.items() if v]
  if p.host_bytes:
    saved = '-' + _gib(p.offload_saved_bytes)
    rows.append((f'offload ({p.offload}), saved at the peak', '', saved))
  rows.append(('total', '', _gib(p.total_bytes)))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  table = '\n'.join(f'  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}'.rstrip()
                    for r in rows)
  verdict = 'fits' if p.fits else 'does NOT fit'
  plural = lambda n, word, suffix='s': f'{n:,} {word}{suffix if n != 1 else ""}'
  return '\n'.join([
      f'{p.config_name} on {p.num_devices} x {p.device.label} ({p.device.name}), mesh {mesh}',
      f'batch {p.batch_size:,} x {p.seq_len:,} tokens, '
      f'{plural(p.micro_batches, "micro-batch", "es")}: '
      f'{plural(p.rows_per_device, "sequence")} per device per micro-batch',
      f'compute {p.compute_dtype} ({p.dtype_reason}), attention {p.attention_impl}, '
      f'scan_layers {"on" if p.scan_layers else "off"}', *_pipeline_line(p),
      *_learning_rate_line(p), '', table, '',
      f'{verdict} on {p.device.name}: {_gib(p.total_bytes)} of {_gib(p.usable_bytes)} usable '
      f'({p.device.hbm_bytes / GiB:g} GiB less {p.headroom:.0%} headroom), '
      f'{p.total_bytes / p.usable_bytes:.0%}', *_host_line(p),
      f'FLOPs: {p.flops_per_token:.3g} per token, {p.flops_per_step:.3g} per step',
      f'step time at {p.mfu:.0%} MFU: {p.step_time_s * 1e3:,.1f} ms '
      f'({p.batch_size * p.seq_len / p.step_time_s:,.0f} tokens/s; compute only)'])


def _host_line(p: Plan) -> list[str]:
  if not p.host_bytes:
    return []
  return [f'pinned host memory: {_gib(p.host_bytes)} per device between steps '
          f'(train.offload={p.offload!r})']


def _pipeline_line(p: Plan) -> list[str]:
  if p.pipeline_stages == 1:
    return []
  kind = ('GPipe' if p.pipeline_repeats == 1
          else f'circular, {p.pipeline_repeats} repeats')
  return [f'pipeline ({kind}): {p.pipeline_stages} stages x {p.pipeline_micro_batches} '
          f'micro-batches, bubble {p.bubble_fraction:.1%} of the step; parameters and '
          f'activations below are per device, i.e. per stage shard']


def _learning_rate_line(p: Plan) -> list[str]:
  if not p.learning_rates:
    return []
  rates = ', '.join(f'{name} {lr:.3g}' for name, lr in p.learning_rates.items())
  return [f'peak learning rate per class: {rates}']


def format_devices(plans: list[Plan]) -> str:
  """One row per device: what one device needs, what it has, and the verdict."""
  rows = [('device', 'HBM', 'needed', 'dtype', 'attention', 'fits', f'step @{DEFAULT_MFU:.0%} MFU')]
  for p in plans:
    rows.append((p.device.name, _gib(p.device.hbm_bytes), _gib(p.total_bytes), p.compute_dtype,
                 p.attention_impl, 'yes' if p.fits else 'no', f'{p.step_time_s * 1e3:,.1f} ms'))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return '\n'.join('  '.join(f'{c:<{w}}' if i == 0 else f'{c:>{w}}'
                             for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


# ---------------------------------------------------------------------------------------------
# Command.

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a command, so importing this module next to another entry point
  (research.shardings also has --num_devices) never defines a flag twice."""
  flags.DEFINE_string('device', 'h100-80gb',
                      f"device to plan for: {', '.join(DEVICES)}, or 'all' for one row each")
  flags.DEFINE_integer('num_devices', 0, 'devices to plan the mesh over (need not exist here); '
                       "0: the mesh config's product, or this host's devices if it has a -1")
  flags.DEFINE_bool('json', False, 'print one JSON line instead of the table')


def main(config, argv):
  del argv
  names = tuple(DEVICES) if FLAGS.device == 'all' else (FLAGS.device,)
  for name in names:
    get_device(name)  # an unknown name fails before any tracing
  plans = plan_devices(config, num_devices=FLAGS.num_devices or None, devices=names)
  if FLAGS.json:
    out = plans[0].to_dict() if len(plans) == 1 else {'devices': [p.to_dict() for p in plans]}
    print(json.dumps(out))
  elif len(plans) == 1:
    print(format_plan(plans[0]))
  else:
    print(format_plan(plans[0]) + '\n\n' + format_devices(plans))


if __name__ == '__main__':
  define_flags()
  cli.run_with_config(main)
