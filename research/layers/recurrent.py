"""The gated delta rule family of recurrent sequence mixers, in chunkwise-parallel and step forms.

One recurrence covers linear attention, Mamba-2's SSD and Gated DeltaNet. Per head, a state
S [K, V] goes through the tokens t = 1..T of a row:

  S <- alpha_t S                                  decay (log_alpha_t <= 0; linear attention: 0)
  S <- S + k_t delta_t^T, where                   write
       delta_t = beta_t v_t                       (additive rule: linear attention, Mamba-2)
       delta_t = beta_t (v_t - S^T k_t)           (delta rule: DeltaNet, Gated DeltaNet)
  o_t = S^T q_t                                   read

Mamba-2 is q = C, k = B, v = x, beta = dt, log_alpha = dt A (Dao & Gu 2024); Gated DeltaNet is
alpha (I - beta k k^T) S + beta k v^T written as above (Yang, Kautz & Hatamizadeh 2024).

Chunkwise-parallel form (`chunked`), after Yang et al. 2024 ("Parallelizing Linear Transformers
with the Delta Rule over Sequence Length", the WY/UT form). Split a row into chunks of C tokens;
inside a chunk let g_t be the cumulative log decay from the chunk's start, D_ti = exp(g_t - g_i)
for i <= t, and S_0 the state entering the chunk. Unrolling the delta rule gives

  delta = (I + A)^{-1} diag(beta) (V - diag(exp g) K S_0),   A_ti = beta_t D_ti k_t.k_i (i < t)
  O     = diag(exp g) Q S_0 + (Q K^T * D) delta               (D inclusive of i = t)
  S_C   = exp(g_C) S_0 + sum_i D_Ci k_i delta_i^T

(the additive rule is A = 0 and no S_0 term in delta). Everything but the S_0 terms is
parallel over chunks; a scan over chunks carries S. Cost: O(T C (K + V)) and, for the delta
rule, one C x C unit-triangular inverse per chunk (`unit_lower_inverse`: C^3 / 3 multiply-adds
in log2 C rounds of batched matmuls), against the quadratic form's O(T^2 (K + V)).

Segments. Packed examples (segment ids; 0 is padding) never share a state: a token whose
segment differs from the one before it starts from S = 0. In chunk form that is a mask on D and
on the S_0 terms, from a per-row count of segment starts (`runs`), so nothing divides by a zero
decay. The state carries the segment of the last token it saw, so decoding continues a row
across calls and a left-padded prompt's padding never reaches its first real token.

Ragged lengths pad the row to a multiple of C with no-op tokens (k = 0, beta = 0, no decay),
which change neither the outputs nor the final state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def runs(segment_ids_BT, initial_segment_B=None):
  """int32 run index of every token: the number of segment starts up to and including it. A
  token starts a segment when its id differs from the previous token's (for the first token:
  from `initial_segment_B`, the segment of the state it continues; None: every row starts
  fresh, which changes nothing since that state is 0)."""
  if initial_segment_B is None:
    initial_segment_B = segment_ids_BT[:, 0]
  previous_BT = jnp.concatenate([initial_segment_B[:, None].astype(segment_ids_BT.dtype),
                                 segment_ids_BT[:, :-1]], axis=1)
  return jnp.cumsum((segment_ids_BT != previous_BT).astype(jnp.int32), axis=1)


def recurrent(q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH, *, delta: bool,
              segment_ids_BT=None, initial_state_BHKV=None, initial_segment_B=None):
  """The recurrence, one token at a time (`lax.scan`): the reference, and decoding's form.

  Returns (o_BTHV, final state_BHKV), in float32.
  """
  b, t, h, k = q_BTHK.shape
  v = v_BTHV.shape[-1]
  f32 = lambda x: x.astype(jnp.float32)
  q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH = map(
      f32, (q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH))
  if segment_ids_BT is None:
    segment_ids_BT = jnp.ones((b, t), jnp.int32)
  starts_BT = jnp.diff(runs(segment_ids_BT, initial_segment_B), axis=1,
                       prepend=jnp.zeros((b, 1), jnp.int32)) > 0
  state_BHKV = (jnp.zeros((b, h, k, v), jnp.float32) if initial_state_BHKV is None
                else f32(initial_state_BHKV))

  def step(state_BHKV, inputs):
    q_BHK, k_BHK, v_BHV, log_alpha_BH, beta_BH, start_B = inputs
    keep_BH = jnp.where(start_B[:, None], 0.0, jnp.exp(log_alpha_BH))
    state_BHKV = state_BHKV * keep_BH[..., None, None]
    if delta:
      v_BHV = v_BHV - jnp.einsum('bhkv,bhk->bhv', state_BHKV, k_BHK)
    state_BHKV = state_BHKV + jnp.einsum('bhk,bhv->bhkv', k_BHK, beta_BH[..., None] * v_BHV)
    return state_BHKV, jnp.einsum('bhkv,bhk->bhv', state_BHKV, q_BHK)

  xs = [jnp.moveaxis(x, 1, 0) for x in (q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH,
                                        starts_BT)]
  state_BHKV, o_TBHV = jax.lax.scan(step, state_BHKV, xs)
  return jnp.moveaxis(o_TBHV, 0, 1), state_BHKV


def unit_lower_inverse(a_NCC):
  """(I + A)^{-1} for strictly lower-triangular A [..., C, C], by batched matmuls only.

  Block by block, doubling: with the inverses X11, X22 of two diagonal blocks of I + A,
  [[X11, 0], [-X22 A21 X11, X22]] is the inverse of the block twice their size; starting from
  1 x 1 blocks (ones), log2 C rounds, each one batched matmul pair over all blocks of its size:
  C^3 / 3 multiply-adds per chunk, as few as a triangular solve's against C columns. C is
  padded to a power of two with zeros (whose inverse block is I). Why not
  jax.scipy.linalg.solve_triangular: on CPU its LAPACK custom call deadlocked intermittently in
  the chunk program (jax 0.10.2, 2 cores: a call never returned, every XLA thread idle, at 2k-8k
  tokens); matmuls also batch on accelerators without a custom call.
  """
  c = a_NCC.shape[-1]
  p = 1 << (c - 1).bit_length()
  lead = a_NCC.shape[:-2]
  a_NPP = jnp.pad(a_NCC, [(0, 0)] * len(lead) + [(0, p - c), (0, p - c)])
  inverse = jnp.ones(lead + (p, 1, 1), a_NCC.dtype)  # the p diagonal 1 x 1 blocks
  size = 1
  while size < p:
    n = p // (2 * size)
    # The n diagonal blocks of twice the size, [..., n, 2s, 2s], and their lower-left parts.
    blocks = a_NPP.reshape(lead + (n, 2 * size, n, 2 * size))
    blocks = jnp.moveaxis(jnp.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)
    lower = blocks[..., size:, :size]
    pairs = inverse.reshape(lead + (n, 2, size, size))
    x11, x22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
    x21 = -(x22 @ lower @ x11)
    top = jnp.concatenate([x11, jnp.zeros_like(x11)], axis=-1)
    inverse = jnp.concatenate([top, jnp.concatenate([x21, x22], axis=-1)], axis=-2)
    size *= 2
  return inverse[..., 0, :c, :c]


def chunked(q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH, *, delta: bool, chunk_size: int,
            segment_ids_BT=None, initial_state_BHKV=None, initial_segment_B=None):
  """The chunkwise-parallel form (module docstring): equal to `recurrent`, in float32.

  Any T: a row is padded with no-op tokens to a multiple of `chunk_size`.
  Returns (o_BTHV, final state_BHKV).
  """
  b, t, h, k = q_BTHK.shape
  v = v_BTHV.shape[-1]
  c = chunk_size
  f32 = lambda x: x.astype(jnp.float32)
  q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH = map(
      f32, (q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH))
  if segment_ids_BT is None:
    segment_ids_BT = jnp.ones((b, t), jnp.int32)
  run_BT = runs(segment_ids_BT, initial_segment_B)
  pad = -t % c
  if pad:  # no-op tokens in the last token's run
    zeros = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH = map(
        zeros, (q_BTHK, k_BTHK, v_BTHV, log_alpha_BTH, beta_BTH))
    run_BT = jnp.pad(run_BT, [(0, 0), (0, pad)], mode='edge')
  n = (t + pad) // c

  # [B, H, N, C, ...]: heads outermost, then chunks.
  to_chunks = lambda x: jnp.moveaxis(x.reshape((b, n, c) + x.shape[2:]), 3, 1)
  q_BHNCK, k_BHNCK, v_BHNCV = map(to_chunks, (q_BTHK, k_BTHK, v_BTHV))
  log_alpha_BHNC, beta_BHNC = map(to_chunks, (log_alpha_BTH[..., None], beta_BTH[..., None]))
  log_alpha_BHNC, beta_BHNC = log_alpha_BHNC[..., 0], beta_BHNC[..., 0]
  run_BNC = run_BT.reshape(b, n, c)
  # The run of the token before each chunk: the state S_0 belongs to it.
  run_before_BN = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), run_BNC[:, :-1, -1]], axis=1)

  g_BHNC = jnp.cumsum(log_alpha_BHNC, axis=-1)
  same_BNCC = run_BNC[..., :, None] == run_BNC[..., None, :]
  causal_CC = jnp.tril(jnp.ones((c, c), bool))
  visible_BHNCC = (same_BNCC & causal_CC)[:, None]
  # D_ti = exp(g_t - g_i) on visible pairs; the exponent is masked first (it is <= 0 there).
  decay_BHNCC = jnp.exp(jnp.where(visible_BHNCC, g_BHNC[..., :, None] - g_BHNC[..., None, :],
                                  -jnp.inf))
  from_state_BHNC = jnp.where((run_BNC == run_before_BN[..., None])[:, None], jnp.exp(g_BHNC),
                              0.0)
  # The chunk's last token: how much of S_0 and of each token's write reaches the next chunk.
  last_from_state_BHN = from_state_BHNC[..., -1]
  to_last_BHNC = decay_BHNCC[..., -1, :]

  beta_v_BHNCV = beta_BHNC[..., None] * v_BHNCV
  if delta:
    strict_BHNCC = decay_BHNCC * (1.0 - jnp.eye(c))
    a_BHNCC = beta_BHNC[..., None] * strict_BHNCC * jnp.einsum('...tk,...ik->...ti',
                                                               k_BHNCK, k_BHNCK)
    inverse_BHNCC = unit_lower_inverse(a_BHNCC)
    solve = lambda rhs: jnp.einsum('...ti,...ix->...tx', inverse_BHNCC, rhs)
    u_BHNCV = solve(beta_v_BHNCV)  # delta = U - W S_0
    w_BHNCK = solve((beta_BHNC * from_state_BHNC)[..., None] * k_BHNCK)
  else:
    u_BHNCV = beta_v_BHNCV
    w_BHNCK = None
  scores_BHNCC = jnp.einsum('...tk,...ik->...ti', q_BHNCK, k_BHNCK) * decay_BHNCC
  q_state_BHNCK = from_state_BHNC[..., None] * q_BHNCK
  k_last_BHNCK = to_last_BHNC[..., None] * k_BHNCK

  def chunk_step(state_BHKV, xs):
    u_BHCV, w_BHCK, scores_BHCC, q_state_BHCK, k_last_BHCK, last_from_state_BH = xs
    delta_BHCV = u_BHCV
    if w_BHCK is not None:
      delta_BHCV = u_BHCV - jnp.einsum('bhck,bhkv->bhcv', w_BHCK, state_BHKV)
    o_BHCV = (jnp.einsum('bhck,bhkv->bhcv', q_state_BHCK, state_BHKV) +
              jnp.einsum('bhti,bhiv->bhtv', scores_BHCC, delta_BHCV))
    state_BHKV = (last_from_state_BH[..., None, None] * state_BHKV +
                  jnp.einsum('bhck,bhcv->bhkv', k_last_BHCK, delta_BHCV))
    return state_BHKV, o_BHCV

  state_BHKV = (jnp.zeros((b, h, k, v), jnp.float32) if initial_state_BHKV is None
                else f32(initial_state_BHKV))
  chunk_axis = lambda x: None if x is None else jnp.moveaxis(x, 2, 0)
  xs = tuple(map(chunk_axis, (u_BHNCV, w_BHNCK, scores_BHNCC, q_state_BHNCK, k_last_BHNCK,
                              last_from_state_BHN)))
  state_BHKV, o_NBHCV = jax.lax.scan(chunk_step, state_BHKV, xs)
  o_BTHV = jnp.moveaxis(o_NBHCV, 0, 2).reshape(b, h, n * c, v).transpose(0, 2, 1, 3)
  return o_BTHV[:, :t], state_BHKV
