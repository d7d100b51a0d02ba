"""Segment-aware flash attention in Pallas (Triton on GPU, interpret mode elsewhere).

Why a kernel of our own: `jax.nn.dot_product_attention`'s cuDNN path takes neither a dense mask
per example nor a learned bias with a gradient, so packed rows (segment ids), prefix-LM masks
and every T5 attention (relative-position bias) fell back to XLA's kernel, which materialises
`[B, N, T, S]` scores. This kernel never builds them: the mask is recomputed per tile from
`[B, T]` / `[B, S]` vectors, the bias is read tile by tile, and the backward pass recomputes the
probabilities from the saved log-sum-exp (FlashAttention-2).

Layout and semantics (the same as `jax.nn.dot_product_attention`'s `[B, T, N, H]` layout):

- `q [B, T, N, H]`, `k`/`v [B, S, K, H]`; `N` a multiple of `K` (grouped-query attention, query
  head `n` reads key/value head `n // (N // K)`).
- Query `t` sees key `s` when all of these hold:
  - segments: `q_segment_ids[t] == kv_segment_ids[s] != 0` (0 is padding and is never seen;
    with only `kv_segment_ids`, any non-zero key is seen: a key-padding mask);
  - `causal`: `s <= t`, or with `prefix [B, T]` (self-attention, T == S) also when both
    `prefix[t]` and `prefix[s]` are set (prefix-LM: bidirectional over the inputs).
- `bias`: additive, `[N, T, S]` or `[1 | B, N, T, S]`, added to the scaled logits
  (`scale * q.k + bias`, as XLA's path does); its gradient is summed over a broadcast batch.
- A query that sees no key (a row of pure padding) gets a zero output and zero gradients.
  XLA's path gives the mean of all values there instead; neither is used by anything, since
  such positions are padding and carry no loss weight.

Sequence lengths need not be multiples of the blocks: the wrapper pads queries and keys as
padding segments and slices the result. Head dims are zero-padded to a power of two >= 16
(Triton's `dot` needs that; zeros change no dot product).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# A finite "minus infinity" for masked logits: exp(NEG - m) is exactly 0 for any real max m,
# and NEG - NEG is 0, not NaN, so rows masked so far need no special case inside the loop.
NEG = -1e30
# The log-sum-exp saved for a row that sees no key: exp(logit - EMPTY_LSE) is 0 in the
# backward pass for every logit, so such rows contribute no gradient.
EMPTY_LSE = 1e30


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes. The defaults suit H100/H200 Triton at head dim 64-128 (tune with a profiler);
  tests use small ones so interpret mode runs several tiles per row."""
  block_q: int = 128
  block_k: int = 64
  block_q_bwd: int = 64
  block_k_bwd: int = 64
  num_warps: int | None = None  # None: 4 for head dim <= 64, else 8
  num_stages: int = 2


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels specialise on (hashable: a `custom_vjp` non-diff argument)."""
  scale: float
  causal: bool
  has_bias: bool
  bias_batched: bool  # bias has a batch axis of size B (else 1, broadcast)
  has_segments: bool
  has_prefix: bool
  blocks: BlockSizes
  interpret: bool


def flash_attention(q, k, v, *, bias=None, q_segment_ids=None, kv_segment_ids=None,
                    causal: bool = False, prefix=None, scale: float = 1.0,
                    block_sizes: BlockSizes | None = None, interpret: bool | None = None):
  """`[B, T, N, H]` attention output, in `q`'s dtype (see the module docstring).

  `interpret` None: Pallas interpret mode unless the default backend is a GPU.
  """
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  if k.shape != (b, s, kh, h) or v.shape != k.shape:
    raise ValueError(f"k/v must be [B, S, K, H] matching q {q.shape}: {k.shape}, {v.shape}")
  if n % kh:
    raise ValueError(f"query heads {n} must be a multiple of key/value heads {kh}")
  if prefix is not None and (not causal or t != s):
    raise ValueError("prefix (prefix-LM) needs causal self-attention (T == S)")
  blocks = block_sizes or BlockSizes()
  if interpret is None:
    interpret = jax.default_backend() != "gpu"

  # Segment ids: either none, or both sides (a key-only padding mask becomes q = 1, kv = 0/1).
  if q_segment_ids is None and kv_segment_ids is not None:
    q_segment_ids = jnp.ones((b, t), jnp.int32)
    kv_segment_ids = (kv_segment_ids != 0).astype(jnp.int32)
  elif kv_segment_ids is None and q_segment_ids is not None:
    if t != s:
      raise ValueError("q_segment_ids without kv_segment_ids needs self-attention (T == S)")
    kv_segment_ids = q_segment_ids

  # Pad lengths to whole tiles (padded positions are padding segments) and heads to 2^k >= 16.
  tile_q = math.lcm(_clamp(blocks.block_q, t), _clamp(blocks.block_q_bwd, t))
  tile_k = math.lcm(_clamp(blocks.block_k, s), _clamp(blocks.block_k_bwd, s))
  tp, sp, hp = _round_up(t, tile_q), _round_up(s, tile_k), max(16, _next_pow2(h))
  if (tp != t or sp != s) and q_segment_ids is None:
    q_segment_ids, kv_segment_ids = jnp.ones((b, t), jnp.int32), jnp.ones((b, s), jnp.int32)
  blocks = dataclasses.replace(
      blocks, block_q=_clamp(blocks.block_q, t), block_k=_clamp(blocks.block_k, s),
      block_q_bwd=_clamp(blocks.block_q_bwd, t), block_k_bwd=_clamp(blocks.block_k_bwd, s))
  q = _pad(q, ((0, 0), (0, tp - t), (0, 0), (0, hp - h)))
  k = _pad(k, ((0, 0), (0, sp - s), (0, 0), (0, hp - h)))
  v = _pad(v, ((0, 0), (0, sp - s), (0, 0), (0, hp - h)))
  if q_segment_ids is not None:
    q_segment_ids = _pad(q_segment_ids.astype(jnp.int32), ((0, 0), (0, tp - t)))
    kv_segment_ids = _pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, sp - s)))
  if prefix is not None:
    prefix = _pad(prefix.astype(jnp.int32), ((0, 0), (0, tp - t)))
  bias_batched = False
  if bias is not None:
    if bias.ndim == 3:
      bias = bias[None]
    if bias.ndim != 4 or bias.shape[0] not in (1, b) or bias.shape[1:] != (n, t, s):
      raise ValueError(f"bias must be [N, T, S] or [1|B, N, T, S] = [.., {n}, {t}, {s}], "
                       f"got {bias.shape}")
    bias_batched = bias.shape[0] == b and b > 1
    bias = _pad(bias, ((0, 0), (0, 0), (0, tp - t), (0, sp - s)))

  cfg = _Static(scale=float(scale), causal=bool(causal), has_bias=bias is not None,
                bias_batched=bias_batched, has_segments=q_segment_ids is not None,
                has_prefix=prefix is not None, blocks=blocks, interpret=bool(interpret))
  out = _flash(cfg, q, k, v, bias, q_segment_ids, kv_segment_ids, prefix)
  return out[:, :t, :, :h]


def _clamp(block: int, length: int) -> int:
  """The block for a sequence of `length`: no larger than the padded length, at least 16."""
  return max(16, min(block, _next_pow2(length)))


def _next_pow2(x: int) -> int:
  return 1 << max(0, (x - 1).bit_length())


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _pad(x, widths):
  return x if all(w == (0, 0) for w in widths) else jnp.pad(x, widths)


# ---------------------------------------------------------------------------------------------
# Kernels. Each program owns one (batch, query head, tile); refs arrive without those axes.


def _mask(cfg: _Static, q_pos, k_pos, q_seg, k_seg, q_pre, k_pre):
  """`[bq, bk]` visibility for one tile, or None when everything is visible."""
  mask = None
  if cfg.has_segments:
    mask = (q_seg[:, None] == k_seg[None, :]) & (k_seg[None, :] != 0)
  if cfg.causal:
    vis = q_pos[:, None] >= k_pos[None, :]
    if cfg.has_prefix:
      vis = vis | ((q_pre[:, None] != 0) & (k_pre[None, :] != 0))
    mask = vis if mask is None else mask & vis
  return mask


def _logits(cfg: _Static, q, k, bias_tile):
  """`scale * q.k (+ bias)` in float32, as XLA's reference computes them."""
  s = plgpu.dot(q, k, trans_b=True).astype(jnp.float32) * cfg.scale
  if bias_tile is not None:
    s = s + bias_tile.astype(jnp.float32)
  return s


