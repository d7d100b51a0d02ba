"""Hugging Face checkpoints <-> mtjax models, without torch.

`load(hf_dir)` reads `config.json` and `*.safetensors` (sharded index included) with
`safetensors.numpy`, one tensor at a time, maps each key through its family's table below, and
places it straight into its sharding when a mesh is given. `export(model, out_dir, meta)` writes
the reverse: `config.json` + `model.safetensors` that `transformers` loads, and with what a run
recorded (`mtjax.models.hf_meta`) the special ids and lengths it trained with,
`generation_config.json` and the tokenizer files.

A table row is `(mtjax parameter path, HF key, layout)`; `{i}` is the layer index. Layouts:
  linear      HF `[out, in]`        <-> mtjax `[in, out]`
  heads_in    HF `[N*H, D]`         <-> mtjax `[D, N, H]`   (q/k/v projections)
  heads_out   HF `[D, N*H]`         <-> mtjax `[N, H, D]`   (attention output)
  heads_bias  HF `[N*H]`            <-> mtjax `[N, H]`
  same        unchanged (embeddings, norms, relative-position tables)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtjax import fs
from mtjax.models import decoder, families, hf_meta, t5
from mtjax.parallel import rules as rules_lib
from mtjax.peft import lora

T5_KEYS = (
    ("token_embed.embedding", "shared.weight", "same"),
    ("lm_head", "lm_head.weight", "linear"),
    ("encoder_relpos.embedding",
     "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "same"),
    ("decoder_relpos.embedding",
     "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "same"),
    ("encoder_norm.scale", "encoder.final_layer_norm.weight", "same"),
    ("decoder_norm.scale", "decoder.final_layer_norm.weight", "same"),
    # encoder block: layer.0 self-attention, layer.1 feed-forward
    ("encoder_layers.{i}.self_norm.scale", "encoder.block.{i}.layer.0.layer_norm.weight", "same"),
    ("encoder_layers.{i}.self_attention.query", "encoder.block.{i}.layer.0.SelfAttention.q.weight",
     "heads_in"),
    ("encoder_layers.{i}.self_attention.key", "encoder.block.{i}.layer.0.SelfAttention.k.weight",
     "heads_in"),
    ("encoder_layers.{i}.self_attention.value", "encoder.block.{i}.layer.0.SelfAttention.v.weight",
     "heads_in"),
    ("encoder_layers.{i}.self_attention.out", "encoder.block.{i}.layer.0.SelfAttention.o.weight",
     "heads_out"),
    ("encoder_layers.{i}.mlp_norm.scale", "encoder.block.{i}.layer.1.layer_norm.weight", "same"),
    ("encoder_layers.{i}.mlp.wi_0", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight",
     "linear"),
    ("encoder_layers.{i}.mlp.wi_1", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight",
     "linear"),
    ("encoder_layers.{i}.mlp.wo", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight", "linear"),
    # decoder block: layer.0 self-attention, layer.1 cross-attention, layer.2 feed-forward
    ("decoder_layers.{i}.self_norm.scale", "decoder.block.{i}.layer.0.layer_norm.weight", "same"),
    ("decoder_layers.{i}.self_attention.query", "decoder.block.{i}.layer.0.SelfAttention.q.weight",
     "heads_in"),
    ("decoder_layers.{i}.self_attention.key", "decoder.block.{i}.layer.0.SelfAttention.k.weight",
     "heads_in"),
    ("decoder_layers.{i}.self_attention.value", "decoder.block.{i}.layer.0.SelfAttention.v.weight",
     "heads_in"),
    ("decoder_layers.{i}.self_attention.out", "decoder.block.{i}.layer.0.SelfAttention.o.weight",
     "heads_out"),
    ("decoder_layers.{i}.cross_norm.scale", "decoder.block.{i}.layer.1.layer_norm.weight", "same"),
    ("decoder_layers.{i}.cross_attention.query",
     "decoder.block.{i}.layer.1.EncDecAttention.q.weight", "heads_in"),
    ("decoder_layers.{i}.cross_attention.key",
     "decoder.block.{i}.layer.1.EncDecAttention.k.weight", "heads_in"),
    ("decoder_layers.{i}.cross_attention.value",
     "decoder.block.{i}.layer.1.EncDecAttention.v.weight", "heads_in"),
    ("decoder_layers.{i}.cross_attention.out",
     "decoder.block.{i}.layer.1.EncDecAttention.o.weight", "heads_out"),
    ("decoder_layers.{i}.mlp_norm.scale", "decoder.block.{i}.layer.2.layer_norm.weight", "same"),
    ("decoder_layers.{i}.mlp.wi_0", "decoder.block.{i}.layer.2.DenseReluDense.wi_0.weight",
     "linear"),
    ("decoder_layers.{i}.mlp.wi_1", "decoder.block.{i}.layer.2.DenseReluDense.wi_1.weight",
     "linear"),
    ("decoder_layers.{i}.mlp.wo", "decoder.block.{i}.layer.2.DenseReluDense.wo.weight", "linear"),
)
# T5 v1.0 names its single (ReLU) input projection `wi`; mtjax calls it `wi_0` in both versions.
T5_V1_0_ALIASES = {".DenseReluDense.wi.weight": ".DenseReluDense.wi_0.weight"}
# Duplicates of `shared.weight` that transformers may write; never needed.
T5_IGNORED = (r"(encoder|decoder)\.embed_tokens\.weight",
              r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight")

DECODER_KEYS = (  # Llama, Qwen2, Gemma share these names
    ("token_embed.embedding", "model.embed_tokens.weight", "same"),
    ("lm_head", "lm_head.weight", "linear"),
    ("final_norm.scale", "model.norm.weight", "same"),
    ("layers.{i}.attention_norm.scale", "model.layers.{i}.input_layernorm.weight", "same"),
    ("layers.{i}.attention.query", "model.layers.{i}.self_attn.q_proj.weight", "heads_in"),
    ("layers.{i}.attention.key", "model.layers.{i}.self_attn.k_proj.weight", "heads_in"),
    ("layers.{i}.attention.value", "model.layers.{i}.self_attn.v_proj.weight", "heads_in"),
    ("layers.{i}.attention.out", "model.layers.{i}.self_attn.o_proj.weight", "heads_out"),
    ("layers.{i}.attention.query_bias", "model.layers.{i}.self_attn.q_proj.bias", "heads_bias"),
    ("layers.{i}.attention.key_bias", "model.layers.{i}.self_attn.k_proj.bias", "heads_bias"),
    ("layers.{i}.attention.value_bias", "model.layers.{i}.self_attn.v_proj.bias", "heads_bias"),
    ("layers.{i}.mlp_norm.scale", "model.layers.{i}.post_attention_layernorm.weight", "same"),
    ("layers.{i}.mlp.gate", "model.layers.{i}.mlp.gate_proj.weight", "linear"),
    ("layers.{i}.mlp.up", "model.layers.{i}.mlp.up_proj.weight", "linear"),
    ("layers.{i}.mlp.down", "model.layers.{i}.mlp.down_proj.weight", "linear"),
)
DECODER_IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)

DECODER_TYPES = ("llama", "qwen2", "gemma", "mistral")


def _to_mtjax(w: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
  if layout == "same":
    return w
  if layout == "linear":
    return w.T
  if layout == "heads_in":
    return w.T.reshape(shape)
  if layout == "heads_out":
    return w.T.reshape(shape)
  if layout == "heads_bias":
    return w.reshape(shape)
  raise ValueError(layout)


def _to_hf(w: np.ndarray, layout: str) -> np.ndarray:
  if layout == "same":
    return w
  if layout == "linear":
    return w.T
  if layout == "heads_in":
    return w.reshape(w.shape[0], -1).T
  if layout == "heads_out":
    return w.reshape(-1, w.shape[-1]).T
  if layout == "heads_bias":
    return w.reshape(-1)
  raise ValueError(layout)


def _pattern(template: str) -> re.Pattern:
  return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


def _table(family: str):
  return T5_KEYS if family == "t5" else DECODER_KEYS


# ---------------------------------------------------------------------------------- configs


def config_from_hf(hf: dict[str, Any], **overrides):
  """(family, mtjax config) from a HF `config.json` dict."""
  model_type = hf.get("model_type", "")
  if model_type in ("t5", "mt5"):
    ff = hf.get("feed_forward_proj", "relu")
    if ff not in ("relu", "gated-gelu"):
      raise NotImplementedError(f"T5 feed_forward_proj={ff!r} is not supported")
    # transformers 5 writes tie_word_embeddings=true for every T5 and keeps v1.0's logit
    # scaling in scale_decoder_outputs; older configs say tie_word_embeddings=false for v1.1.
    tied = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    tied = tied and model_type == "t5"  # mT5 never scales its outputs
    cfg = t5.T5Config(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
        num_heads=hf["num_heads"], num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        feed_forward=ff, tie_word_embeddings=bool(tied),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6))
    return "t5", dataclasses.replace(cfg, **overrides)
  if model_type in DECODER_TYPES:
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    gemma = model_type == "gemma"
    act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
    act = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
           "gelu": "gelu_tanh" if gemma else "gelu"}.get(act)
    if act is None:
      raise NotImplementedError(f"activation {hf.get('hidden_act')!r} is not supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    llama3 = None
    if kind == "llama3":
      llama3 = (rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
                rope["original_max_position_embeddings"])
    elif kind != "default":
      raise NotImplementedError(f"rope type {kind!r} is not supported")
    if hf.get("attention_bias") and model_type != "qwen2":
      raise NotImplementedError("attention_bias (with an o_proj bias) is not supported")
    if hf.get("mlp_bias"):
      raise NotImplementedError("mlp_bias is not supported")
    if hf.get("sliding_window") and (model_type == "mistral" or hf.get("use_sliding_window")):
      raise NotImplementedError("sliding-window attention is not supported")
    tie = hf.get("tie_word_embeddings", gemma)
    cfg = decoder.DecoderConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
        d_ff=hf["intermediate_size"], activation=act, rope_theta=float(theta),
        rope_llama3_scaling=llama3, norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(tie), qkv_bias=model_type == "qwen2",
        scale_embeddings=gemma, norm_plus_one=gemma)
    return "decoder", dataclasses.replace(cfg, **overrides)
  raise NotImplementedError(f"model_type {model_type!r} is not supported "
                            f"(supported: t5, mt5, {', '.join(DECODER_TYPES)})")


def config_to_hf(cfg, meta: dict | None = None) -> dict[str, Any]:
  """The HF `config.json` dict for an mtjax config; `meta` (`mtjax.models.hf_meta`) sets the
  special ids and lengths the weights were trained with (without it: T5's own ids, and none for
  a decoder, whose ids only the run's vocabulary knows)."""
  config = _config_to_hf(cfg)
  if meta:
    config.update(meta.get("config", {}))
  return config


def _config_to_hf(cfg) -> dict[str, Any]:
  if isinstance(cfg, t5.T5Config):
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff, "num_heads": cfg.num_heads, "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "feed_forward_proj": cfg.feed_forward, "is_gated_act": cfg.feed_forward == "gated-gelu",
        "dense_act_fn": "gelu_new" if cfg.feed_forward == "gated-gelu" else "relu",
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "scale_decoder_outputs": cfg.tie_word_embeddings,
        "layer_norm_epsilon": cfg.layer_norm_eps, "dropout_rate": cfg.dropout_rate,
        "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0, "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype,
    }
  if cfg.norm_plus_one or cfg.scale_embeddings:
    if not (cfg.norm_plus_one and cfg.scale_embeddings):
      raise NotImplementedError("export: Gemma options must come together")
    model_type, arch = "gemma", "GemmaForCausalLM"
  elif cfg.qkv_bias:
    model_type, arch = "qwen2", "Qwen2ForCausalLM"
  else:
    model_type, arch = "llama", "LlamaForCausalLM"
  act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.activation]
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_llama3_scaling is not None:
    factor, low, high, original = cfg.rope_llama3_scaling
    rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": factor,
            "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": original}
  out = {
      "architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "intermediate_size": cfg.d_ff, "hidden_act": act,
      "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_parameters": rope,
      "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": False,
      "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype,  # transformers < 4.56 | later
  }
  if cfg.rope_llama3_scaling is not None:
    out["rope_scaling"] = rope
  if model_type == "gemma":
    out["hidden_activation"] = act
  return out


