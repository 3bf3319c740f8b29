"""Configs: a documented base, config files with variants, command-line overrides, validation.

A config file defines `get_config(arg=None)` returning an `ml_collections.ConfigDict` built on
`base_config()`; `path:arg` selects a variant. Overrides are `--config.a.b=value`; a key that the
config does not have is an error, and a value is parsed to the type the field already has.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Sequence

import ml_collections

from research.errors import ConfigError, UserError

# Logical axis -> mesh axes. Parameters use 'embed'; activations use 'act_embed', which stays
# replicated so that FSDP shards weights but not the residual stream's width. Only activations
# name 'length' (the sequence), so the context axis never cuts a parameter; at mesh.context=1 it
# cuts nothing.
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp', 'expert')),
    ('length', 'context'),
    ('embed', 'fsdp'),
    ('act_embed', None),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('expert', 'expert'),
    # Scanned layer stacks [L, ...]: contiguous blocks of L / mesh.stage layers per pipeline
  # stage (a size-1 'stage' axis shards nothing).
  ('layers', 'stage'),
)

# train.offload -> the TrainState fields kept in pinned host memory between steps
# (research.training.trainer places them; research.plan counts them off the device).
OFFLOAD = {'none': (), 'optimizer': ('opt_state',), 'optimizer_and_params': ('opt_state', 'params')}


def base_config() -> ml_collections.ConfigDict:
  """Every field lmforge reads, with its default. Config files start from this."""
  c = ml_collections.ConfigDict()
  c.name = 'base'  # a label saved with the run (config.json)
  c.seed = 0  # parameter initialisation and batch order (batches are a function of seed, step)

  c.data = ml_collections.ConfigDict()
  # 'shakespeare' | 'prepared:PATH' (python -m research.data.prepare's --out, local or gs://)
  # | 'tfds:NAME' | 'text:GLOB' | 'jsonl:GLOB' | 'parquet:GLOB' (prepared into the cache on
  # first use). See research/data/sources.py and research/data/pipeline.py.
  c.data.source = 'shakespeare'
  c.data.text_key = 'text'  # the text's feature, field or column (tfds, jsonl, parquet)
  # A mixture instead of data.source: 'NAME=WEIGHT,...' over the named sources below; each row
  # of a batch comes from one source, drawn by weight; eval reports eval/NAME/loss per source.
  c.data.mixture = ''
  c.data.sources = ''  # 'NAME=SOURCE,...', e.g. 'web=prepared:/data/fw,code=prepared:/data/py'
  c.data.validation_fraction = 0.01  # jsonl/parquet documents held out (by hash of their key)
  # Grain worker processes building batches (objective transforms included) on each host; 0
  # builds each batch in the trainer's own thread, just before its transfer. Pods: a few.
  c.data.workers = 0
  c.data.vocab_size = 4096  # sentencepiece vocabulary (specials, sentinels, byte fallback incl.)
  # '' trains one on a sample of the train split; else a tokenizer.model, a tokenizer.json or a
  # directory with one (an HF model directory, a workdir): research/data/tokenizer.py
  c.data.tokenizer = ''
  c.data.tokenizer_type = 'bpe'  # 'bpe' | 'unigram'
  c.data.num_sentinels = 100  # T5 span-corruption sentinels reserved in the vocabulary
  c.data.cache_dir = ''  # '' means $LMFORGE_CACHE or ~/.cache/lmforge
  c.data.data_dir = ''  # TFDS data_dir for tfds: sources; '' means TFDS's default
  c.data.seq_len = 256

  c.model = ml_collections.ConfigDict()
  c.model.family = 'decoder'  # 'decoder' | 'encoder' | 'encoder_decoder'
  c.model.vocab_size = 0  # 0: data.vocab_size; larger pads (e.g. GPT-2's 50,257 -> 50,304)
  c.model.d_model = 256  # residual stream width
  c.model.num_layers = 4  # transformer blocks (encoder_layers/decoder_layers for T5)
  c.model.num_heads = 4  # query heads
  c.model.num_kv_heads = 0  # 0: num_heads (multi-head); fewer: grouped-query attention
  c.model.head_dim = 0  # 0: d_model // num_heads
  c.model.d_ff = 0  # 0: 4 x d_model (ReLU/GELU) or 8/3 x d_model rounded to 256 (SwiGLU)
  c.model.activation = 'gelu'  # 'relu' | 'gelu' (tanh) | 'gelu_exact' | 'swiglu' | 'geglu'
  # 'rmsnorm' | 'layernorm' | 'rmsnorm_plus_one' (Gemma: x (1 + scale), scale starts at 0)
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = 1e-6
  # 'pre' (GPT-2, Llama, T5) | 'post' (BERT) | 'sandwich' (Gemma 2/3: pre- and post-sublayer)
  c.model.norm_position = 'pre'
  c.model.position = 'rope'  # 'rope' | 'learned' | 'sinusoidal' | 'relative' (T5) | 'none'
  c.model.rope_theta = 10_000.0
  # RoPE frequency scaling (research/layers/positions.py): 'none' | 'linear' (divide by factor)
  # | 'llama3' (Llama 3.1+: low frequencies by factor, high ones kept, smooth in between).
  c.model.rope_scaling = ml_collections.ConfigDict()
  c.model.rope_scaling.kind = 'none'
  c.model.rope_scaling.factor = 1.0
  c.model.rope_scaling.low_freq_factor = 1.0  # llama3
  c.model.rope_scaling.high_freq_factor = 4.0  # llama3
  c.model.rope_scaling.original_max_len = 8192  # llama3: the pre-training context
  # RoPE base of sliding-window layers, unscaled (Gemma 3: 10k local, 1M global); 0: rope_theta
  # and rope_scaling as for every layer.
  c.model.rope_local_theta = 0.0
  c.model.qkv_bias = False  # biases on the query/key/value projections only (Qwen2)
  c.model.qk_norm = False  # model.norm over each head's queries and keys before RoPE (Qwen3)
  c.model.relative_buckets = 32  # T5 relative position bias: buckets and max distance
  c.model.relative_max_distance = 128
  c.model.attention_scale = 0.0  # 0: 1/sqrt(head_dim); T5 uses 1.0
  # Soft-capping, cap x tanh(x / cap), of attention scores and of the output logits (Gemma 2);
  # 0: none. Capped scores run on the XLA and blockwise attention paths only.
  c.model.attention_softcap = 0.0
  c.model.final_softcap = 0.0
  c.model.embed_scale = False  # decoder: token embeddings x sqrt(d_model) (Gemma)
  c.model.max_len = 0  # table length for learned/sinusoidal positions; 0: data.seq_len
  c.model.tie_embeddings = True
  c.model.use_bias = False
  c.model.dropout = 0.0  # on attention and feed-forward outputs, in training only
  c.model.init_std = 0.02  # normal initialisation of the weight matrices
  # 'sp' (standard) | 'mup': μP for Adam (Yang et al. 2022, Tensor Programs V, Table 8, the
  # `mup` package's MuReadout form). With w = d_model / base_width: hidden matrices (attention,
  # feed-forward, experts, router) start at init_std / sqrt(w) and learn at lr / w; logits are
  # multiplied by 1/w (on the shared table when tied); attention scores by sqrt(base head_dim)
  # / head_dim instead of 1/sqrt(head_dim); embeddings, norms and biases are unchanged. Exactly
  # SP at the base width. research/models/transformer.py and research/training/optimizers.py.
  c.model.parameterization = 'sp'
  # The d_model at which every parameterization is SP, the base of w above and of
  # train.lr_exponents; 0: d_model (w = 1). The base model keeps the heads and derives
  # head_dim and d_ff from its width, so leave those at 0 (derived) when sweeping widths.
  c.model.base_width = 0
  c.model.dtype = 'auto'  # compute dtype: 'auto' (bf16 on GPU/TPU, f32 on CPU) | float32 | ...
  c.model.scan_layers = False  # one nn.scan over layers: constant compile time in depth
  c.model.remat = 'none'  # see research.models.transformer.REMAT_POLICIES
  # Attention patterns and kernels (research/layers/patterns.py, research/layers/attention.py).
  c.model.attention = ml_collections.ConfigDict()
  # Per-layer patterns, cyclic: 'full' | 'sliding' | 'longformer' | 'bigbird' | 'chunked', with
  # repeats, e.g. 'sliding*5,full' (five local layers : one global). Causal in decoders,
  # bidirectional in encoders. The fields below are shared by the layers that use them.
  c.model.attention.pattern = 'full'
  c.model.attention.window = 0  # sliding/longformer: |i - j| < window; bigbird: blocks x size
  c.model.attention.global_tokens = 0  # longformer: the first N tokens; bigbird: N / block_size
  c.model.attention.block_size = 64  # blockwise kernel tile; BigBird's block
  c.model.attention.random_blocks = 0  # bigbird: random key blocks per query block
  c.model.attention.chunk = 0  # chunked: attention inside chunks of this many tokens
  # 'auto' (fastest available per layer) | 'xla' (dense, masked) | 'blockwise' (block-sparse
  # XLA, linear for sparse patterns) | 'cudnn' (GPU) | 'splash' (TPU)
  c.model.attention.implementation = 'auto'
  c.model.attention.seed = 0  # bigbird's random blocks
  # With mesh.context > 1: 'all_gather' (every device gathers all keys/values, MaxText's
  # default; simple, O(seq_len) key/value memory) | 'ring' (key/value blocks pass round the
  # context devices, flash-style accumulation: one block in memory; windows skip the blocks
  # they cannot reach). block_size is the tile of both.
  c.model.attention.context_strategy = 'all_gather'
  # Sequence mixers per layer (research/layers/mixers.py): softmax attention or a recurrent
  # mixer with a constant-size state, cyclic like attention patterns: 'attention' |
  # 'linear_attention' | 'mamba2' | 'gated_deltanet', e.g. 'gated_deltanet*3,attention' (3:1).
  c.model.mixer = ml_collections.ConfigDict()
  c.model.mixer.pattern = 'attention'
  c.model.mixer.chunk_size = 64  # chunkwise-parallel form: min(it, data.seq_len) divides seq_len
  c.model.mixer.conv_width = 4  # short causal convolution taps (mamba2, gated_deltanet); 1: none
  c.model.mixer.state_dim = 64  # mamba2: N, the entries of B and C per token
  c.model.mixer.expand = 2  # mamba2: d_inner = expand x d_model, split over model.num_heads
  c.model.mixer.feature_map = 'elu'  # linear_attention: 'elu' (elu + 1) | 'relu'
  # Recompute the chunkwise kernel's float32 intermediates in the backward pass (a few % more
  # layer FLOPs, about half the layer's activations); False keeps them.
  c.model.mixer.kernel_remat = True
  # Loss over this many sequence positions at a time: never [B, T, V] float32 logits in memory
  # (decoder); 0: the whole logits at once. See research/objectives/causal_lm.py.
  c.model.loss_chunk_size = 0
  # A Dense(1) on the final-normed hidden states: a reward model's score or PPO's value head
  # (decoder, encoder: the `scalars` method, one float32 value per position). Objective
  # 'reward' sets it; a fine-tune keeps it when init_from's model has one.
  c.model.scalar_head = False
  # Encoder (BERT) extras; see research/models/encoder.py.
  c.model.type_vocab_size = 0  # token-type (segment A/B) embeddings: BERT 2; 0: none
  c.model.embed_norm = False  # norm (model.norm) on the summed input embeddings
  c.model.head_transform = False  # MLM head: dense + activation + norm before the unembedding
  c.model.output_bias = False  # a [V] bias on the logits (BERT's MLM decoder bias)
  c.model.encoder_layers = 0  # encoder-decoder: encoder depth; 0: num_layers
  c.model.decoder_layers = 0  # encoder-decoder: decoder depth; 0: num_layers
  # Mixture of experts (research/layers/moe.py has the details and conventions).
  c.model.moe = ml_collections.ConfigDict()
  c.model.moe.num_experts = 0  # 0: dense feed-forward in every layer
  c.model.moe.every = 1  # layer i (0-based) is MoE when (i + 1) % every == 0; scan needs 1
  c.model.moe.router = 'top_k'  # 'top_k' (capacity) | 'dropless' (ragged_dot) | 'expert_choice'
  c.model.moe.top_k = 2  # experts per token: 1 Switch, 2 GShard/Mixtral
  c.model.moe.softmax_order = 'before_top_k'  # gates: 'before_top_k' (Switch) | 'after_top_k'
  # Capacity per expert and sequence: ceil(factor x T x (top_k if per_choice else 1) / E), in
  # [1, T]; top_k and expert_choice routers. Assignments over capacity are dropped (residual).
  c.model.moe.capacity_factor = 1.25
  c.model.moe.capacity_per_choice = True
  c.model.moe.d_ff = 0  # expert width; 0: model.d_ff
  c.model.moe.num_shared_experts = 0  # dense experts every token uses (DeepSeek-MoE)
  c.model.moe.jitter = 0.0  # router-input noise U[1 - jitter, 1 + jitter] in training (Switch)
  c.model.moe.balance = 'aux_loss'  # 'aux_loss' (Switch loss) | 'aux_free' (DeepSeek-V3 bias)
  c.model.moe.load_balance_coef = 0.01  # x Switch load-balancing loss (1.0 when uniform)
  c.model.moe.z_loss_coef = 1e-3  # x router z-loss, mean logsumexp(logits)^2
  c.model.moe.bias_update_rate = 1e-3  # aux_free: bias += rate x sign(mean load - load)
  c.model.moe.allow_noncausal = False  # permit expert_choice (non-causal) in decoders
  # Quantized matmuls through Qwix (research/layers/quantization.py has the details).
  c.model.quantization = ml_collections.ConfigDict()
  # 'none' | 'qat' (int8/fp8 matmuls in training, straight-through gradients) | 'ptq' (weights
  # stored quantized, inference only: written by `python -m research.compress quantize`)
  c.model.quantization.mode = 'none'
  c.model.quantization.weight_qtype = 'int8'  # 'int8' | 'int4' | 'float8_e4m3fn' | 'float8_e5m2'
  c.model.quantization.act_qtype = ''  # '' (weight-only) or a qtype for the matmul inputs too
  c.model.quantization.bwd_qtype = ''  # qat: '' (float gradients) or a qtype for the backward
  # Layer kinds, comma-separated: attention (projections), mlp, moe (experts), head (unembedding)
  c.model.quantization.layers = 'attention,mlp,moe'
  c.model.quantization.group_size = 0  # a scale per this many input features; 0: per channel
  c.model.quantization.symmetric = True  # False: min-max scales and a zero point (int qtypes)

  c.objective = ml_collections.ConfigDict()
  # 'causal_lm' | 'prefix_lm' | 'mlm' | 'span_corruption' | 'sft' (fine-tuning) | 'dpo' |
  # 'reward' (a reward model on preference pairs) | 'distill' (knowledge distillation from
  # distill.teacher) | 'grpo' | 'ppo' (RL from feedback: the rl section)
  c.objective.name = 'causal_lm'
  c.objective.mask_rate = 0.15  # mlm: fraction of eligible (non-special) tokens chosen per row
  c.objective.mask_token_rate = 0.8  # mlm: of the chosen, the fraction shown as [MASK]
  c.objective.random_token_rate = 0.1  # mlm: ... shown as a random ordinary token; rest kept
  c.objective.noise_density = 0.15  # span_corruption: fraction of raw tokens dropped (T5)
  c.objective.mean_span_length = 3.0  # span_corruption: mean length of a dropped span (T5)

  # Fine-tuning (research/training/restore.py, research/data/sft.py). `init_from` is a workdir
  # (research.train's, or research.convert's import) whose parameters start this run, with a
  # fresh optimizer and this run's own schedule; its tokenizer is reused. '' starts from
  # scratch. A run that already has a checkpoint of its own resumes from that instead.
  c.init_from = ''
  c.finetune = ml_collections.ConfigDict()
  # True: the model section (and data.vocab_size) come from init_from's config.json, so that
  # the architectures match; False: this config defines the model and the rules map it.
  c.finetune.inherit_model = True
  # Restore rules: (regex, 'load' | 'init') pairs; the first whose regex matches a parameter
  # path in full ('stack/layer_0/attn/query') decides. 'load' takes the source's array (same
  # shape, else an error naming both); 'init' keeps this run's fresh initialisation. Parameters
  # that PEFT adds (lora/..., *_adapter, soft_prompt) are always 'init'.
  c.finetune.restore = (('.*', 'load'),)
  c.finetune.train_data = ''  # JSONL glob: {"prompt", "response"} or {"messages": [...]} rows
  c.finetune.eval_data = ''  # JSONL glob for eval/ metrics; '' holds out eval_fraction of train
  c.finetune.eval_fraction = 0.05  # of train_data's examples, when eval_data is ''
  c.finetune.pack = True  # sft on decoders: first-fit packing with segment ids; else 1 per row
  # Parameter-efficient fine-tuning (research/training/peft.py): which parameters train.
  c.peft = ml_collections.ConfigDict()
  c.peft.method = 'none'  # 'none' (all train) | 'lora' | 'prompt' | 'bitfit' | 'adapter'
  c.peft.rank = 8  # lora: rank r of the delta B(A(x)); lora A [in, r], B [r, out]
  c.peft.alpha = 16.0  # lora: the delta is scaled by alpha / rank
  # lora: parameters (full-path regexes) that get a low-rank delta; defaults to every attention
  # and feed-forward matrix.
  c.peft.targets = r'.*/(query|key|value|out|w_in|w_gate|w_out)'
  c.peft.prompt_tokens = 20  # prompt: soft prompt embeddings prepended to every sequence
  c.peft.adapter_dim = 16  # adapter: bottleneck width after each attention and MLP sublayer
  c.peft.train_also = ''  # regex of base parameters that train besides the method's ('': none)
  # Direct preference optimisation (research/objectives/dpo.py), with objective.name='dpo':
  # JSONL rows {"prompt", "chosen", "rejected"}; the reference is the init_from model, frozen.
  c.dpo = ml_collections.ConfigDict()
  c.dpo.beta = 0.1  # KL strength: reward = beta x (log pi(y|x) - log pi_ref(y|x))
  # JSONL glob of preference rows; experiments.finetune.build_data --preferences builds some.
  c.dpo.train_data = ''
  c.dpo.eval_data = ''  # '' holds out finetune.eval_fraction of train_data
  # Reward models (research/objectives/reward.py), with objective.name='reward': a scalar head
  # (model.scalar_head, set for this objective) on a decoder or encoder, trained on the same
  # JSONL rows {"prompt", "chosen", "rejected"} with the Bradley-Terry loss
  # -log sigmoid(r(chosen) - r(rejected) - margin); research.load(workdir).rewards scores texts.
  c.reward = ml_collections.ConfigDict()
  c.reward.train_data = ''  # JSONL glob of preference rows (as dpo.train_data)
  c.reward.eval_data = ''  # '' holds out finetune.eval_fraction of train_data
  # Llama 2's margin loss: r(chosen) must beat r(rejected) by this much before the loss
  # flattens; 0: plain Bradley-Terry. A row's own "margin" number, if it has one, replaces it.
  c.reward.margin = 0.0
  # Knowledge distillation (research/objectives/distill.py), with objective.name='distill':
  # loss = alpha x T^2 x KL(teacher_T || student_T) + (1 - alpha) x cross-entropy, over target
  # tokens, the teacher frozen in the train state. Data: finetune.train_data (JSONL rows, the
  # response tokens scored) when set, else the token stream of data.source.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ''  # the teacher's workdir (a decoder run or import with its tokenizer)
  c.distill.alpha = 0.5  # weight of the soft (teacher) term; 1 - alpha weighs the hard labels
  c.distill.temperature = 2.0  # T, > 0: both softmaxes at logits / T (Hinton et al. 2015)
  # Reinforcement learning from feedback (research/rl/loop.py), with objective.name='grpo' or
  # 'ppo' (research/objectives/rl_policy.py): each iteration samples rl.samples_per_prompt
  # completions of rl.prompts_per_iteration prompts from the policy (KV-cache decoding), scores
  # them with the reward, then makes rl.epochs x rl.minibatches optimizer steps on them. The
  # policy starts from init_from; the reference is that model, frozen in the train state.
  # Derived by finalize (values given are replaced): train.batch_size = prompts_per_iteration x
  # samples_per_prompt / minibatches rows, train.steps = iterations x epochs x minibatches, and
  # data.seq_len = max_prompt_len + max_new_tokens - 1. train.checkpoint_every counts
  # iterations; train.log_every and train.eval_every are unused (every iteration is logged).
  c.rl = ml_collections.ConfigDict()
  # JSONL glob of {"prompt": str, ...} rows; the whole row goes to the reward function.
  c.rl.prompts = ''
  c.rl.eval_prompts = ''  # JSONL glob of held-out prompts; '' holds out prompts of rl.prompts
  # Held-out prompts scored every rl.eval_every iterations and at the start (the first N of
  # eval_prompts, or N taken out of rl.prompts when eval_prompts is ''); 0: no evaluation.
  c.rl.num_eval_prompts = 32
  # The reward, one of two: 'module:function' or 'path/to/file.py:function', called as
  # function(prompt: str, completion: str, row: dict) -> float (a bool counts as 0/1), the
  # completion cut before eos; or rl.reward_model, a reward-model workdir (its scalar head).
  c.rl.reward = ''
  c.rl.reward_model = ''  # a reward-model workdir instead of rl.reward (exactly one of the two)
  # The held-out evaluation's reward, a 'module:function' like rl.reward; '' scores with the
  # training reward. A reward model is a learned proxy: its policy is best judged by the rule
  # (or the people) it was learned from.
  c.rl.eval_reward = ''
  c.rl.success_threshold = 1.0  # eval/accuracy: the fraction of held-out rewards >= this
  c.rl.missing_eos_penalty = 0.0  # subtracted from the reward of a completion without eos
  c.rl.max_prompt_len = 64  # prompt tokens at most (longer prompts are skipped and counted)
  c.rl.max_new_tokens = 64  # tokens sampled per completion (its eos included)
  # A completion also ends at the first token that completes this string (kept in the text the
  # reward reads; later tokens are not trained on): '\n' for one-line tasks. '': eos only.
  c.rl.stop = ''
  c.rl.samples_per_prompt = 8  # G: completions of each prompt (GRPO's group)
  c.rl.prompts_per_iteration = 16  # prompts per rollout batch: x G rows
  # Sampling; log-probabilities, ratios, KL and entropy are of softmax(logits / temperature).
  c.rl.temperature = 1.0  # > 0
  c.rl.top_k = 0  # 0: off
  c.rl.top_p = 1.0  # 1: off
  c.rl.eval_temperature = 0.0  # held-out completions: 0 is greedy
  c.rl.epochs = 1  # passes over each rollout batch (rows reshuffled per pass)
  c.rl.minibatches = 1  # optimizer steps per pass; each takes rows / minibatches rows
  c.rl.iterations = 100  # rollout batches in total (a resumed run continues to this)
  c.rl.eval_every = 10  # iterations between held-out evaluations (and at the last)
  c.rl.kl_coef = 0.04  # weight of the KL to the reference (in the loss, or in the reward)
  c.rl.kl_estimator = 'k3'  # 'k1' | 'k2' | 'k3' (Schulman's estimators; research/rl/advantages.py)
  # True: -kl_coef x KL per token in the reward (PPO); False: kl_coef x KL as a loss term (GRPO).
  c.rl.kl_in_reward = False
  c.rl.clip_low = 0.2  # ratio clipped below at 1 - clip_low
  c.rl.clip_high = 0.2  # ... and above at 1 + clip_high (DAPO's clip-higher: 0.28)
  c.rl.value_clip = 0.2  # PPO: values move at most this far from the rollout's per update
  c.rl.vf_coef = 0.1  # PPO: weight of the value loss
  c.rl.gamma = 1.0  # PPO: discount per token
  c.rl.lam = 0.95  # PPO: GAE lambda
  c.rl.whiten_advantages = True  # PPO: advantages normalised over the batch's response tokens
  # GRPO: 'std' (score - group mean) / group std; 'none' (Dr. GRPO) score - group mean.
  c.rl.advantage_normalization = 'std'
  # 'token' (DAPO: mean over response tokens) | 'sequence' (GRPO: mean per response, then over
  # responses) | 'constant' (Dr. GRPO: sum per response / max_new_tokens, mean over responses)
  c.rl.loss_aggregation = 'token'
  c.rl.entropy_coef = 0.0  # entropy bonus: - entropy_coef x entropy per token in the loss

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000  # optimizer steps in total (a resumed run continues to this)
  c.train.batch_size = 32  # global batch, in sequences
  c.train.micro_batches = 1  # gradient accumulation: batch_size is split into this many
  # 'adamw' | 'adam_atan2' (Everett et al. 2024: no eps) | 'adafactor' | 'sgd'; see
  # research/training/optimizers.py
  c.train.optimizer = 'adamw'
  c.train.lr = 1e-3  # peak learning rate, reached after warmup_steps
  c.train.schedule = 'cosine'  # 'cosine' | 'linear' | 'constant' (all after linear warmup)
  c.train.warmup_steps = 100  # linear warmup from 0
  c.train.min_lr_ratio = 0.1  # cosine/linear decay to lr x this
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.eps = 1e-8
  c.train.weight_decay = 0.1  # decoupled (AdamW)
  # adam_atan2: update = a x atan2(m_hat, b x sqrt(v_hat)) replaces m_hat / (sqrt(v_hat) + eps)
  c.train.atan2_a = 1.27
  c.train.atan2_b = 1.0
  # Learning rate per parameter class (Everett et al. 2024's per-layer rates), 'CLASS=E,...':
  # lr_class = lr x multiplier x w^-E, w = model.d_model / model.base_width. Classes: embedding
  # (token, position and type tables, tied or not), hidden (attention, feed-forward, expert and
  # router matrices), unembedding (an untied output matrix), vector (norm scales, biases).
  # Unnamed classes keep the parameterization's exponents: sp 0 everywhere, mup hidden=1.
  c.train.lr_exponents = ''
  c.train.lr_multipliers = ''  # 'CLASS=C,...': constant factors per class (unnamed: 1)
  # Derived by finalize (a value given here is replaced): each class's peak learning rate from
  # train.lr and the two fields above, saved in config.json; research.plan prints them.
  c.train.effective_lr = ml_collections.ConfigDict()
  c.train.effective_lr.embedding = 0.0  # token, position and type tables
  c.train.effective_lr.hidden = 0.0  # attention, feed-forward, expert and router matrices
  c.train.effective_lr.unembedding = 0.0  # an untied output matrix
  c.train.effective_lr.vector = 0.0  # norm scales and biases
  c.train.grad_clip = 1.0  # global-norm clipping; 0 disables
  c.train.log_every = 50  # steps between train/ metrics in metrics.jsonl and the bar
  c.train.eval_every = 250  # steps between validation losses (and at the last step)
  # Validation batches per evaluation during training: eval_batches x batch_size x seq_len
  # tokens (0: the whole split, which research.evaluate always uses; quote that one).
  c.train.eval_batches = 8
  c.train.checkpoint_every = 500  # steps between checkpoints (and at the last step)
  # The newest N good checkpoints are kept (good: written completely, parameters finite); older
  # ones are deleted only once a newer one is known to be good.
  c.train.keep_checkpoints = 3
  c.train.keep_every = 0  # also keep every checkpoint whose step is a multiple of this; 0: none
  c.train.async_checkpoints = True  # write checkpoints while training continues
  # A non-finite loss or gradient norm (checked on device, read at log and checkpoint steps):
  # 'stop' ends the run (exit 2) naming the step and the last good checkpoint; 'skip' drops
  # that step's update, and stops after max_nonfinite_skips consecutive skipped steps.
  c.train.on_nonfinite = 'stop'
  c.train.max_nonfinite_skips = 10
  # Exit status of research.train after SIGTERM (preemption: a checkpoint is saved first), so a
  # scheduler does not mark the job finished. SIGINT (Ctrl-C) saves the same way and exits 130.
  c.train.preemption_exit_code = 143
  c.train.prefetch = 2  # batches transferred to the devices ahead of the step using them; 0: none
  # Host offload: what lives in pinned host memory between steps ('none' | 'optimizer' |
  # 'optimizer_and_params'). The step brings the optimizer state to HBM for the update, after
  # the backward pass has freed the activations (the peak holds the larger of the two), and
  # puts it back: transfers each step for HBM. 'optimizer_and_params' also parks the
  # parameters, which the step holds in HBM throughout, so it frees HBM between steps only.
  # One field, not two booleans: parameters without the optimizer state is not offered (the
  # optimizer state is the larger: AdamW's is twice the parameters). Needs pinned_host memory.
  c.train.offload = 'none'
  # Gradual pruning (research/training/pruning.py; once, after training: python -m
  # research.compress prune). Masks live in the train state and checkpoints; pruned weights
  # stay exactly 0 through every optimizer step. Zhu & Gupta 2017's cubic schedule: sparsity
  # rises from initial_sparsity at start_step to sparsity at end_step, the masks recomputed
  # every update_every steps. Each attention and feed-forward matrix is pruned by itself;
  # embeddings, norms, biases and routers never.
  c.train.pruning = ml_collections.ConfigDict()
  # 'none' | 'magnitude' (smallest |w| of each matrix) | '2:4' (2 of every 4 consecutive
  # input weights, the pattern sparse tensor cores run; sparsity 0.5)
  c.train.pruning.method = 'none'
  c.train.pruning.sparsity = 0.5  # the target fraction of zeros in each pruned matrix
  c.train.pruning.initial_sparsity = 0.0  # the schedule's value at start_step
  c.train.pruning.start_step = 0  # first step whose masks are computed
  c.train.pruning.end_step = 0  # the target is reached here (= start_step: at once)
  c.train.pruning.update_every = 100  # steps between mask updates in [start_step, end_step]

  c.mesh = ml_collections.ConfigDict()
  c.mesh.preset = ''  # '' | 'dp' | 'fsdp' | 'fsdp_tp' | 'fsdp_ep' | 'ep' | 'fsdp_pp' | 'fsdp_cp'
  c.mesh.data = -1  # -1: all devices not used by the other axes
  c.mesh.fsdp = 1  # parameters, gradients and optimizer state sharded (ZeRO-3)
  c.mesh.expert = 1  # MoE experts sharded
  # Context parallelism: activations' sequence axis split over this many devices, for sequences
  # longer than one device holds (research/layers/context_parallel.py). Self-attention runs
  # model.attention.context_strategy; causal stacks use a zig-zag split (device i holds chunks
  # i and 2n-1-i of 2n) to balance the work. data.seq_len must split into 2 x context chunks
  # (causal) or context chunks (bidirectional). Decoder and encoder families; not prefix LM,
  # relative position bias, BigBird, soft-capped scores, prompt tuning or capacity-based MoE.
  c.mesh.context = 1
  c.mesh.tensor = 1  # heads, MLP and vocabulary sharded (Megatron)
  # Pipeline stages (research/parallel/pipeline.py): each layer stack (both of an
  # encoder-decoder) cut into stage x pipeline_repeats chunks of consecutive layers; scanned
  # stacks are stored in contiguous blocks of L / stage layers per stage, unrolled ones on
  # every stage; a chunk's layers repeat in every chunk. 1: off; a fixed size, never -1.
  c.mesh.stage = 1
  # Passes of each micro-batch round the stages, R: 1 is GPipe; R > 1 is the circular
  # (interleaved) schedule, chunk r x stage + s on stage s, bubble (stage - 1) / (R M +
  # stage - 1), at the cost of reshuffling a scanned stack's weights across stages each step.
  c.mesh.pipeline_repeats = 1
  # Pipeline micro-batches per forward pass, M (0: mesh.stage; >= mesh.stage with repeats):
  # each gradient-accumulation micro-batch (train.batch_size / train.micro_batches sequences)
  # is cut into M that flow through the stages together.
  c.mesh.pipeline_micro_batches = 0
  c.mesh.rules = DEFAULT_RULES  # logical axis -> mesh axes (DEFAULT_RULES above)

  c.sample = ml_collections.ConfigDict()  # what `make train` prints at the end
  c.sample.prompt = 'ROMEO:'  # research.sample's defaults (its flags override them)
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8  # 0: greedy
  c.sample.top_k = 0  # 0: off
  c.sample.top_p = 0.95  # 1: off

  # research.evaluate --task=generation|few_shot (research/evaluation/). Saved with the run, so a
  # run's config can carry its task's prompt format; `--config.eval.k=5` overrides at evaluation.
  c.eval = ml_collections.ConfigDict()
  # A few-shot example: '{input}' and '{target}' are replaced; the query is this template cut
  # just before '{target}', so the model's continuation is the answer. In research.evaluate's
  # --config.eval overrides of this and example_separator, \n and \t are a line break and a tab.
  c.eval.prompt_template = 'Input: {input}\nOutput: {target}'
  c.eval.example_separator = '\n\n'  # between the k examples and before the query
  c.eval.k = 3  # few-shot examples per prompt (0: zero-shot, the query alone)
  c.eval.seed = 0  # chooses each query's examples (the same seed: the same prompts)
  c.eval.max_new_tokens = 32  # generated tokens per input (generation and few_shot)
  # A prediction ends at the first of these (and at the end-of-document token); few_shot's
  # exact match compares the stripped text before it.
  c.eval.stop = ('\n',)
  c.eval.batch_size = 8  # inputs per generation batch; the last one is padded to this size
  c.eval.beam_size = 1  # encoder-decoder: beam search width; 1 is greedy (decoders: greedy)
  c.eval.length_penalty = 0.6  # encoder-decoder beam search: GNMT alpha
  # Evaluation tasks run during training, every train.eval_every steps (and at the last step),
  # logged as eval/<task>/<metric> in metrics.jsonl and TensorBoard. Comma-separated NAME:ARG:
  # 'validation', 'perplexity:SOURCE' (its validation split), 'few_shot:FILE.jsonl',
  # 'generation:FILE.jsonl', 'lm_eval:TASK[,TASK...]'; '' runs only the trainer's eval/loss.
  c.eval.during_training = ''
  # --task=lm_eval (lm-evaluation-harness, research/evaluation/harness.py).
  c.eval.lm_eval = ml_collections.ConfigDict()
  c.eval.lm_eval.tasks = ''  # comma-separated harness task names, e.g. 'hellaswag,arc_easy'
  c.eval.lm_eval.num_fewshot = -1  # -1: each task's own default
  c.eval.lm_eval.limit = 0  # examples per task; 0: all
  c.eval.lm_eval.include_path = ''  # a directory of extra task YAMLs (local tasks)
  return c


def open_model_recipe(c: ml_collections.ConfigDict, *, steps: int, batch_size: int,
                      checkpoint_every: int = 1000) -> ml_collections.ConfigDict:
  """The pre-training recipe of the open-model configs (configs/decoder/llama3_2_1b.py and its
  peers): Llama 2's AdamW (peak 3e-4, 2,000 warmup steps, cosine to 10 %, b2 0.95, eps 1e-5,
  weight decay 0.1, clipping at 1), a stand-in, as none of those models published one."""
  c.train.steps = steps
  c.train.batch_size = batch_size
  c.train.lr = 3e-4
  c.train.warmup_steps = 2000
  c.train.min_lr_ratio = 0.1
  c.train.b2 = 0.95
  c.train.eps = 1e-5
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.eval_batches = 16
  c.train.checkpoint_every = checkpoint_every
  return c


def shrink_open_model(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An open-model config's `:tiny` variant: `shrink_for_smoke_test`, keeping grouped-query
  attention (2 query heads share 1) and a chunked loss; widths derived from the shrunk model."""
  shrink_for_smoke_test(c)
  c.data.workers = 0
  c.model.vocab_size = 0  # the shrunk data vocabulary
  c.model.num_kv_heads = 1
  c.model.head_dim = 0
  c.model.d_ff = 0
  c.model.loss_chunk_size = 16
  return c


