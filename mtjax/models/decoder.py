"""Decoder-only family in Flax NNX: Llama / Qwen2 / Gemma shapes, prefix-LM, KV cache.

RoPE (HF's rotate-half layout), RMSNorm, grouped-query attention, gated MLP (SwiGLU or GeGLU),
tied or untied head, optional QKV bias (Qwen2), Gemma's `sqrt(d)` embedding scale and
`1 + weight` norm. `__call__(batch)` takes SeqIO decoder-only / prefix-LM features
(`decoder_input_tokens`, optional `decoder_segment_ids`, `decoder_positions`,
`decoder_causal_attention`) and returns float32 logits `[B, T, V]`, like `t5.T5`.

Soft-prompt hook: `model.embed_hook`, if set, is called as
`hook(x, segment_ids, positions) -> (x, segment_ids, positions)` on the embedded inputs before
the first layer, with a fourth argument `prompt_ids [B]` when the batch carries them (which
prompt each example gets, `mtjax.peft.prompts`). It may insert positions (a soft prompt);
logits for them are dropped, so the output keeps the input length. A hook with
`insert(arr, fill, prompt_ids)` / `strip(arr, prompt_ids)` says where its positions go (e.g.
after BOS); one without them prepends. The hook is an `nnx.Module` (its parameters join the
model's state, so they train and checkpoint with it) or None.

Incremental decoding: `start_decode(model, batch, max_decode_len)` and
`decode_step(model, cache, tokens)`; every cache leaf has the batch as its leading axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax.models import layers
from mtjax.models.layers import param
from mtjax.parallel.rules import constrain
import contextlib

from mtjax.peft import adapters, lora, routing

ACTIVATIONS = {
    "silu": jax.nn.silu,  # SwiGLU (Llama, Qwen2)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GeGLU (Gemma)
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}

# The projections LoRA can adapt (mtjax.peft.lora).
LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int = 32000
  d_model: int = 1024
  num_layers: int = 16
  num_heads: int = 16
  num_kv_heads: int = 16  # < num_heads: grouped-query attention
  head_dim: int = 64
  d_ff: int = 2816
  activation: str = "silu"  # gated MLP activation: silu (SwiGLU) | gelu_tanh (GeGLU) | gelu
  rope_theta: float = 10000.0
  # Llama 3 frequency scaling: (factor, low_freq_factor, high_freq_factor, original_max_pos).
  rope_llama3_scaling: tuple[float, float, float, int] | None = None
  norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2
  scale_embeddings: bool = False  # Gemma: multiply embeddings by sqrt(d_model)
  norm_plus_one: bool = False  # Gemma: RMSNorm scales by (1 + weight), weight init 0
  dropout_rate: float = 0.0
  remat: str = "none"  # see layers.REMAT_POLICIES
  scan_layers: bool = False  # one stacked block (leading `layers` axis) under `jax.lax.scan`
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
    if self.attention not in layers.ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"model.attention must be one of {layers.ATTENTION_IMPLEMENTATIONS}, "
                       f"got {self.attention!r}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"model.activation must be one of {sorted(ACTIVATIONS)}, "
                       f"got {self.activation!r}")
    if self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {sorted(layers.REMAT_POLICIES)}, "
                       f"got {self.remat!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")


PRESETS: dict[str, DecoderConfig] = {
    # Tiny shapes for tests and a CPU quickstart (byte vocabulary padded to 384).
    "decoder_test": DecoderConfig(vocab_size=384, d_model=32, num_layers=2, num_heads=4,
                                  num_kv_heads=2, head_dim=8, d_ff=64),
    "decoder_quickstart": DecoderConfig(vocab_size=384, d_model=128, num_layers=4, num_heads=4,
                                        num_kv_heads=2, head_dim=32, d_ff=384),
    # ~0.3M parameters: pretrained from scratch on CPU by scripts/repro_promot.py.
    "decoder_small": DecoderConfig(vocab_size=384, d_model=64, num_layers=4, num_heads=4,
                                   num_kv_heads=2, head_dim=16, d_ff=256),
    # The benchmark shape of issue 8 (~270M parameters with a 32k vocabulary).
    "llama_270m": DecoderConfig(vocab_size=32000, d_model=1024, num_layers=16, num_heads=16,
                                num_kv_heads=16, head_dim=64, d_ff=2816, norm_eps=1e-5),
    # Shapes of open models (their HF config.json); load weights with mtjax.models.hf.
    "llama3_1b": DecoderConfig(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32,
                               num_kv_heads=8, head_dim=64, d_ff=8192, rope_theta=500000.0,
                               rope_llama3_scaling=(32.0, 1.0, 4.0, 8192), norm_eps=1e-5,
                               tie_word_embeddings=True),
    "qwen2_0_5b": DecoderConfig(vocab_size=151936, d_model=896, num_layers=24, num_heads=14,
                                num_kv_heads=2, head_dim=64, d_ff=4864, rope_theta=1000000.0,
                                qkv_bias=True, tie_word_embeddings=True),
    "gemma_2b": DecoderConfig(vocab_size=256000, d_model=2048, num_layers=18, num_heads=8,
                              num_kv_heads=1, head_dim=256, d_ff=16384, activation="gelu_tanh",
                              tie_word_embeddings=True, scale_embeddings=True,
                              norm_plus_one=True),
}


def preset(name: str, **overrides) -> DecoderConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown decoder preset {name!r}; known: {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)


def rope_frequencies(cfg: DecoderConfig) -> jax.Array:
  """Inverse frequencies `[head_dim / 2]` (float32), with Llama 3 scaling if configured."""
  h = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  if cfg.rope_llama3_scaling is None:
    return inv
  factor, low, high, original = cfg.rope_llama3_scaling
  wavelen = 2 * jnp.pi / inv
  low_wavelen, high_wavelen = original / low, original / high
  scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (original / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates `[B, T, N, H]` by `positions [B, T]` in HF's rotate-half layout."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
  angles = jnp.concatenate([angles, angles], -1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], -1) * sin


class Attention(nnx.Module):
  """GQA self-attention; `kv_cache` (k, v, write index) makes it incremental."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    d, n, k, h, pd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.param_dtype
    self.cfg = cfg
    self.query = param(rngs, layers.normal(d ** -0.5), (d, n, h), ("embed", "heads", "kv"), pd)
    self.key = param(rngs, layers.normal(d ** -0.5), (d, k, h), ("embed", "heads", "kv"), pd)
    self.value = param(rngs, layers.normal(d ** -0.5), (d, k, h), ("embed", "heads", "kv"), pd)
    self.out = param(rngs, layers.normal((n * h) ** -0.5), (n, h, d), ("heads", "kv", "embed"), pd)
    if cfg.qkv_bias:
      zeros = jax.nn.initializers.zeros
      self.query_bias = param(rngs, zeros, (n, h), ("heads", "kv"), pd)
      self.key_bias = param(rngs, zeros, (k, h), ("heads", "kv"), pd)
      self.value_bias = param(rngs, zeros, (k, h), ("heads", "kv"), pd)
    adapters.attach(self, cfg, {"query": 1, "key": 1, "value": 1, "out": 2}, rngs=rngs)

  def __call__(self, x, positions, mask, inv_freq, kv_cache=None):
    """Returns (output, (k, v)): the keys/values attended to (the updated cache if given)."""
    dt = x.dtype
    q = lora.project(self, "query", x, jnp.einsum("btd,dnh->btnh", x, self.query[...].astype(dt)))
    k = lora.project(self, "key", x, jnp.einsum("btd,dnh->btnh", x, self.key[...].astype(dt)))
    v = lora.project(self, "value", x, jnp.einsum("btd,dnh->btnh", x, self.value[...].astype(dt)))
    if self.cfg.qkv_bias:
      q = q + self.query_bias[...].astype(dt)
      k = k + self.key_bias[...].astype(dt)
      v = v + self.value_bias[...].astype(dt)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    if kv_cache is not None:  # write this call's keys/values at each example's own index
      k_cache, v_cache, index = kv_cache
      write = jax.vmap(lambda c, new, i: jax.lax.dynamic_update_slice_in_dim(c, new, i, 0))
      k, v = write(k_cache, k.astype(k_cache.dtype), index), write(v_cache, v.astype(v_cache.dtype),
                                                                   index)
    # `mask`: a layers.Mask in training and scoring (plain causal when nothing is packed or
    # prefix-LM: cuDNN's fast path; see `hidden`), a dense array against the KV cache.
    y = layers.attention(q, k.astype(dt), v.astype(dt), mask=mask, causal=mask is None,
                         scale=self.cfg.head_dim ** -0.5, implementation=self.cfg.attention)
    out = lora.project(self, "out", y, jnp.einsum("btnh,nhd->btd", y, self.out[...].astype(dt)))
    return out, (k, v)