def build(family: str, cfg, rngs: nnx.Rngs):
  return t5.T5(cfg, rngs=rngs) if family == "t5" else decoder.Decoder(cfg, rngs=rngs)


# ---------------------------------------------------------------------------------- loading


def _hf_tensor_files(hf_dir: str) -> list[str]:
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    return [os.path.join(hf_dir, name) for name in files]
  files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors in {hf_dir} (a .bin checkpoint needs converting "
                            f"with transformers first)")
  return files


def _match(hf_key: str, family: str) -> tuple[str, str] | None:
  """(mtjax path, layout) for a HF key, or None if the key is ignorable."""
  if family == "t5":
    for old, new in T5_V1_0_ALIASES.items():
      hf_key = hf_key.replace(old, new)
    ignored = T5_IGNORED
  else:
    ignored = DECODER_IGNORED
  for path, template, layout in _table(family):
    m = _pattern(template).match(hf_key)
    if m:
      return path.replace("{i}", m.groupdict().get("i") or ""), layout
  if any(re.fullmatch(p, hf_key) for p in ignored):
    return None
  raise KeyError(f"{hf_key!r} has no row in the {family} key table of mtjax.models.hf")


_SCANNED = re.compile(r"(?P<stack>\w*layers)\.(?P<i>\d+)\.(?P<rest>.+)")


