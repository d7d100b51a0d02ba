"""T5-family encoder-decoder in Flax NNX (T5 v1.1 / mT5 / Flan-T5 shape; v1.0 via config).

Relative position buckets (shared across a stack's layers, as in T5), RMS layer norm, no biases,
gated-GELU or ReLU feed-forward, tied or untied output head. Attention is packing-aware:
segment ids restrict attention to the same example. T5 folds 1/sqrt(d) into the query init,
so attention uses scale 1.

Soft-prompt hook: `model.embed_hook`, if set, is called on the embedded encoder inputs as
`hook(x, segment_ids, None) -> (x, segment_ids, None)`, or with a fourth argument
`prompt_ids [B]` when the batch carries them (which prompt each example gets,
`mtjax.peft.prompts`); it may insert positions (a soft prompt), and the returned segment ids
then mask self- and cross-attention. The hook is an `nnx.Module` (its parameters join the
model's state) or None.

Incremental decoding: `start_decode(model, batch, max_decode_len)` (encodes once, computes the
cross-attention keys/values once) and `decode_step(model, cache, tokens)`; every cache leaf has
the batch as its leading axis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax.models import layers
from mtjax.models.layers import param
from mtjax.parallel.rules import constrain
import contextlib

from mtjax.peft import adapters, lora, routing


# The projections LoRA can adapt (mtjax.peft.lora).
LORA_TARGETS = ("query", "key", "value", "out", "wi_0", "wi_1", "wo")


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward: str = "gated-gelu"  # or "relu" (T5 v1.0)
  tie_word_embeddings: bool = False
  layer_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  remat: str = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  scan_layers: bool = False  # each stack as one block with a leading `layers` axis, lax.scan
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  attention: str = "auto"  # auto | xla | cudnn | pallas (layers.attention_implementation)
  lora_rank: int = 0  # > 0: LoRA adapters on `lora_targets` (mtjax.peft.lora)
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("query", "value")
  # Multi-task adapters (mtjax.peft.adapters): lora | poly | mhr | mixlora | loramoe | mtlora
  adapter: str = "lora"
  adapter_experts: int = 4  # poly/mhr skills, mixlora/loramoe experts
  adapter_top_k: int = 2  # mixlora: experts per token
  adapter_heads: int = 4  # mhr: routing blocks per projection
  adapter_balance: float = 0.01  # mixlora/loramoe: weight of the balancing loss
  adapter_tasks: int = 0  # poly/mhr/mtlora (and per-task logging): tasks of the mixture
  adapter_knowledge: tuple[int, ...] = ()  # loramoe: mixture indices of "world knowledge" tasks
  adapter_default_task: int = -1  # poly/mhr/mtlora: the task used where none is known (-1: error)
  adapter_routing: str = "sigmoid"  # poly/mhr training routing: sigmoid | gumbel (mtjax.peft.poly)
  adapter_temperature: float = 1.0  # poly/mhr, gumbel: the relaxed Bernoulli's temperature
  adapter_shard_experts: bool = False  # mixlora/loramoe: expert banks over the tensor mesh axis

  def __post_init__(self):
    lora.check_targets(self, LORA_TARGETS)
    adapters.check(self)
    if self.feed_forward not in ("gated-gelu", "relu"):
      raise ValueError(f"model.feed_forward must be 'gated-gelu' or 'relu', "
                       f"got {self.feed_forward!r}")
    if self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {sorted(layers.REMAT_POLICIES)}, "
                       f"got {self.remat!r}")
    if self.attention not in layers.ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"model.attention must be one of {layers.ATTENTION_IMPLEMENTATIONS}, "
                       f"got {self.attention!r}")


PRESETS: dict[str, T5Config] = {
    # Tiny shapes for tests and the CPU quickstart (byte vocabulary: 259 ids, padded to 384).
    "t5_test": T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                        num_encoder_layers=2, num_decoder_layers=2,
                        relative_attention_num_buckets=16, relative_attention_max_distance=32),
    "t5_quickstart": T5Config(vocab_size=384, d_model=128, d_kv=32, d_ff=256, num_heads=4,
                              num_encoder_layers=2, num_decoder_layers=2,
                              relative_attention_num_buckets=32,
                              relative_attention_max_distance=64),
    # Published shapes (HF configs of google/t5-v1_1-*).
    "t5_1_1_small": T5Config(d_model=512, d_kv=64, d_ff=1024, num_heads=6,
                             num_encoder_layers=8, num_decoder_layers=8),
    "t5_1_1_base": T5Config(d_model=768, d_kv=64, d_ff=2048, num_heads=12,
                            num_encoder_layers=12, num_decoder_layers=12),
    "t5_1_1_large": T5Config(d_model=1024, d_kv=64, d_ff=2816, num_heads=16,
                             num_encoder_layers=24, num_decoder_layers=24),
    "t5_1_1_xl": T5Config(d_model=2048, d_kv=64, d_ff=5120, num_heads=32,
                          num_encoder_layers=24, num_decoder_layers=24),
    "t5_1_1_xxl": T5Config(d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
                           num_encoder_layers=24, num_decoder_layers=24),
}
# T5 v1.0 (google-t5/t5-*): ReLU, tied embeddings with d_model**-0.5 output scaling.
_V1_0 = {"feed_forward": "relu", "tie_word_embeddings": True, "d_kv": 64}
PRESETS.update({
    "t5_small": T5Config(d_model=512, d_ff=2048, num_heads=8, num_encoder_layers=6,
                         num_decoder_layers=6, **_V1_0),
    "t5_base": T5Config(d_model=768, d_ff=3072, num_heads=12, num_encoder_layers=12,
                        num_decoder_layers=12, **_V1_0),
    "t5_large": T5Config(d_model=1024, d_ff=4096, num_heads=16, num_encoder_layers=24,
                         num_decoder_layers=24, **_V1_0),
})
# Flan-T5 and T0 share the v1.1 shapes (T0 = t5_1_1_xl/xxl); mT5/mT0 add the 250k vocabulary.
for _size in ("small", "base", "large", "xl", "xxl"):
  PRESETS[f"flan_t5_{_size}"] = PRESETS[f"t5_1_1_{_size}"]
  PRESETS[f"mt5_{_size}"] = dataclasses.replace(PRESETS[f"t5_1_1_{_size}"], vocab_size=250112)


def preset(name: str, **overrides) -> T5Config:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's bucketing of `key_pos - query_pos`: exact for small offsets, log-spaced beyond."""
  bucket = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
      max_distance / max_exact)
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nnx.Module):
  """Per-head learned bias over relative-position buckets, shared by a stack's layers."""

  def __init__(self, cfg: T5Config, bidirectional: bool, *, rngs: nnx.Rngs):
    self.cfg, self.bidirectional = cfg, bidirectional
    self.embedding = param(rngs, layers.normal(1.0),
                           (cfg.relative_attention_num_buckets, cfg.num_heads),
                           ("relpos_buckets", "heads"), cfg.param_dtype)

  def __call__(self, q_len: int, k_len: int, dtype) -> jax.Array:
    rel = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]
    buckets = relative_position_bucket(rel, self.bidirectional,
                                       self.cfg.relative_attention_num_buckets,
                                       self.cfg.relative_attention_max_distance)
    # A one-hot product, not a gather: the gather's gradient scatters T x S rows into the few
    # bucket rows, and colliding scatter-adds serialise on GPU (5x slower T5-base steps).
    table = self.embedding[...]
    one_hot = jax.nn.one_hot(buckets, table.shape[0], dtype=table.dtype)  # [T, S, buckets]
    bias = jnp.einsum("tsb,bn->nts", one_hot, table, precision=jax.lax.Precision.HIGHEST)
    return bias[None].astype(dtype)  # [1, N, T, S]

  def at(self, q_pos: jax.Array, k_len: int, dtype) -> jax.Array:
    """`[B, N, 1, S]` bias for one query position per example (`q_pos [B]`), for decoding."""
    rel = jnp.arange(k_len)[None, :] - q_pos[:, None]
    buckets = relative_position_bucket(rel, self.bidirectional,
                                       self.cfg.relative_attention_num_buckets,
                                       self.cfg.relative_attention_max_distance)
    bias = jnp.take(self.embedding[...], buckets, axis=0)  # [B, S, N]
    return jnp.transpose(bias, (0, 2, 1))[:, :, None].astype(dtype)


