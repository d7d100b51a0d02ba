"""Building blocks shared by the model families. Every parameter carries logical axis names."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax.parallel.rules import constrain

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
  return nnx.remat(lambda b, *a: b(*a), policy=REMAT_POLICIES[policy_name])(block, *args)


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

  def body(x, inputs):
    layer_state, xi = inputs
    return fn(nnx.merge(graphdef, layer_state), x, xi)

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
  return jax.lax.scan(body, x, (state, xs))


def param(rngs: nnx.Rngs, init, shape: Sequence[int], names: Sequence[str], dtype) -> nnx.Param:
  """A parameter with logical axis names (turned into mesh axes by mtjax.parallel.rules)."""
  if len(shape) != len(names):
    raise ValueError(f"shape {tuple(shape)} and axis names {tuple(names)} differ in rank")
  value = init(rngs.params(), tuple(shape), dtype)
  if jax.sharding.get_abstract_mesh().empty:  # no mesh: keep the names, place nothing
    with nnx.use_eager_sharding(False):
      return nnx.Param(value, sharding_names=tuple(names))
  return nnx.Param(value, sharding_names=tuple(names))


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


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def attention_implementation(q, *, bias=None, mask=None, requested: str = "auto") -> str:
  """Which `jax.nn.dot_product_attention` kernel runs: cuDNN flash attention when it can.

  `jax.nn.dot_product_attention(implementation=None)` always takes XLA's kernel, which
  materialises `[B, N, T, S]` scores (out of memory for a 270M decoder at 16 x 2048 on 80 GB).
  "auto" picks cuDNN on GPU for 16-bit inputs with no dense mask or bias (plain causal or full
  attention, head dim <= 128); packed rows, prefix-LM masks and the KV cache stay on XLA.
  """
  if requested not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"model.attention must be one of {ATTENTION_IMPLEMENTATIONS}, "
                     f"got {requested!r}")
  if requested != "auto":
    return requested
  if (jax.default_backend() == "gpu" and mask is None and bias is None
      and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128):
    return "cudnn"
  return "xla"


def attention(q, k, v, *, bias=None, mask=None, causal: bool = False, scale: float = 1.0,
              implementation: str = "auto"):
  """`[B,T,N,H]` attention (K/V may have fewer heads: grouped-query) through
  `jax.nn.dot_product_attention`; `causal` instead of a mask lets cuDNN's flash kernel run."""
  impl = attention_implementation(q, bias=bias, mask=mask, requested=implementation)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                      is_causal=causal, implementation=impl)


def activation_names(x: jax.Array) -> jax.Array:
  """Shards `[batch, length, embed]` activations at block boundaries."""
  return constrain(x, ("batch", "length", "embed"))