class MLP(nnx.Module):
  """Gated feed-forward: `down(act(gate(x)) * up(x))`."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    d, f, pd = cfg.d_model, cfg.d_ff, cfg.param_dtype
    self.act = ACTIVATIONS[cfg.activation]
    self.gate = param(rngs, layers.normal(d ** -0.5), (d, f), ("embed", "mlp"), pd)
    self.up = param(rngs, layers.normal(d ** -0.5), (d, f), ("embed", "mlp"), pd)
    self.down = param(rngs, layers.normal(f ** -0.5), (f, d), ("mlp", "embed"), pd)
    adapters.attach(self, cfg, {"gate": 1, "up": 1, "down": 1}, rngs=rngs)

  def __call__(self, x, dropout_rate: float = 0.0, rng=None):
    dt = x.dtype
    mixed = adapters.ffn(self, x, act=self.act, gate="gate", up="up", down="down",
                         dropout=lambda h: layers.dropout(h, dropout_rate, rng))
    if mixed is not None:  # MixLoRA: the block as routed experts (mtjax.peft.moe_lora)
      return mixed
    h = self.act(lora.project(self, "gate", x, x @ self.gate[...].astype(dt))) * (
        lora.project(self, "up", x, x @ self.up[...].astype(dt)))
    h = constrain(h, ("batch", "length", "mlp"))
    h = layers.dropout(h, dropout_rate, rng)
    return lora.project(self, "down", h, h @ self.down[...].astype(dt))


def _norm(cfg: DecoderConfig, rngs):
  return layers.RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.param_dtype, rngs=rngs,
                        plus_one=cfg.norm_plus_one)


class Block(nnx.Module):
  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attention_norm = _norm(cfg, rngs)
    self.attention = Attention(cfg, rngs=rngs)
    self.mlp_norm = _norm(cfg, rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions, mask, inv_freq, kv_cache=None, rng=None):
    with routing.noise(rng):  # stochastic routers (training only: rng given)
      return self._body(x, positions, mask, inv_freq, kv_cache, rng)

  def _body(self, x, positions, mask, inv_freq, kv_cache, rng):
    rate = self.cfg.dropout_rate
    keys = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
    h, kv = self.attention(self.attention_norm(x), positions, mask, inv_freq, kv_cache)
    x = x + layers.dropout(h, rate, keys[0])
    h = self.mlp(self.mlp_norm(x), rate, keys[1])
    x = x + layers.dropout(h, rate, keys[2])
    return layers.activation_names(x), kv


def make_mask(length: int, segment_ids=None, causal_attention=None) -> jax.Array:
  """`[B or 1, 1, T, T]`: causal, bidirectional over the prefix-LM inputs, within segments."""
  mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if causal_attention is not None:  # SeqIO's decoder_causal_attention: 1 over the inputs part
    ca = causal_attention.astype(bool)
    mask = mask | (ca[:, None, :, None] & ca[:, None, None, :])
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
  return mask


class Decoder(nnx.Module):
  """Decoder-only LM. `__call__(batch)` takes the features of SeqIO's decoder-only converters."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.token_embed = layers.Embed(cfg.vocab_size, cfg.d_model, param_dtype=cfg.param_dtype,
                                    rngs=rngs)
    if cfg.scan_layers:
      self.layers = layers.stacked(lambda r: Block(cfg, rngs=r), cfg.num_layers, rngs)
    else:
      self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = _norm(cfg, rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = param(rngs, layers.normal(cfg.d_model ** -0.5), (cfg.d_model, cfg.vocab_size),
                           ("embed", "vocab"), cfg.param_dtype)
    self.embed_hook = nnx.data(None)  # soft-prompt hook (a Module or None): module docstring

  @property
  def dtype(self):
    return jnp.dtype(self.cfg.dtype)

  def embed(self, tokens, segment_ids, positions, *, hook: bool = True, prompt_ids=None):
    """Embedded inputs after the soft-prompt hook: (x, segment_ids, positions)."""
    x = self.token_embed(tokens, self.dtype)
    if self.cfg.scale_embeddings:
      x = x * jnp.asarray(self.cfg.d_model ** 0.5, self.dtype)
    if hook and self.embed_hook is not None:
      extra = () if prompt_ids is None else (prompt_ids,)
      x, segment_ids, positions = self.embed_hook(x, segment_ids, positions, *extra)
    return layers.activation_names(x), segment_ids, positions

  def _hook_insert(self, arr, fill, extra: int, prompt_ids):
    """`arr [B, T, ...]` widened where the hook inserted `extra` positions, filled with `fill`."""
    if hasattr(self.embed_hook, "insert"):
      return self.embed_hook.insert(arr, fill, prompt_ids)
    return jnp.pad(arr, ((0, 0), (extra, 0)) + ((0, 0),) * (arr.ndim - 2), constant_values=fill)

  def _hook_strip(self, x, extra: int, prompt_ids):
    """`x [B, T + extra, ...]` without the hook's positions."""
    if hasattr(self.embed_hook, "strip"):
      return self.embed_hook.strip(x, prompt_ids)
    return x[:, extra:]

  def logits(self, x):
    x = self.final_norm(x)
    if self.cfg.tie_word_embeddings:
      logits = self.token_embed.attend(x)
    else:
      logits = x @ self.lm_head[...].astype(x.dtype)
    return constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)

  def _blocks(self, x, positions, mask, caches=None, rng=None):
    """Runs the layers; returns (x, per-layer (k, v)).

    `caches`: per-layer `(k, v, write index)`, or with `scan_layers` one `(k, v, index)` whose
    k/v are stacked `[L, B, S, K, H]` (and so are the returned keys/values).
    """
    inv_freq = rope_frequencies(self.cfg)
    if self.cfg.scan_layers:
      return self._scanned_blocks(x, positions, mask, inv_freq, caches, rng)
    kvs = []
    for i, block in enumerate(self.layers):
      cache = None if caches is None else caches[i]
      remat = self.cfg.remat if cache is None else "none"  # decoding has no backward pass
      x, kv = layers.remat_call(block, remat, x, positions, mask, inv_freq, cache,
                                _fold(rng, 1 + i))
      kvs.append(kv)
    return x, kvs

  def _scanned_blocks(self, x, positions, mask, inv_freq, caches, rng):
    keys = None if rng is None else jax.random.split(jax.random.fold_in(rng, 1),
                                                      self.cfg.num_layers)
    index = None if caches is None else caches[2]

    def layer(block, x, xs):
      key, kv = xs
      x, new_kv = block(x, positions, mask, inv_freq, None if kv is None else (*kv, index), key)
      return x, None if kv is None else new_kv  # training: no per-layer K/V stacked up

    kv = None if caches is None else caches[:2]
    return layers.scan(self.layers, layer, x, (keys, kv),
                       remat=self.cfg.remat if caches is None else "none")

  def __call__(self, batch: Mapping[str, jax.Array], *, rng=None) -> jax.Array:
    """Float32 logits `[B, T, V]`."""
    return self.logits(self.hidden(batch, rng=rng))

  def hidden(self, batch: Mapping[str, jax.Array], *, rng=None) -> jax.Array:
    """The last layer's output `[B, T, D]` before the final norm and the head (`logits`), so a
    loss can project it chunk by chunk instead of holding `[B, T, V]` logits.

    A batch without `decoder_segment_ids` (and not prefix-LM) is attended with a plain causal
    mask, which cuDNN's flash kernel runs without building one; right-padded rows give the same
    result for every real token (padding only follows them), so a trainer may drop the segment
    ids of unpacked decoder-only batches.
    """
    tokens = batch["decoder_input_tokens"]
    b, t = tokens.shape
    segment_ids = batch.get("decoder_segment_ids")
    positions = batch.get("decoder_positions")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    causal_attention = batch.get("decoder_causal_attention")
    prompt_ids = batch.get("prompt_ids")
    x, segment_ids, positions = self.embed(tokens, segment_ids, positions, prompt_ids=prompt_ids)
    extra = x.shape[1] - t  # positions the hook inserted
    if extra and causal_attention is not None:
      causal_attention = self._hook_insert(causal_attention, 1, extra, prompt_ids)
    x = layers.dropout(x, self.cfg.dropout_rate, _fold(rng, 0))
    # Described, not built: layers.attention makes the dense mask (the same as `make_mask`) only
    # for the kernels that need one.
    mask = layers.Mask(q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                       prefix=causal_attention, causal=True)
    with _routing_scope(self.cfg, batch, x.shape[1] - t):
      x, _ = self._blocks(x, positions, mask, rng=rng)
    x = layers.dropout(x, self.cfg.dropout_rate, _fold(rng, 1000))
    if extra:
      x = self._hook_strip(x, extra, prompt_ids)
    return x