class Attention(nnx.Module):
  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    d, n, h, pd = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.param_dtype
    self.cfg = cfg
    self.query = param(rngs, layers.normal((d * h) ** -0.5), (d, n, h), ("embed", "heads", "kv"), pd)
    self.key = param(rngs, layers.normal(d ** -0.5), (d, n, h), ("embed", "heads", "kv"), pd)
    self.value = param(rngs, layers.normal(d ** -0.5), (d, n, h), ("embed", "heads", "kv"), pd)
    self.out = param(rngs, layers.normal((n * h) ** -0.5), (n, h, d), ("heads", "kv", "embed"), pd)
    adapters.attach(self, cfg, {"query": 1, "key": 1, "value": 1, "out": 2}, rngs=rngs)

  def project_kv(self, x_kv):
    dt = x_kv.dtype
    k = lora.project(self, "key", x_kv,
                     jnp.einsum("bsd,dnh->bsnh", x_kv, self.key[...].astype(dt)))
    v = lora.project(self, "value", x_kv,
                     jnp.einsum("bsd,dnh->bsnh", x_kv, self.value[...].astype(dt)))
    return k, v

  def attend(self, x_q, k, v, *, bias=None, mask=None):
    dt = x_q.dtype
    q = lora.project(self, "query", x_q,
                     jnp.einsum("btd,dnh->btnh", x_q, self.query[...].astype(dt)))
    q = constrain(q, ("batch", "length", "heads", "kv"))
    y = layers.attention(q, k, v, bias=bias, mask=mask, scale=1.0,
                         implementation=self.cfg.attention)
    return lora.project(self, "out", y, jnp.einsum("btnh,nhd->btd", y, self.out[...].astype(dt)))

  def __call__(self, x_q, x_kv, *, bias=None, mask=None, memory=False):
    # memory: x_kv is the encoder's output (cross-attention): adapters route by its tokens' tasks
    with routing.reading_memory() if memory else contextlib.nullcontext():
      k, v = self.project_kv(x_kv)
    return self.attend(x_q, k, v, bias=bias, mask=mask)