def _kv_upper(cfg: _Static, qi, bq: int, bk: int, nk: int):
  """Key tiles a query tile needs: all of them, or (causal, no prefix) up to the diagonal."""
  if cfg.causal and not cfg.has_prefix:
    return jnp.minimum(nk, jax.lax.div((qi + 1) * bq + bk - 1, bk))
  return nk


def _unpack(cfg: _Static, refs):
  """Splits the optional inputs off the front of `refs`: (bias, qseg, kseg, qpre, kpre, rest)."""
  refs = list(refs)
  bias = refs.pop(0) if cfg.has_bias else None
  qseg, kseg = (refs.pop(0), refs.pop(0)) if cfg.has_segments else (None, None)
  qpre, kpre = (refs.pop(0), refs.pop(0)) if cfg.has_prefix else (None, None)
  return bias, qseg, kseg, qpre, kpre, refs


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, cfg: _Static, seq_k: int):
  bias_ref, qseg_ref, kseg_ref, qpre_ref, kpre_ref, (o_ref, lse_ref) = _unpack(cfg, refs)
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  qi = pl.program_id(2)
  q = q_ref[...]
  q_pos = qi * bq + jnp.arange(bq)
  q_seg = None if qseg_ref is None else qseg_ref[...]
  q_pre = None if qpre_ref is None else qpre_ref[...]

  def body(kj, carry):
    acc, m, l = carry
    ks = pl.ds(kj * bk, bk)
    logits = _logits(cfg, q, k_ref[ks, :], None if bias_ref is None else bias_ref[:, ks])
    mask = _mask(cfg, q_pos, kj * bk + jnp.arange(bk),
                 q_seg, None if kseg_ref is None else kseg_ref[ks],
                 q_pre, None if kpre_ref is None else kpre_ref[ks])
    if mask is not None:
      logits = jnp.where(mask, logits, NEG)
    m_new = jnp.maximum(m, jnp.max(logits, axis=1))
    p = jnp.exp(logits - m_new[:, None])
    alpha = jnp.exp(m - m_new)
    v = v_ref[ks, :]
    acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v).astype(jnp.float32)
    return acc, m_new, l * alpha + jnp.sum(p, axis=1)

  hp = q.shape[-1]
  init = (jnp.zeros((bq, hp), jnp.float32), jnp.full((bq,), NEG, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = jax.lax.fori_loop(0, _kv_upper(cfg, qi, bq, bk, seq_k // bk), body, init)
  # A row whose max is still NEG saw only masked keys: zero output, and an lse that zeroes
  # its probabilities in the backward pass.
  empty = m <= NEG
  o_ref[...] = jnp.where(empty[:, None], 0.0, acc / jnp.where(empty, 1.0, l)[:, None]).astype(
      o_ref.dtype)
  lse_ref[...] = jnp.where(empty, EMPTY_LSE, m + jnp.log(jnp.where(empty, 1.0, l)))


def _probs_and_ds(cfg, q, k, v, do, lse, delta, bias_tile, mask):
  """Recomputed probabilities `p` and logit gradients `ds = p * (do.v - delta)` of one tile."""
  logits = _logits(cfg, q, k, bias_tile)
  if mask is not None:
    logits = jnp.where(mask, logits, NEG)
  p = jnp.exp(logits - lse[:, None])
  dp = plgpu.dot(do, v, trans_b=True).astype(jnp.float32)
  return p, p * (dp - delta[:, None])


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: _Static,
                seq_q: int):
  """One key tile against every query tile: dk, dv (per query head) and dbias columns."""
  bias_ref, qseg_ref, kseg_ref, qpre_ref, kpre_ref, out = _unpack(cfg, refs)
  dk_ref, dv_ref = out[0], out[1]
  dbias_ref = out[2] if cfg.has_bias else None
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  kj = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  k_pos = kj * bk + jnp.arange(bk)
  k_seg = None if kseg_ref is None else kseg_ref[...]
  k_pre = None if kpre_ref is None else kpre_ref[...]
  # Causal without a prefix: query tiles wholly above the diagonal see none of these keys.
  lower = (jax.lax.div(kj * bk, bq) if cfg.causal and not cfg.has_prefix else 0)

  if dbias_ref is not None and cfg.causal and not cfg.has_prefix:
    def zero(qi, c):  # output buffers start uninitialised on GPU
      dbias_ref[pl.ds(qi * bq, bq), :] = jnp.zeros((bq, bk), dbias_ref.dtype)
      return c
    jax.lax.fori_loop(0, lower, zero, 0)

  def body(qi, carry):
    dk, dv = carry
    qs = pl.ds(qi * bq, bq)
    q, do = q_ref[qs, :], do_ref[qs, :]
    mask = _mask(cfg, qi * bq + jnp.arange(bq), k_pos,
                 None if qseg_ref is None else qseg_ref[qs], k_seg,
                 None if qpre_ref is None else qpre_ref[qs], k_pre)
    p, ds = _probs_and_ds(cfg, q, k, v, do, lse_ref[qs], delta_ref[qs],
                          None if bias_ref is None else bias_ref[qs, :], mask)
    if dbias_ref is not None:
      dbias_ref[qs, :] = ds.astype(dbias_ref.dtype)
    dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True).astype(jnp.float32)
    dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True).astype(jnp.float32)
    return dk, dv

  hp = k.shape[-1]
  zeros = jnp.zeros((bk, hp), jnp.float32)
  dk, dv = jax.lax.fori_loop(lower, seq_q // bq, body, (zeros, zeros))
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: _Static,
               seq_k: int):
  """One query tile against the key tiles it sees: dq."""
  bias_ref, qseg_ref, kseg_ref, qpre_ref, kpre_ref, (dq_ref,) = _unpack(cfg, refs)
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  qi = pl.program_id(2)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_pos = qi * bq + jnp.arange(bq)
  q_seg = None if qseg_ref is None else qseg_ref[...]
  q_pre = None if qpre_ref is None else qpre_ref[...]

  def body(kj, dq):
    ks = pl.ds(kj * bk, bk)
    k = k_ref[ks, :]
    mask = _mask(cfg, q_pos, kj * bk + jnp.arange(bk),
                 q_seg, None if kseg_ref is None else kseg_ref[ks],
                 q_pre, None if kpre_ref is None else kpre_ref[ks])
    _, ds = _probs_and_ds(cfg, q, k, v_ref[ks, :], do, lse, delta,
                          None if bias_ref is None else bias_ref[:, ks], mask)
    return dq + plgpu.dot(ds.astype(k.dtype), k).astype(jnp.float32)

  dq = jax.lax.fori_loop(0, _kv_upper(cfg, qi, bq, bk, seq_k // bk), body,
                         jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


# ---------------------------------------------------------------------------------------------
# pallas_call plumbing and the custom VJP.


def _extra_specs(cfg: _Static, tq: int, tk: int, full_q: bool, full_k: bool, seq_q: int,
                 seq_k: int):
  """BlockSpecs of the optional inputs (bias, q/kv segment ids, q/kv prefix) for a grid
  `(batch, head, tile)`: `full_q`/`full_k` say whether a program sees the whole sequence on
  that side (a loop over tiles) or only its own tile."""
  qblk, qmap = ((seq_q, lambda i: 0) if full_q else (tq, lambda i: i))
  kblk, kmap = ((seq_k, lambda i: 0) if full_k else (tk, lambda i: i))
  specs = []
  if cfg.has_bias:
    bb = (lambda bi: bi) if cfg.bias_batched else (lambda bi: 0)
    specs.append(pl.BlockSpec((None, None, qblk, kblk),
                              lambda bi, ni, i: (bb(bi), ni, qmap(i), kmap(i))))
  if cfg.has_segments:
    specs += [pl.BlockSpec((None, qblk), lambda bi, ni, i: (bi, qmap(i))),
              pl.BlockSpec((None, kblk), lambda bi, ni, i: (bi, kmap(i)))]
  if cfg.has_prefix:
    specs += [pl.BlockSpec((None, qblk), lambda bi, ni, i: (bi, qmap(i))),
              pl.BlockSpec((None, kblk), lambda bi, ni, i: (bi, kmap(i)))]
  return specs


def _extra_args(cfg: _Static, bias, qseg, kseg, prefix):
  args = [bias] if cfg.has_bias else []
  if cfg.has_segments:
    args += [qseg, kseg]
  if cfg.has_prefix:
    args += [prefix, prefix]
  return args


def _params(cfg: _Static, head_dim: int):
  warps = cfg.blocks.num_warps or (4 if head_dim <= 64 else 8)
  return plgpu.CompilerParams(num_warps=warps, num_stages=cfg.blocks.num_stages)


def _forward(cfg: _Static, q, k, v, bias, qseg, kseg, prefix):
  b, t, n, h = q.shape
  s, group = k.shape[1], n // k.shape[2]
  bq = cfg.blocks.block_q
  grid = (b, n, t // bq)
  in_specs = [
      pl.BlockSpec((None, bq, None, h), lambda bi, ni, i: (bi, i, ni, 0)),
      pl.BlockSpec((None, s, None, h), lambda bi, ni, i: (bi, 0, ni // group, 0)),
      pl.BlockSpec((None, s, None, h), lambda bi, ni, i: (bi, 0, ni // group, 0)),
  ] + _extra_specs(cfg, bq, 0, False, True, t, s)
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg, seq_k=s),
      grid=grid,
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, h), lambda bi, ni, i: (bi, i, ni, 0)),
                 pl.BlockSpec((None, None, bq), lambda bi, ni, i: (bi, ni, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, n, t), jnp.float32)],
      compiler_params=_params(cfg, h),
      interpret=cfg.interpret,
      name="mtjax_flash_fwd",
  )(q, k, v, *_extra_args(cfg, bias, qseg, kseg, prefix))
  return out, lse


def _backward(cfg: _Static, q, k, v, bias, qseg, kseg, prefix, out, lse, do):
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  group = n // kh
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  # delta_t = sum_h o * do: the softmax Jacobian's row term, cheap enough for XLA.
  delta = jnp.einsum("btnh,btnh->bnt", out.astype(jnp.float32), do.astype(jnp.float32))
  extra = _extra_args(cfg, bias, qseg, kseg, prefix)
  row = lambda blk, full: pl.BlockSpec((None, None, blk),
                                       (lambda bi, ni, i: (bi, ni, 0)) if full
                                       else (lambda bi, ni, i: (bi, ni, i)))

  # dk, dv: a program per key tile and query head; GQA sums the group's heads afterwards.
  q_full = pl.BlockSpec((None, t, None, h), lambda bi, ni, i: (bi, 0, ni, 0))
  kv_tile = pl.BlockSpec((None, bk, None, h), lambda bi, ni, i: (bi, i, ni // group, 0))
  out_specs = [pl.BlockSpec((None, bk, None, h), lambda bi, ni, i: (bi, i, ni, 0))] * 2
  out_shape = [jax.ShapeDtypeStruct((b, s, n, h), jnp.float32)] * 2
  if cfg.has_bias:
    out_specs.append(pl.BlockSpec((None, None, t, bk), lambda bi, ni, i: (bi, ni, 0, i)))
    out_shape.append(jax.ShapeDtypeStruct((b, n, t, s), jnp.float32))
  res = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, seq_q=t),
      grid=(b, n, s // bk),
      in_specs=[q_full, kv_tile, kv_tile, q_full, row(t, True), row(t, True)]
      + _extra_specs(cfg, 0, bk, True, False, t, s),
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_params(cfg, h),
      interpret=cfg.interpret,
      name="mtjax_flash_dkv",
  )(q, k, v, do, lse, delta, *extra)
  dk, dv = res[0], res[1]
  dk = dk.reshape(b, s, kh, group, h).sum(3).astype(k.dtype)
  dv = dv.reshape(b, s, kh, group, h).sum(3).astype(v.dtype)
  dbias = None
  if cfg.has_bias:
    dbias = res[2] if cfg.bias_batched else jnp.sum(res[2], axis=0, keepdims=True)
    dbias = dbias.astype(bias.dtype)

  # dq: a program per query tile and head, looping over the key tiles it sees.
  q_tile = pl.BlockSpec((None, bq, None, h), lambda bi, ni, i: (bi, i, ni, 0))
  kv_full = pl.BlockSpec((None, s, None, h), lambda bi, ni, i: (bi, 0, ni // group, 0))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, seq_k=s),
      grid=(b, n, t // bq),
      in_specs=[q_tile, kv_full, kv_full, q_tile, row(bq, False), row(bq, False)]
      + _extra_specs(cfg, bq, 0, False, True, t, s),
      out_specs=pl.BlockSpec((None, bq, None, h), lambda bi, ni, i: (bi, i, ni, 0)),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_params(cfg, h),
      interpret=cfg.interpret,
      name="mtjax_flash_dq",
  )(q, k, v, do, lse, delta, *extra)
  return dq, dk, dv, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg: _Static, q, k, v, bias, qseg, kseg, prefix):
  return _forward(cfg, q, k, v, bias, qseg, kseg, prefix)[0]


def _flash_fwd(cfg, q, k, v, bias, qseg, kseg, prefix):
  out, lse = _forward(cfg, q, k, v, bias, qseg, kseg, prefix)
  return out, (q, k, v, bias, qseg, kseg, prefix, out, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, bias, qseg, kseg, prefix, out, lse = res
  dq, dk, dv, dbias = _backward(cfg, q, k, v, bias, qseg, kseg, prefix, out, lse, do)
  return dq, dk, dv, dbias, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