def _fold(rng, i):
  return None if rng is None else jax.random.fold_in(rng, i)


def _routing_scope(cfg: DecoderConfig, batch, extra: int):
  """The task of each token for multi-task adapters (mtjax.peft.routing); a no-op without them
  or without `task_ids`. Rows a soft prompt widened (`extra` positions) are not supported with
  them (`mtjax.peft.prompt_setup.check_config` refuses the combination)."""
  task_ids = batch.get("task_ids")
  if task_ids is None or adapters.method(cfg) in ("none", "lora"):
    return contextlib.nullcontext()
  if extra:
    raise ValueError("multi-task adapters (model.adapter) do not combine with a soft prompt")
  seg = batch.get("decoder_segment_ids")
  if seg is not None:
    real = seg > 0
  else:  # unpacked: targets carry loss weights; the inputs part is the non-zero tokens
    real = batch["decoder_input_tokens"] != 0
    if "decoder_loss_weights" in batch:
      real = real | (batch["decoder_loss_weights"] > 0)
  return routing.scope(task_ids, real)


def _layer_caches(model: Decoder, cache):
  """The cache in the layout `_blocks` takes (batch-leading in the cache, layer-leading here)."""
  if model.cfg.scan_layers:
    return (jnp.moveaxis(cache["k"], 1, 0), jnp.moveaxis(cache["v"], 1, 0), cache["index"])
  return [(k, v, cache["index"]) for k, v in zip(cache["k"], cache["v"])]


