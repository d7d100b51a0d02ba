"""What a multi-task adapter may read besides its input, and what it reports back.

Task-routed adapters (`mtjax.peft.poly`, `mtjax.peft.mtlora`) need the mixture task of every
token they project; routers with an auxiliary loss (`mtjax.peft.moe_lora`) report it to the train
step. Neither travels through the model's call signatures: the model opens a `scope` around each
stream it runs (T5: the encoder, then the decoder with the encoder's ids as `memory` for
cross-attention's keys and values; decoder family: its one stream), and the train step opens a
`collect` around the forward pass. Both are Python context (read while JAX traces), so the ids
are traced values of the enclosing computation; a `lax.scan` or `jax.checkpoint` body that
reports a loss must hand it out of its trace (`isolated`, which `models.layers.scan` /
`remat_call` use).

Ids per token: the pipeline's `task_ids` are aligned with the targets (decoder rows: the whole
`inputs + targets` sequence), packed rows included. T5's encoder tokens get the task of their
segment (`encoder_task_ids`).

Outside a scope (decoding, scoring) task-routed adapters use the task fixed on them by
`mtjax.peft.adapters.select_task` (static, so each task compiles its own program), and raise a
clear error when none is fixed.

Stochastic routers (Poly/MHR with `model.adapter_routing=gumbel`) draw their noise from the
`noise` key each layer opens around its body during training (its dropout rng; none at
evaluation: then they are deterministic). Each draw (`noise_key`) folds a running count into
that key, so the modules of one layer draw independently, and the layers of a scanned stack
(each with its own key) too.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Scope:
  ids: jax.Array | None  # [B, L] task index of each token of the stream being projected
  real: jax.Array | None  # [B, L] 1 on real (not padding) tokens
  memory: "Scope | None" = None  # T5 decoder: the encoder stream (cross-attention keys/values)


_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("mtjax_routing_scope",
                                                                     default=None)
_COLLECTOR: contextvars.ContextVar["Collector | None"] = contextvars.ContextVar(
    "mtjax_routing_collector", default=None)
_NOISE: contextvars.ContextVar["_Noise | None"] = contextvars.ContextVar("mtjax_routing_noise",
                                                                       default=None)
NOISE_SALT = 0x50_4F_4C_59  # folded into a layer's rng: its routing noise is not its dropout's


@contextlib.contextmanager
def scope(ids, real=None, memory: Scope | None = None) -> Iterator[None]:
  """Projections run inside see `ids` / `real` (both `[B, L]`, or None)."""
  token = _SCOPE.set(Scope(None if ids is None else jnp.asarray(ids, jnp.int32),
                           None if real is None else jnp.asarray(real), memory))
  try:
    yield
  finally:
    _SCOPE.reset(token)


@contextlib.contextmanager
def reading_memory() -> Iterator[None]:
  """Inside, projections see the enclosing scope's `memory` stream (T5 cross-attention K/V)."""
  current = _SCOPE.get()
  token = _SCOPE.set(None if current is None else current.memory)
  try:
    yield
  finally:
    _SCOPE.reset(token)


def current() -> Scope | None:
  return _SCOPE.get()


class _Noise:
  def __init__(self, key: jax.Array):
    self.key, self.count = key, 0


@contextlib.contextmanager
def noise(key: jax.Array | None) -> Iterator[None]:
  """Stochastic routers run inside draw from `key` (a layer's training rng); None: they are
  deterministic (evaluation, decoding, scoring)."""
  token = _NOISE.set(None if key is None else _Noise(key))
  try:
    yield
  finally:
    _NOISE.reset(token)


def noise_key() -> jax.Array | None:
  """A fresh key for one router's draw (None outside `noise` or with a None key)."""
  n = _NOISE.get()
  if n is None:
    return None
  n.count += 1
  return jax.random.fold_in(jax.random.fold_in(n.key, NOISE_SALT), n.count)


def token_ids(shape) -> jax.Array | None:
  """The current stream's task ids if they match the projected input's `[B, L]`, else None."""
  s = _SCOPE.get()
  if s is None or s.ids is None or tuple(s.ids.shape) != tuple(shape):
    return None
  return s.ids


def real_tokens(shape) -> jax.Array | None:
  s = _SCOPE.get()
  if s is None or s.real is None or tuple(s.real.shape) != tuple(shape):
    return None
  return s.real