class FeedForward(nnx.Module):
  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    d, f, pd = cfg.d_model, cfg.d_ff, cfg.param_dtype
    self.gated = cfg.feed_forward == "gated-gelu"
    self.wi_0 = param(rngs, layers.normal(d ** -0.5), (d, f), ("embed", "mlp"), pd)
    if self.gated:
      self.wi_1 = param(rngs, layers.normal(d ** -0.5), (d, f), ("embed", "mlp"), pd)
    self.wo = param(rngs, layers.normal(f ** -0.5), (f, d), ("mlp", "embed"), pd)
    adapters.attach(self, cfg, {"wi_0": 1, "wi_1": 1, "wo": 1}, rngs=rngs)

  def __call__(self, x, dropout_rate: float = 0.0, rng=None):
    dt = x.dtype
    act = (lambda h: jax.nn.gelu(h, approximate=True)) if self.gated else jax.nn.relu
    mixed = adapters.ffn(self, x, act=act, gate="wi_0", up="wi_1" if self.gated else None,
                         down="wo", dropout=lambda h: layers.dropout(h, dropout_rate, rng))
    if mixed is not None:  # MixLoRA: the block as routed experts (mtjax.peft.moe_lora)
      return mixed
    h = lora.project(self, "wi_0", x, x @ self.wi_0[...].astype(dt))
    if self.gated:
      h = jax.nn.gelu(h, approximate=True) * lora.project(self, "wi_1", x,
                                                           x @ self.wi_1[...].astype(dt))
    else:
      h = jax.nn.relu(h)
    h = constrain(h, ("batch", "length", "mlp"))
    h = layers.dropout(h, dropout_rate, rng)
    return lora.project(self, "wo", h, h @ self.wo[...].astype(dt))