def shrink_for_smoke_test(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:tiny` variant of the Shakespeare configs: a 2 x 64 model, 20 steps of 8 x 64 tokens,
  logging, evaluating and checkpointing often. For smoke tests of a whole command in seconds."""
  c.data.vocab_size = 512
  c.data.seq_len = 64
  c.model.d_model = 64
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.train.steps = 20
  c.train.batch_size = 8
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.eval_batches = 2
  c.train.checkpoint_every = 10
  return c


def add_section(config: ml_collections.ConfigDict, name: str,
                defaults: ml_collections.ConfigDict, fields) -> ml_collections.ConfigDict:
  """`config` with section `name`: `defaults` updated with `fields` (keys may be dotted, e.g.
  'quality.steps'); a key the defaults lack is a ConfigError naming the valid ones. The study
  modules' `with_*` helpers (a sweep, MoE variants, sparse attention, a study) build on it."""
  config[name] = defaults
  for key, value in fields.items():
    node, leaf = config[name], key
    if '.' in key:
      parent, leaf = key.split('.', 1)
      node = node[parent]
    if leaf not in node:
      raise ConfigError(f'{name}.{key}', value, f'unknown field: valid are {sorted(node.keys())}')
    with node.ignore_type():
      node[leaf] = value
  return config


def unknown_variant(arg: str, choices: Sequence[str] = ('tiny',)) -> ConfigError:
  listed = ', '.join(f"':{choice}'" for choice in choices)
  return ConfigError('--config', f':{arg}', f'unknown variant: use {listed} or none')


def _import_config_file(path: str):
  if not os.path.isfile(path):
    raise ConfigError('--config', path, 'no such file: give a path such as '
                      'configs/decoder/shakespeare.py')
  spec = importlib.util.spec_from_file_location(f'lmforge_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError('--config', path, 'the file defines no get_config(arg=None)')
  return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path` or `path:arg` -> the file's `get_config()` or `get_config(arg)`."""
  path, _, arg = spec.partition(':')
  module = _import_config_file(path)
  return module.get_config(arg) if arg else module.get_config()


def _parse_value(text: str, current, field: str):
  """Parses an override to the type the field holds now."""
  if isinstance(current, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise ConfigError(field, text, 'expected true or false')
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise ConfigError(field, text, f'expected a {type(current).__name__}') from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(current, int) and isinstance(value, float) and value.is_integer():
    return int(value)
  if current is not None and not isinstance(value, type(current)):
    raise ConfigError(field, text, f'expected a {type(current).__name__}')
  return value


def set_fields(config: ml_collections.ConfigDict, fields: dict) -> ml_collections.ConfigDict:
  """Sets each 'a.b.c' -> value of `fields` in `config` (any type: a study's derived runs);
  returns `config`. Command-line text goes through `apply_override` instead."""
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  return config


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets `config.<key>` from its command-line text; unknown keys are errors."""
  *parents, leaf = key.split('.')
  node = config
  for i, name in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ConfigError(f'config.{key}', text, f"unknown key '{'.'.join(parents[:i + 1])}': "
                        f'valid keys here are {sorted(node.keys())}')
    node = node[name]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    raise ConfigError(f'config.{key}', text, f"unknown key '{leaf}': valid keys are {valid}")
  with node.ignore_type():
    node[leaf] = _parse_value(text, node[leaf], f'config.{key}')


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills derived fields and validates what does not need devices or data."""
  c = config
  if c.get('init_from', '') and c.finetune.inherit_model:
    _inherit_model(c)
  if c.objective.name == 'reward':
    from research.objectives import reward  # pylint: disable=g-import-not-at-top
    reward.check_config(c)  # a decoder or encoder; sets model.scalar_head
  if c.model.vocab_size == 0:
    c.model.vocab_size = c.data.vocab_size
  if c.objective.name in ('grpo', 'ppo'):  # derives train.batch_size, train.steps, seq_len
    from research.objectives import rl_policy  # pylint: disable=g-import-not-at-top
    rl_policy.check_config(c)
  if c.model.vocab_size < c.data.vocab_size:
    raise ConfigError('model.vocab_size', c.model.vocab_size,
                      f'must be >= data.vocab_size={c.data.vocab_size} (0 copies it)')
  for field in ('steps', 'batch_size', 'micro_batches', 'log_every', 'eval_every',
                'checkpoint_every'):
    if c.train[field] <= 0:
      raise ConfigError(f'train.{field}', c.train[field], 'must be a positive integer')
  if c.train.on_nonfinite not in ('stop', 'skip'):
    raise ConfigError('train.on_nonfinite', c.train.on_nonfinite, "use 'stop' or 'skip'")
  for field in ('keep_checkpoints', 'max_nonfinite_skips'):
    if c.train[field] <= 0:
      raise ConfigError(f'train.{field}', c.train[field], 'must be a positive integer')
  if not 0 < c.train.preemption_exit_code < 256:
    raise ConfigError('train.preemption_exit_code', c.train.preemption_exit_code,
                      'must be an exit status from 1 to 255 (143 is 128 + SIGTERM)')
  if c.train.keep_every < 0:
    raise ConfigError('train.keep_every', c.train.keep_every, 'must be >= 0 (0: no milestones)')
  if c.train.offload not in OFFLOAD:
    raise ConfigError('train.offload', c.train.offload,
                      f"choose one of {', '.join(repr(k) for k in OFFLOAD)}")
  if c.train.batch_size % c.train.micro_batches:
    raise ConfigError('train.micro_batches', c.train.micro_batches,
                      f'must divide train.batch_size={c.train.batch_size}')
  if c.data.seq_len <= 0:
    raise ConfigError('data.seq_len', c.data.seq_len, 'must be a positive integer')
  if 'peft' in c:
    from research.training import peft  # pylint: disable=g-import-not-at-top
    peft.check_config(c)
  from research.training import pruning  # pylint: disable=g-import-not-at-top
  pruning.check_config(c)
  from research.parallel import mesh  # pylint: disable=g-import-not-at-top
  mesh.axis_sizes(c.mesh)  # validates the preset name
  from research.parallel import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.check_config(c)
  from research import models  # validates the model section  pylint: disable=g-import-not-at-top
  model_cfg = models.transformer_config(c.model, seq_len=c.data.seq_len)
  from research.layers import quantization  # pylint: disable=g-import-not-at-top
  quantization.check_config(c.model, model_cfg)
  from research.training import optimizers  # pylint: disable=g-import-not-at-top
  optimizers.fill_effective_lr(c)
  from research.layers import context_parallel, mixers  # pylint: disable=g-import-not-at-top
  context_parallel.check_config(c)
  mixers.check_config(c)
  if c.objective.name == 'distill':
    from research.objectives import distill  # pylint: disable=g-import-not-at-top
    distill.check_config(c)  # the teacher: its workdir, family, vocabulary and tokenizer
  return c


def _inherit_model(c: ml_collections.ConfigDict) -> None:
  """Copies init_from's model section and vocabulary into `c` (finetune.inherit_model)."""
  path = os.path.join(c.init_from, 'config.json')
  if not os.path.isfile(path):
    raise ConfigError('init_from', c.init_from, 'has no config.json: give a workdir that '
                      'research.train or research.convert wrote')
  source = load_saved_config(path)
  # A scalar head is this run's addition to the source's model (a reward model or a value
  # head on an LM), or the source's own (a reward workdir): kept in either case.
  scalar_head = c.model.get('scalar_head', False) or source.model.scalar_head
  c.model = source.model
  c.model.scalar_head = scalar_head
  if not c.model.max_len:  # the source's position table, not this run's seq_len
    c.model.max_len = source.data.seq_len
  c.data.vocab_size = source.data.vocab_size
  c.data.num_sentinels = source.data.num_sentinels
  if c.train.pruning.method == 'none' and source.train.pruning.method != 'none':
    # A pruned model keeps its zeros: its masks come back (restore.init_from), fixed from step 0.
    c.train.pruning = source.train.pruning
    c.train.pruning.start_step = c.train.pruning.end_step = 0
  c.finetune.inherit_model = False  # done: the saved config.json stands on its own


def load_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """Loads a config file, applies `(key, text)` overrides, fills and validates it."""
  config = load_config_file(spec)
  for key, text in overrides:
    apply_override(config, key, text)
  return finalize(config)


def split_config_args(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
  """Separates `--config=spec` and `--config.key=value` from the other command-line flags."""
  spec, overrides, rest = None, [], []
  for arg in argv:
    if arg.startswith('--config='):
      spec = arg.split('=', 1)[1]
    elif arg.startswith('--config.'):
      key, eq, value = arg[len('--config.'):].partition('=')
      if not eq:
        raise UserError(f'{arg}: write overrides as --config.{key}=VALUE')
      overrides.append((key, value))
    else:
      rest.append(arg)
  return spec, overrides, rest


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
  with open(path, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def load_saved_config(path: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to its workdir, as a ConfigDict with the base's types."""
  import json  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise UserError(f'{path} not found: is --workdir a directory that research.train wrote?')
  with open(path) as f:
    saved = json.load(f)
  config = base_config()

  def merge(node, values, prefix):
    for key, value in values.items():
      if isinstance(value, dict) and key in node and isinstance(node[key], ml_collections.ConfigDict):
        merge(node[key], value, prefix + key + '.')
      else:
        with node.ignore_type():
          node[key] = _to_tuple(value) if key in ('rules', 'restore') else value

  merge(config, saved, '')
  return config


def _to_tuple(value):
  if isinstance(value, list):
    return tuple(_to_tuple(v) for v in value)
  return value
