"""Building blocks shared by the model families. Every parameter carries logical axis names."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec as P

from mtjax.parallel.rules import constrain, logical_to_spec
from mtjax.parallel.rules import param  # noqa: F401  (the models' name for it: layers.param)
from mtjax.peft import routing

# Named rematerialisation policies for the blocks (config option `remat`).
REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_call(block, policy_name: str, *args):
  """`block(*args)`, rematerialised in the backward pass under the named policy."""
  if policy_name == "none":
    return block(*args)
  # Auxiliary losses an adapter reports inside leave the rematerialised trace as outputs.
  call = routing.isolated(lambda b, *a: b(*a))
  out, aux = nnx.remat(call, policy=REMAT_POLICIES[policy_name])(block, *args)
  routing.release(aux, call.coefs)
  return out


def stacked(make, n: int, rngs: nnx.Rngs):
  """`n` blocks `make(rngs)` as one module whose parameters have a leading `layers` axis."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(rngs):
    return make(rngs)

  return create(rngs)


def scan(stack, fn, x, xs=None, remat: str = "none"):
  """`jax.lax.scan` of `fn(block, x, xs_i) -> (x, y_i)` over a `stacked` module's layers."""
  graphdef, state = nnx.split(stack)

  # Auxiliary losses an adapter reports in a layer leave the scan as per-layer outputs
  # (mtjax.peft.routing), summed over the layers outside.
  step = routing.isolated(lambda layer_state, x, xi: fn(nnx.merge(graphdef, layer_state), x, xi))

  def body(x, inputs):
    layer_state, xi = inputs
    (x, y), aux = step(layer_state, x, xi)
    return x, (y, aux)

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
  x, (ys, aux) = jax.lax.scan(body, x, (state, xs))
  routing.release(aux, step.coefs, reduce_axis=0)
  return x, ys


def normal(stddev: float):
  return jax.nn.initializers.normal(stddev=stddev)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout; identity when `rng` is None (evaluation) or `rate` is 0."""
  if rng is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class RMSNorm(nnx.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias.

  `plus_one` (Gemma) stores the scale as an offset from 1 (init 0), as Gemma checkpoints do.
  """

  def __init__(self, features: int, *, eps: float, param_dtype, rngs: nnx.Rngs,
               plus_one: bool = False):
    self.eps, self.plus_one = eps, plus_one
    init = jax.nn.initializers.zeros if plus_one else jax.nn.initializers.ones
    self.scale = param(rngs, init, (features,), ("embed",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    return (y * (1.0 + scale if self.plus_one else scale)).astype(x.dtype)


class Embed(nnx.Module):
  """Token embedding table `[vocab, embed]`; `attend` reuses it as a tied output head."""

  def __init__(self, vocab_size: int, features: int, *, param_dtype, rngs: nnx.Rngs):
    self.embedding = param(rngs, normal(1.0), (vocab_size, features), ("vocab", "embed"),
                           param_dtype)

  def __call__(self, tokens: jax.Array, dtype) -> jax.Array:
    return jnp.take(self.embedding[...].astype(dtype), tokens, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("btd,vd->btv", x, self.embedding[...].astype(x.dtype))


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("q_segment_ids", "kv_segment_ids", "prefix"),
                   meta_fields=("causal", "mask_padding_keys"))
@dataclasses.dataclass(frozen=True)
class Mask:
  """Which keys each query sees, described by `[B, T]` / `[B, S]` vectors instead of a dense
  `[B, 1, T, S]` array, so a flash kernel can rebuild it tile by tile.

  Query `t` sees key `s` if `q_segment_ids[t] == kv_segment_ids[s]` (with only
  `kv_segment_ids`: if `kv_segment_ids[s] > 0`), and, when `causal`, if `s <= t` or both are in
  the prefix-LM `prefix` (SeqIO's `decoder_causal_attention`). `dense` builds the boolean mask
  XLA's kernel takes exactly as the model code built it before this class existed (so the
  `xla` path is bit-identical); `mask_padding_keys` (T5's encoder) adds `kv_segment_ids > 0`
  there, which only changes rows of padding. The Pallas kernel treats segment 0 as padding
  throughout: a padding query sees nothing and gets zeros (mtjax.models.flash_attention).
  """
  q_segment_ids: jax.Array | None = None
  kv_segment_ids: jax.Array | None = None
  prefix: jax.Array | None = None
  causal: bool = False
  mask_padding_keys: bool = False

  @property
  def plain(self) -> bool:
    """No per-example mask: plain causal or full attention (what cuDNN's flash kernel runs)."""
    return self.q_segment_ids is None and self.kv_segment_ids is None and self.prefix is None

  def dense(self, q_len: int, kv_len: int) -> jax.Array | None:
    """The `[B or 1, 1, T, S]` boolean mask, or None for plain attention (`is_causal` then
    says whether it is causal)."""
    if self.plain:
      return None
    mask = None
    if self.causal:
      mask = jnp.tril(jnp.ones((q_len, kv_len), bool))[None, None]
      if self.prefix is not None:
        ca = self.prefix.astype(bool)
        mask = mask | (ca[:, None, :, None] & ca[:, None, None, :])
    if self.q_segment_ids is not None:
      same = (self.q_segment_ids[:, :, None] == self.kv_segment_ids[:, None, :])[:, None]
      mask = same if mask is None else mask & same
    if self.kv_segment_ids is not None and (self.q_segment_ids is None
                                            or self.mask_padding_keys):
      keys = (self.kv_segment_ids > 0)[:, None, None, :]
      mask = keys if mask is None else mask & keys
    return mask


def attention_implementation(q, *, bias=None, mask=None, requested: str = "auto") -> str:
  """Which kernel runs: "xla", "cudnn" (both through `jax.nn.dot_product_attention`) or
  "pallas" (mtjax.models.flash_attention).

  `jax.nn.dot_product_attention(implementation=None)` always takes XLA's kernel, which
  materialises `[B, N, T, S]` scores (out of memory for a 270M decoder at 16 x 2048 on 80 GB).
  "auto" on GPU picks cuDNN for 16-bit inputs with no per-example mask and no bias (plain
  causal or full attention, head dim <= 128), and the Pallas flash kernel for the rest that a
  `Mask` describes (packed rows, prefix-LM, every T5 attention with its bias). A dense array
  mask (the KV-cache decoding paths) always runs XLA, and so does everything off GPU: CPU
  results (tests, the quickstart) stay those of XLA's kernel. "pallas" off GPU runs the kernel
  in Pallas interpret mode (slow; for tests).
  """
  if requested not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"model.attention must be one of {ATTENTION_IMPLEMENTATIONS}, "
                     f"got {requested!r}")
  structured = mask is None or isinstance(mask, Mask)
  if requested == "pallas":
    return "pallas" if structured else "xla"
  if requested != "auto":
    return requested
  if jax.default_backend() != "gpu":
    return "xla"
  plain = structured and (mask is None or mask.plain)
  if (plain and bias is None and q.dtype in (jnp.bfloat16, jnp.float16)
      and q.shape[-1] <= 128):
    return "cudnn"
  if structured and (not plain or bias is not None) and q.shape[-1] <= 256:
    return "pallas"
  return "xla"


def attention(q, k, v, *, bias=None, mask=None, causal: bool = False, scale: float = 1.0,
              implementation: str = "auto"):
  """`[B,T,N,H]` attention (K/V may have fewer heads: grouped-query).

  `mask`: a `Mask` (structured; any kernel), a dense boolean `[B|1, 1|N, T, S]` array (XLA's
  kernel), or None with `causal` saying whether it is causal. `bias`: additive, broadcastable
  to `[B, N, T, S]` (T5's relative-position bias `[1, N, T, S]`).
  """
  impl = attention_implementation(q, bias=bias, mask=mask, requested=implementation)
  if isinstance(mask, Mask):
    causal = mask.causal
  if impl == "pallas":
    return _pallas_attention(q, k, v, bias=bias, mask=mask or Mask(causal=causal), scale=scale)
  if isinstance(mask, Mask):
    mask = mask.dense(q.shape[1], k.shape[1])
    causal = causal and mask is None  # a dense mask already holds the causal part
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                      is_causal=causal, implementation=impl)