def _cache_kv(model: Decoder, kvs) -> dict:
  if model.cfg.scan_layers:  # [L, B, ...] -> [B, L, ...]: every cache leaf is batch-leading
    return {"k": jnp.moveaxis(kvs[0], 0, 1), "v": jnp.moveaxis(kvs[1], 0, 1)}
  return {"k": [k for k, _ in kvs], "v": [v for _, v in kvs]}


def prompt_lengths(batch: Mapping[str, jax.Array]) -> jax.Array:
  """Per-example prompt length `[B]`: `decoder_prompt_lengths`, else from a mask, else the
  position after the last non-zero token (a leading BOS 0 is allowed)."""
  if "decoder_prompt_lengths" in batch:
    return jnp.asarray(batch["decoder_prompt_lengths"], jnp.int32)
  tokens = batch["decoder_input_tokens"]
  mask = batch.get("decoder_prompt_mask")
  if mask is not None:
    return jnp.sum(jnp.asarray(mask) > 0, axis=1).astype(jnp.int32)
  idx = jnp.arange(1, tokens.shape[1] + 1)[None]
  return jnp.maximum(jnp.max(jnp.where(tokens != 0, idx, 0), axis=1), 1).astype(jnp.int32)


def start_decode(model: Decoder, batch: Mapping[str, jax.Array], max_decode_len: int):
  """Runs the right-padded prompts; returns (logits `[B, V]` at each last prompt token, cache).

  `batch`: `decoder_input_tokens [B, P]` plus `decoder_prompt_lengths [B]` or
  `decoder_prompt_mask [B, P]` (else lengths are inferred from the last non-zero token); an
  optional `decoder_causal_attention` makes the prompt bidirectional (prefix-LM). The cache
  holds `P + max_decode_len` (plus any prefix-hook) positions per layer.
  """
  cfg = model.cfg
  tokens = jnp.asarray(batch["decoder_input_tokens"], jnp.int32)
  b, p = tokens.shape
  lengths = prompt_lengths(batch)
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  prompt_ids = batch.get("prompt_ids")
  x, segment_ids, positions = model.embed(tokens, None, positions, prompt_ids=prompt_ids)
  extra = x.shape[1] - p  # soft-prompt positions (inserted before each last prompt token)
  lengths = lengths + extra
  causal_attention = batch.get("decoder_causal_attention")
  if causal_attention is not None and extra:
    causal_attention = model._hook_insert(causal_attention, 1, extra, prompt_ids)
  size = x.shape[1] + max_decode_len
  mask = make_mask(x.shape[1], segment_ids, causal_attention)
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, max_decode_len)))  # empty slots: masked
  start = jnp.zeros((b,), jnp.int32)
  if cfg.scan_layers:
    zeros = jnp.zeros((b, cfg.num_layers, size, cfg.num_kv_heads, cfg.head_dim), model.dtype)
  else:
    zeros = [jnp.zeros((b, size, cfg.num_kv_heads, cfg.head_dim), model.dtype)] * cfg.num_layers
  caches = _layer_caches(model, {"k": zeros, "v": zeros, "index": start})
  x, kvs = model._blocks(x, positions, mask, caches=caches)
  last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)  # [B, 1, D]
  next_pos = jnp.take_along_axis(positions, (lengths - 1)[:, None], axis=1)[:, 0] + 1
  cache = dict(_cache_kv(model, kvs), index=lengths, position=next_pos)
  if segment_ids is not None:  # a hook's masked slots (rows without a prompt) stay masked
    cache["key_mask"] = jnp.pad(segment_ids > 0, ((0, 0), (0, max_decode_len)),
                                constant_values=True)
  return model.logits(last)[:, 0], cache


