"""Model FLOPs per step and MFU: 6N per token for the parameters a token passes through, plus
the attention term (12 x layers x heads*d_kv x attended length, forward + backward), over the
device's peak dense bf16 rate. Unknown devices (CPU included) get no MFU."""

from __future__ import annotations

import jax

# Peak dense bf16 FLOP/s per device (chip), by a substring of `device.device_kind`.
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12), ("L4", 121e12),
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v4", 275e12), ("TPU v3", 123e12),
)


def device_peak_flops(device=None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind
  for name, peak in PEAK_FLOPS:
    if name.lower() in kind.lower():
      return peak
  return None


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def step_flops(params, model_cfg, batch_size: int, inputs_length: int,
               targets_length: int) -> float:
  """Training FLOPs of one step on a `[batch, length]` batch (padding included, as computed).

  Encoder-decoder: encoder parameters see the input tokens, the rest (decoder, embeddings, head)
  the target tokens. Decoder-only models (no `encoder*` parameters) see one stream of
  `inputs_length + targets_length` tokens.
  """
  top = params if isinstance(params, dict) else {}
  enc = _count({k: v for k, v in top.items() if str(k).startswith("encoder")})
  rest = _count(params) - enc
  attn_dim = (getattr(model_cfg, "num_heads", 0) * getattr(model_cfg, "d_kv", 0)
              or getattr(model_cfg, "d_model", 0))
  if enc:
    in_tok, tgt_tok = batch_size * inputs_length, batch_size * targets_length
    layers_e = getattr(model_cfg, "num_encoder_layers", 0)
    layers_d = getattr(model_cfg, "num_decoder_layers", 0)
    attn = 12 * attn_dim * (layers_e * in_tok * inputs_length
                            + layers_d * tgt_tok * (targets_length + inputs_length))
    return 6.0 * (enc * in_tok + rest * tgt_tok) + attn
  length = inputs_length + targets_length
  layers = getattr(model_cfg, "num_layers", getattr(model_cfg, "num_decoder_layers", 0))
  return 6.0 * rest * batch_size * length + 12 * attn_dim * layers * batch_size * length * length


def mfu(flops_per_step: float, steps_per_s: float, num_devices: int,
        peak: float | None) -> float | None:
  if not peak or not flops_per_step:
    return None
  return flops_per_step * steps_per_s / (peak * num_devices)