class Block(nnx.Module):
  """Pre-norm residual block: self-attention, optional cross-attention, feed-forward."""

  def __init__(self, cfg: T5Config, cross: bool, *, rngs: nnx.Rngs):
    kw = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
    self.cfg = cfg
    self.self_norm = layers.RMSNorm(cfg.d_model, **kw)
    self.self_attention = Attention(cfg, rngs=rngs)
    if cross:
      self.cross_norm = layers.RMSNorm(cfg.d_model, **kw)
      self.cross_attention = Attention(cfg, rngs=rngs)
    self.mlp_norm = layers.RMSNorm(cfg.d_model, **kw)
    self.mlp = FeedForward(cfg, rngs=rngs)

  def __call__(self, x, bias, mask, encoded=None, cross_mask=None, rng=None):
    with routing.noise(rng):  # stochastic routers (training only: rng given)
      return self._body(x, bias, mask, encoded, cross_mask, rng)

  def _body(self, x, bias, mask, encoded, cross_mask, rng):
    rate = self.cfg.dropout_rate
    keys = [None] * 4 if rng is None else list(jax.random.split(rng, 4))
    h = self.self_attention(self.self_norm(x), self.self_norm(x), bias=bias, mask=mask)
    x = x + layers.dropout(h, rate, keys[0])
    if encoded is not None:
      h = self.cross_attention(self.cross_norm(x), encoded, mask=cross_mask, memory=True)
      x = x + layers.dropout(h, rate, keys[1])
    h = self.mlp(self.mlp_norm(x), rate, keys[2])
    x = x + layers.dropout(h, rate, keys[3])
    return layers.activation_names(x)

  def step(self, x, *, bias, mask, kv_cache, cross_kv, cross_mask):
    """One decoder position `[B, 1, D]` against the cache; returns (x, updated (k, v))."""
    k_cache, v_cache, index = kv_cache
    h = self.self_norm(x)
    k, v = self.self_attention.project_kv(h)
    write = jax.vmap(lambda c, new, i: jax.lax.dynamic_update_slice_in_dim(c, new, i, 0))
    k, v = write(k_cache, k.astype(k_cache.dtype), index), write(v_cache, v.astype(v_cache.dtype),
                                                                 index)
    x = x + self.self_attention.attend(h, k.astype(x.dtype), v.astype(x.dtype), bias=bias,
                                       mask=mask)
    x = x + self.cross_attention.attend(self.cross_norm(x), *cross_kv, mask=cross_mask)
    return x + self.mlp(self.mlp_norm(x)), (k, v)