def decode_step(model: Decoder, cache, tokens: jax.Array):
  """Feeds `tokens [B]` at each example's next slot; returns (logits `[B, V]`, cache)."""
  logits, cache = extend(model, cache, jnp.asarray(tokens, jnp.int32)[:, None])
  return logits[:, 0], cache


def extend(model: Decoder, cache, tokens: jax.Array, offsets: jax.Array | None = None):
  """Feeds `tokens [B, W]` after each example's cached tokens; returns (logits `[B, W, V]`,
  cache advanced by `W` slots).

  `offsets [B, W]` (default `0..W-1`) lay several continuations of one prompt side by side:
  token `w` is the `offsets[w]`-th of its continuation, which starts at `w - offsets[w]`. It
  sits at position `prompt + offsets[w]` and sees the cached prompt and the earlier tokens of
  its own continuation only, so each continuation gets exactly the logits it would get alone
  after the prompt (rank classification scores every answer choice of a prompt in one row,
  without running the prompt again per choice).
  """
  index, position = cache["index"], cache["position"]
  tokens = jnp.asarray(tokens, jnp.int32)
  w = tokens.shape[1]
  steps = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32), tokens.shape)
  offsets = steps if offsets is None else jnp.asarray(offsets, jnp.int32)
  positions = position[:, None] + offsets
  x, _, _ = model.embed(tokens, None, positions, hook=False)
  size = cache["k"][0].shape[1] if isinstance(cache["k"], list) else cache["k"].shape[2]
  slot = jnp.arange(size)[None, None, :]  # [1, 1, S]
  here = (index[:, None] + steps)[:, :, None]  # [B, W, 1]: each token's own slot
  mask = (slot < index[:, None, None]) | ((slot <= here) & (slot >= here - offsets[:, :, None]))
  if "key_mask" in cache:
    mask = mask & cache["key_mask"][:, None, :]
  mask = mask[:, None]  # [B, 1, W, S]
  x, kvs = model._blocks(x, positions, mask, caches=_layer_caches(model, cache))
  new = dict(cache, **_cache_kv(model, kvs), index=index + w, position=position + w)
  return model.logits(x), new


def continuation_logits(model: Decoder, prompts: Mapping[str, jax.Array], tokens: jax.Array,
                        offsets: jax.Array) -> jax.Array:
  """The logits each of `tokens [B, W]` is predicted from (`[B, W, V]`), after the prompts
  (`start_decode`'s batch), with continuations laid side by side by `offsets` (`extend`): the
  prompt's last logits for a continuation's first token, else the previous token's."""
  first, cache = start_decode(model, prompts, tokens.shape[1])
  logits, _ = extend(model, cache, tokens, offsets)
  shifted = jnp.concatenate([first[:, None], logits[:, :-1]], axis=1)
  return jnp.where((offsets == 0)[..., None], first[:, None], shifted)