def encoder_task_ids(task_ids, decoder_segment_ids, encoder_segment_ids, encoder_length: int):
  """`[B, S]` task of each encoder token: packed, the task of its segment (read off the decoder
  tokens of the same segment); unpacked, the row's task (its first target token's)."""
  task_ids = jnp.asarray(task_ids, jnp.int32)
  b = task_ids.shape[0]
  if decoder_segment_ids is None or encoder_segment_ids is None:
    return jnp.broadcast_to(task_ids[:, :1], (b, encoder_length))
  dec_seg = jnp.asarray(decoder_segment_ids, jnp.int32)
  enc_seg = jnp.asarray(encoder_segment_ids, jnp.int32)
  n = max(dec_seg.shape[1], enc_seg.shape[1]) + 1
  rows = jnp.arange(b)[:, None]
  by_segment = jnp.zeros((b, n), jnp.int32).at[rows, dec_seg].max(task_ids)
  return jnp.take_along_axis(by_segment, jnp.clip(enc_seg, 0, n - 1), axis=1)


# --- auxiliary losses -----------------------------------------------------------------------


class Collector:
  """Auxiliary losses reported during one forward pass, by name: the sum over the modules that
  reported, their count, and per task (when ids were known) the same; `coefs[name]` is the
  weight of the name's mean in the training loss."""

  def __init__(self):
    self.sums: dict[str, dict[str, jax.Array]] = {}
    self.coefs: dict[str, float] = {}

  def add(self, name: str, parts: dict[str, jax.Array], coef: float) -> None:
    old = self.sums.get(name)
    self.sums[name] = parts if old is None else {k: old[k] + parts[k] for k in parts}
    self.coefs[name] = coef

  def penalty(self) -> jax.Array:
    """`sum over names of coef * (mean over reporting modules)`: what the step adds to its loss."""
    total = jnp.zeros((), jnp.float32)
    for name, parts in self.sums.items():
      total = total + self.coefs[name] * parts["sum"] / jnp.maximum(parts["count"], 1.0)
    return total

  def metrics(self) -> dict[str, jax.Array]:
    """Summable metrics: `aux_sum/<name>`, `aux_count/<name>` and, per task, `aux_task_sum/...`,
    `aux_task_count/...` (`mtjax.train.metrics.summarize` turns them into means)."""
    out = {}
    for name, parts in self.sums.items():
      out[f"aux_sum/{name}"] = parts["sum"]
      out[f"aux_count/{name}"] = parts["count"]
      if "task_sum" in parts:
        out[f"aux_task_sum/{name}"] = parts["task_sum"]
        out[f"aux_task_count/{name}"] = parts["task_count"]
    return out


@contextlib.contextmanager
def collect() -> Iterator[Collector]:
  """Collects the auxiliary losses of the forward passes run inside."""
  c = Collector()
  token = _COLLECTOR.set(c)
  try:
    yield c
  finally:
    _COLLECTOR.reset(token)


def collecting() -> bool:
  return _COLLECTOR.get() is not None


def report(name: str, value: jax.Array, coef: float, task_values: jax.Array | None = None,
           task_present: jax.Array | None = None) -> None:
  """One module's auxiliary loss (`value`, a scalar) and, optionally, the same loss computed on
  each task's tokens alone (`task_values [num_tasks]`, counted where `task_present`)."""
  c = _COLLECTOR.get()
  if c is None:
    return
  parts = {"sum": jnp.asarray(value, jnp.float32), "count": jnp.ones((), jnp.float32)}
  if task_values is not None:
    present = task_present.astype(jnp.float32)
    parts["task_sum"] = jnp.where(present > 0, task_values, 0.0).astype(jnp.float32)
    parts["task_count"] = present
  c.add(name, parts, coef)


def isolated(fn: Callable) -> Callable:
  """`fn` made safe inside a traced body (`lax.scan`, `jax.checkpoint`): returns `(out, aux)`,
  the losses `fn` reported as arrays, which `release(aux, coefs)` reports outside. When nothing
  collects, `aux` is empty and `fn` runs unchanged."""

  def wrapped(*args):
    if not collecting():
      return fn(*args), {}
    with collect() as inner:
      out = fn(*args)
    wrapped.coefs = dict(inner.coefs)
    return out, inner.sums

  wrapped.coefs = {}
  return wrapped


def release(aux: dict[str, dict[str, jax.Array]], coefs: dict[str, float],
            reduce_axis: int | None = None) -> None:
  """Reports `isolated`'s aux outside the traced body (summed over `reduce_axis`: scan's layers)."""
  c = _COLLECTOR.get()
  if c is None:
    return
  for name, parts in aux.items():
    if reduce_axis is not None:
      parts = {k: jnp.sum(v, axis=reduce_axis) for k, v in parts.items()}
    c.add(name, parts, coefs[name])