class T5(nnx.Module):
  """Encoder-decoder. `__call__(batch)` takes the features of mtjax.data.feature_converters."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, rngs=rngs)
    self.token_embed = layers.Embed(cfg.vocab_size, cfg.d_model, param_dtype=cfg.param_dtype,
                                    rngs=rngs)
    self.encoder_relpos = RelativePositionBias(cfg, bidirectional=True, rngs=rngs)
    self.encoder_layers = _stack(cfg, False, cfg.num_encoder_layers, rngs)
    self.encoder_norm = layers.RMSNorm(cfg.d_model, **kw)
    self.decoder_relpos = RelativePositionBias(cfg, bidirectional=False, rngs=rngs)
    self.decoder_layers = _stack(cfg, True, cfg.num_decoder_layers, rngs)
    self.decoder_norm = layers.RMSNorm(cfg.d_model, **kw)
    if not cfg.tie_word_embeddings:
      self.lm_head = param(rngs, layers.normal(cfg.d_model ** -0.5), (cfg.d_model, cfg.vocab_size),
                           ("embed", "vocab"), cfg.param_dtype)
    self.embed_hook = nnx.data(None)  # soft-prompt hook (a Module or None): module docstring

  @property
  def dtype(self):
    return jnp.dtype(self.cfg.dtype)

  def encode(self, tokens, segment_ids=None, *, rng=None, prompt_ids=None):
    """Encoder states `[B, S, D]`; `segment_ids` (packing) default to `tokens > 0`.

    With a length-changing `embed_hook`, use `encode_with_segments` (it returns the segment
    ids that match the states).
    """
    return self.encode_with_segments(tokens, segment_ids, rng=rng, prompt_ids=prompt_ids)[0]

  def encode_with_segments(self, tokens, segment_ids=None, *, rng=None, prompt_ids=None):
    """(encoder states `[B, S', D]`, segment ids `[B, S']`) after the soft-prompt hook."""
    seg = (tokens > 0).astype(jnp.int32) if segment_ids is None else segment_ids
    x = self.token_embed(tokens, self.dtype)
    if self.embed_hook is not None:
      extra = () if prompt_ids is None else (prompt_ids,)
      x, seg, _ = self.embed_hook(x, seg, None, *extra)
    x = layers.activation_names(x)
    # Same segment, padding keys masked: described for the flash kernel (layers.Mask).
    mask = layers.Mask(q_segment_ids=seg, kv_segment_ids=seg, mask_padding_keys=True)
    x = layers.dropout(x, self.cfg.dropout_rate, _fold(rng, 0))
    bias = self.encoder_relpos(x.shape[1], x.shape[1], self.dtype)
    if self.cfg.scan_layers:
      keys = _split(_fold(rng, 1), self.cfg.num_encoder_layers)
      x, _ = layers.scan(self.encoder_layers, lambda b, x, k: (b(x, bias, mask, None, None, k),
                                                               None), x, keys, self.cfg.remat)
    else:
      for i, block in enumerate(self.encoder_layers):
        x = layers.remat_call(block, self.cfg.remat, x, bias, mask, None, None,
                              _fold(rng, 1 + i))
    x = self.encoder_norm(x)
    return layers.dropout(x, self.cfg.dropout_rate, _fold(rng, 1000)), seg

  def decode(self, encoded, encoder_segment_ids, decoder_input_tokens,
             decoder_segment_ids=None, *, rng=None, cross_segment_ids=None):
    """Logits `[B, T, V]` (float32) for teacher-forced decoder inputs.

    `cross_segment_ids` (default `decoder_segment_ids`): the encoder segment each decoder
    position reads; several decoder segments may read the same one (`continuation_logits`)."""
    t = decoder_input_tokens.shape[1]
    # Causal within decoder segments; cross-attention to the same segment's encoder positions
    # (unpacked: to every non-padding one). Described for the flash kernel (layers.Mask).
    self_mask = layers.Mask(q_segment_ids=decoder_segment_ids,
                            kv_segment_ids=decoder_segment_ids, causal=True)
    cross_q = decoder_segment_ids if cross_segment_ids is None else cross_segment_ids
    cross_mask = layers.Mask(q_segment_ids=cross_q, kv_segment_ids=encoder_segment_ids)
    x = layers.activation_names(self.token_embed(decoder_input_tokens, self.dtype))
    x = layers.dropout(x, self.cfg.dropout_rate, _fold(rng, 2000))
    bias = self.decoder_relpos(t, t, self.dtype)
    if self.cfg.scan_layers:
      keys = _split(_fold(rng, 2001), self.cfg.num_decoder_layers)
      x, _ = layers.scan(
          self.decoder_layers,
          lambda b, x, k: (b(x, bias, self_mask, encoded, cross_mask, k), None), x, keys,
          self.cfg.remat)
    else:
      for i, block in enumerate(self.decoder_layers):
        x = layers.remat_call(block, self.cfg.remat, x, bias, self_mask, encoded, cross_mask,
                              _fold(rng, 2001 + i))
    x = self.decoder_norm(x)
    x = layers.dropout(x, self.cfg.dropout_rate, _fold(rng, 3000))
    return self.head(x)

  def head(self, x):
    """Float32 logits from final-normed decoder states."""
    if self.cfg.tie_word_embeddings:
      logits = self.token_embed.attend(x * self.cfg.d_model ** -0.5)
    else:
      logits = x @ self.lm_head[...].astype(x.dtype)
    return constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)

  def __call__(self, batch: Mapping[str, jax.Array], *, rng=None) -> jax.Array:
    enc_tokens = batch["encoder_input_tokens"]
    enc_seg = batch.get("encoder_segment_ids")
    if enc_seg is None:
      enc_seg = (enc_tokens > 0).astype(jnp.int32)
    enc_scope, dec_scope = _routing_scopes(self.cfg, batch, enc_tokens.shape[1])
    with enc_scope:
      encoded, enc_seg = self.encode_with_segments(enc_tokens, enc_seg, rng=_fold(rng, 1),
                                                   prompt_ids=batch.get("prompt_ids"))
    with dec_scope:
      return self.decode(encoded, enc_seg, batch["decoder_input_tokens"],
                         batch.get("decoder_segment_ids"), rng=_fold(rng, 2))


def _routing_scopes(cfg: T5Config, batch, encoder_length: int):
  """The task of each encoder and decoder token, for multi-task adapters (mtjax.peft.routing):
  no-op scopes without them or when the batch has no `task_ids`."""
  task_ids = batch.get("task_ids")
  if task_ids is None or adapters.method(cfg) in ("none", "lora"):
    return contextlib.nullcontext(), contextlib.nullcontext()
  enc_seg, dec_seg = batch.get("encoder_segment_ids"), batch.get("decoder_segment_ids")
  enc_ids = routing.encoder_task_ids(task_ids, dec_seg, enc_seg, encoder_length)
  enc_real = (batch["encoder_input_tokens"] > 0) if enc_seg is None else (enc_seg > 0)
  dec_real = batch.get("decoder_loss_weights") if dec_seg is None else (dec_seg > 0)
  memory = routing.Scope(enc_ids, enc_real)
  return (routing.scope(enc_ids, enc_real),
          routing.scope(task_ids, None if dec_real is None else dec_real > 0, memory=memory))


def _fold(rng, i):
  return None if rng is None else jax.random.fold_in(rng, i)


def _split(rng, n):
  return None if rng is None else jax.random.split(rng, n)


def _stack(cfg: T5Config, cross: bool, n: int, rngs: nnx.Rngs):
  if cfg.scan_layers:
    return layers.stacked(lambda r: Block(cfg, cross=cross, rngs=r), n, rngs)
  return nnx.List([Block(cfg, cross=cross, rngs=rngs) for _ in range(n)])


def continuation_logits(model: T5, prompts: Mapping[str, jax.Array], tokens: jax.Array,
                        offsets: jax.Array) -> jax.Array:
  """The logits each of `tokens [B, W]` is predicted from (`[B, W, V]`), with several target
  sequences of one encoder input laid side by side in one decoder row: token `w` is the
  `offsets[w]`-th of its sequence. Each input is encoded once; each sequence is its own decoder
  segment (causal inside it, starting from 0 as T5's decoder does) reading the whole input.
  Relative-position biases depend on distances only, so every sequence gets the logits it gets
  alone. `prompts`: `encoder_input_tokens [B, S]` (0 = padding)."""
  tokens = jnp.asarray(tokens, jnp.int32)
  offsets = jnp.asarray(offsets, jnp.int32)
  encoded, seg = model.encode_with_segments(
      jnp.asarray(prompts["encoder_input_tokens"], jnp.int32), prompt_ids=prompts.get("prompt_ids"))
  previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  inputs = jnp.where(offsets == 0, 0, previous)  # each sequence shifted right from 0
  segments = jnp.cumsum((offsets == 0).astype(jnp.int32), axis=1)
  reads = jnp.ones_like(segments)  # every decoder position reads the input (segment 1)
  return model.decode(encoded, (seg > 0).astype(jnp.int32), inputs, segments,
                      cross_segment_ids=reads)


def start_decode(model: T5, batch: Mapping[str, jax.Array], max_decode_len: int):
  """Encodes `encoder_input_tokens` (0 = pad) once; returns (logits `[B, V]` for the first
  target token, with the decoder fed BOS = 0, and the cache for `max_decode_len` positions)."""
  cfg = model.cfg
  tokens = jnp.asarray(batch["encoder_input_tokens"], jnp.int32)
  encoded, seg = model.encode_with_segments(tokens, batch.get("encoder_segment_ids"),
                                            prompt_ids=batch.get("prompt_ids"))
  b, n = tokens.shape[0], cfg.num_decoder_layers
  shape = (b, max_decode_len, cfg.num_heads, cfg.d_kv)
  if cfg.scan_layers:  # stacked leaves, batch first: [B, L, ...]
    _, (ck, cv) = layers.scan(model.decoder_layers,
                              lambda blk, c, _: (c, blk.cross_attention.project_kv(encoded)),
                              jnp.zeros(()))
    zeros = jnp.zeros((b, n, *shape[1:]), model.dtype)
    kv = {"k": zeros, "v": zeros, "cross_k": jnp.moveaxis(ck, 0, 1),
          "cross_v": jnp.moveaxis(cv, 0, 1)}
  else:
    cross = [block.cross_attention.project_kv(encoded) for block in model.decoder_layers]
    zeros = jnp.zeros(shape, model.dtype)
    kv = {"k": [zeros] * n, "v": [zeros] * n, "cross_k": [k for k, _ in cross],
          "cross_v": [v for _, v in cross]}
  cache = dict(kv, encoder_mask=seg > 0, index=jnp.zeros((b,), jnp.int32))
  return decode_step(model, cache, jnp.zeros((b,), jnp.int32))


def decode_step(model: T5, cache, tokens: jax.Array):
  """Feeds `tokens [B]` at the next decoder position; returns (logits `[B, V]`, cache)."""
  index = cache["index"]
  size = cache["k"].shape[2] if model.cfg.scan_layers else cache["k"][0].shape[1]
  x = model.token_embed(jnp.asarray(tokens, jnp.int32)[:, None], model.dtype)
  bias = model.decoder_relpos.at(index, size, model.dtype)
  mask = (jnp.arange(size)[None] <= index[:, None])[:, None, None, :]
  cross_mask = cache["encoder_mask"][:, None, None, :]

  def step(block, x, layer_cache):
    k, v, ck, cv = layer_cache
    return block.step(x, bias=bias, mask=mask, kv_cache=(k, v, index), cross_kv=(ck, cv),
                      cross_mask=cross_mask)

  names = ("k", "v", "cross_k", "cross_v")
  if model.cfg.scan_layers:
    x, (ks, vs) = layers.scan(model.decoder_layers, step, x,
                              tuple(jnp.moveaxis(cache[n], 1, 0) for n in names))
    ks, vs = jnp.moveaxis(ks, 0, 1), jnp.moveaxis(vs, 0, 1)
  else:
    ks, vs = [], []
    for i, block in enumerate(model.decoder_layers):
      x, (k, v) = step(block, x, tuple(cache[n][i] for n in names))
      ks.append(k)
      vs.append(v)
  logits = model.head(model.decoder_norm(x))[:, 0]
  return logits, dict(cache, k=ks, v=vs, index=index + 1)