def _pallas_attention(q, k, v, *, bias, mask: Mask, scale: float):
  """The flash kernel; under a mesh, per shard (batch over the data axes, heads over `tensor`),
  since a Pallas call is opaque to XLA's partitioner."""
  from mtjax.models import flash_attention  # pylint: disable=g-import-not-at-top

  def run(q, k, v, bias, q_seg, kv_seg, prefix):
    return flash_attention.flash_attention(
        q, k, v, bias=bias, q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=mask.causal,
        prefix=prefix, scale=scale)

  args = (q, k, v, bias, mask.q_segment_ids, mask.kv_segment_ids, mask.prefix)
  abstract = jax.sharding.get_abstract_mesh()
  if abstract.empty or not flax_spmd.get_logical_axis_rules():
    return run(*args)
  batch = logical_to_spec(("batch",))[0]
  heads = logical_to_spec(("heads",))[0]
  size = lambda axes: math.prod(abstract.shape[a] for a in (
      () if axes is None else (axes,) if isinstance(axes, str) else axes))
  if q.shape[0] % size(batch):
    batch = None
  if k.shape[2] % size(heads) or q.shape[2] % size(heads):
    heads = None
  bias_spec = None
  if bias is not None:
    bias_spec = (P(heads, None, None) if bias.ndim == 3 else
                 P(batch if bias.shape[0] > 1 else None, heads, None, None))
  vec = lambda x: None if x is None else P(batch, None)
  specs = (P(batch, None, heads, None),) * 3 + (bias_spec,) + tuple(
      vec(x) for x in args[4:])
  return jax.shard_map(run, in_specs=specs, out_specs=P(batch, None, heads, None),
                       check_vma=False)(*args)


def activation_names(x: jax.Array) -> jax.Array:
  """Shards `[batch, length, embed]` activations at block boundaries."""
  return constrain(x, ("batch", "length", "embed"))