def _unindexed(path: str) -> str:
  """`layers.3.mlp.up` -> `layers.mlp.up`: the path of a scanned (stacked) parameter."""
  m = _SCANNED.fullmatch(path)
  return f"{m['stack']}.{m['rest']}"


def _flat_params(state) -> dict[str, nnx.Variable]:
  """`{"layers.0.mlp.up": Param}` for the parameters of an NNX state."""
  return {".".join(str(k) for k in path): var for path, var in state.flat_state()
          if isinstance(var, nnx.Param)}


def load(hf_dir: str, *, mesh=None, rules=None, **overrides):
  """An mtjax model with the weights of a local HF checkpoint directory.

  With `mesh`, each tensor goes straight to the sharding its parameter's logical axis names
  give (under `rules`, default `DEFAULT_RULES`); without, to the default device.
  `overrides` replace fields of the mtjax config (e.g. `dtype="bfloat16"`, `dropout_rate`).
  """
  if fs.is_url(hf_dir):  # safetensors reads local files: a temporary download
    with fs.local_dir_to_read(hf_dir) as local:
      return load(local, mesh=mesh, rules=rules, **overrides)
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  with open(os.path.join(hf_dir, "config.json")) as f:
    hf_cfg = json.load(f)
  family, cfg = config_from_hf(hf_cfg, **overrides)
  files = _hf_tensor_files(hf_dir)
  names = set()
  for file in files:
    with safe_open(file, framework="np") as f:
      names.update(f.keys())
  if family == "t5" and "lm_head.weight" in names and cfg.tie_word_embeddings:
    raise NotImplementedError("T5 with a separate lm_head and scaled (v1.0) outputs")
  if family == "t5" and "lm_head.weight" not in names and not cfg.tie_word_embeddings:
    lm_head_from_shared = True  # transformers 5 ties v1.1 heads it created itself
  else:
    lm_head_from_shared = False
  if family == "decoder" and "lm_head.weight" not in names and not cfg.tie_word_embeddings:
    cfg = dataclasses.replace(cfg, tie_word_embeddings=True)

  abstract = nnx.eval_shape(lambda: build(family, cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  targets = _flat_params(state)
  rules = rules_lib.DEFAULT_RULES if rules is None else rules
  dtype = jnp.dtype(cfg.param_dtype)

  def place(path: str, value: np.ndarray):
    var = targets[path]
    shape = tuple(var.get_value().shape)
    if tuple(value.shape) != shape:
      raise ValueError(f"{path}: checkpoint shape {value.shape} != model shape {shape}")
    value = value.astype(dtype)
    if mesh is None:
      return jnp.asarray(value)
    spec = rules_lib.logical_to_spec(rules_lib.axis_names(var), rules)
    return jax.device_put(value, jax.sharding.NamedSharding(mesh, spec))

  values: dict[str, jax.Array] = {}
  stacks: dict[str, dict[int, np.ndarray]] = {}  # scanned layers: one slice per HF layer
  for file in files:
    with safe_open(file, framework="np") as f:
      for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
        hit = _match(key, family)
        if hit is None:
          continue
        path, layout = hit
        w = f.get_tensor(key)
        if lm_head_from_shared and path == "token_embed.embedding":
          values["lm_head"] = place("lm_head", w.T)
        layer = _SCANNED.fullmatch(path)
        if path not in targets and layer and _unindexed(path) in targets:
          shape = tuple(targets[_unindexed(path)].get_value().shape)[1:]
          stacks.setdefault(_unindexed(path), {})[int(layer["i"])] = (
              _to_mtjax(w, layout, shape).astype(dtype))
          continue
        if path not in targets:
          raise KeyError(f"{key!r} maps to {path!r}, which this {family} config does not have")
        values[path] = place(path, _to_mtjax(w, layout, tuple(targets[path].get_value().shape)))
  for path, slices in stacks.items():
    values[path] = place(path, np.stack([slices[i] for i in sorted(slices)]))
  for path, var in targets.items():  # LoRA adapters are not in a HF checkpoint: start fresh
    if path not in values and lora.is_adapter_path(path):
      values[path] = place(path, np.asarray(lora.fresh_value(
          path, var.get_value().shape, rules_lib.axis_names(var), dtype)))
  missing = sorted(set(targets) - set(values))
  if missing:
    raise KeyError(f"{hf_dir}: no tensor for {missing[:8]}{' ...' if len(missing) > 8 else ''}")
  for path, var in targets.items():
    var.set_value(values[path])
  return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------------- export


def family_of(model) -> str:
  return families.name(model)


def export(model, out_dir: str, meta: dict | None = None) -> list[str]:
  """Writes `config.json` + `model.safetensors` (float32 unless params are bf16) for HF, and
  with `meta` (`mtjax.models.hf_meta.load`: what the run recorded) `generation_config.json` and
  the tokenizer files, so `transformers` generates as the run trained. Returns the file names.
  LoRA adapters are merged into their kernels; a soft prompt is left out."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  family = family_of(model)
  table = {path: (template, layout) for path, template, layout in _table(family)}
  tensors = {}
  merged = lora.merged_kernels(model)  # adapters are folded into their kernels
  for path, var in _flat_params(nnx.state(model)).items():
    if path.startswith("embed_hook.") or lora.is_adapter_path(path):
      continue  # a soft prompt has no place in a HF checkpoint; adapters are merged
    value = np.asarray(jax.device_get(merged.get(path, var[...])))
    if (rules_lib.axis_names(var) or (None,))[0] == "layers":  # scanned: one slice per layer
      stack, rest = path.split(".", 1)
      items = [(f"{stack}.{i}.{rest}", w) for i, w in enumerate(value)]
    else:
      items = [(path, value)]
    for layer_path, w in items:
      generic = re.sub(r"(?<=layers\.)\d+(?=\.)", "{i}", layer_path)
      if generic not in table:
        raise KeyError(f"{path!r} has no row in the {family} key table of mtjax.models.hf")
      template, layout = table[generic]
      i = re.search(r"(?<=layers\.)(\d+)(?=\.)", layer_path)
      key = template.replace("{i}", i.group(1) if i else "")
      if family == "t5" and model.cfg.feed_forward == "relu":
        for old, new in T5_V1_0_ALIASES.items():
          key = key.replace(new, old)
      tensors[key] = np.ascontiguousarray(_to_hf(w, layout))
  config = config_to_hf(model.cfg, meta)
  generation = hf_meta.generation_config(meta, config)
  names = ["config.json", "model.safetensors"]
  with fs.local_dir_to_write(out_dir) as local:  # a URL: written here, then uploaded
    save_file(tensors, os.path.join(local, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(local, "config.json"), "w") as f:
      json.dump(config, f, indent=2)
    if generation is not None:
      with open(os.path.join(local, hf_meta.GENERATION), "w") as f:
        json.dump(generation, f, indent=2)
      names.append(hf_meta.GENERATION)
    names += hf_meta.copy_tokenizer(meta, local)
  return names


def num_params(model) -> int:
  return int(sum(v.get_value().size for v in _flat_params(nnx.state(model)).values()))
