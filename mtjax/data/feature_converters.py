"""Feature conversion in numpy, mirroring SeqIO's converters (the model-facing feature names).

Input: one example of `inputs` / `targets` token arrays, either packed (with
`*_segment_ids` and `*_positions` from the packer) or padded. Output for encoder-decoder
models, as `seqio.EncDecFeatureConverter` produces:
`encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights`, and
when packed `encoder_segment_ids, encoder_positions, decoder_segment_ids, decoder_positions`;
plus `task_ids` (per target token) which mtjax adds for per-task losses and prompts.

Decoder-only models read one sequence `inputs + targets` (`concat_for_prefix_lm`, before packing)
of length `inputs_length + targets_length`, as `seqio.PrefixLMFeatureConverter` builds it.
`decoder_only` keeps the loss on the targets but attends causally everywhere (no
`decoder_causal_attention`); `prefix_lm` adds the bidirectional-prefix mask.

Padding is known by length, not by value: `pad_example` adds `targets_mask` (1 on real tokens)
and the unpacked converters read it, because id 0 is text in HF vocabularies (Llama 3's and
Qwen2's "!"). Without a mask (SeqIO's own contract: pad id 0 is never a token) they fall back to
`targets > 0`, which gives the same features for SeqIO's vocabularies.

Start token. A decoder row begins with a start token (position 0, and each packed segment's
first position): the targets shifted right. T5 starts from 0 (its pad, `BOS_ID`), and so do the
decoder kinds for SeqIO's vocabularies, as SeqIO's converters do. A decoder pretrained with a BOS
(Llama 3 `<|begin_of_text|>`, Gemma `<bos>`) must see that BOS first, not id 0 (text in their
vocabularies), so `decoder_only` / `prefix_lm` take `start_id`: the task vocabulary's
(`cache.vocab_start_id`, recorded in each cache manifest). `enc_dec` always starts from 0.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

BOS_ID = 0  # T5 starts decoding from the pad id; the default start of every row
CONVERTERS = ("enc_dec", "decoder_only", "prefix_lm")


def autoregressive_inputs(targets: np.ndarray, segment_ids: np.ndarray | None = None,
                          start_id: int = BOS_ID) -> np.ndarray:
  """Shifts targets right by one; each packed segment starts again from `start_id`."""
  shifted = np.concatenate([np.full(targets.shape[:-1] + (1,), start_id, targets.dtype),
                            targets[..., :-1]], axis=-1)
  if segment_ids is not None:
    prev = np.concatenate([np.zeros(segment_ids.shape[:-1] + (1,), segment_ids.dtype),
                           segment_ids[..., :-1]], axis=-1)
    shifted = np.where(segment_ids == prev, shifted, start_id).astype(targets.dtype)
  return shifted


def pad_to(x: np.ndarray, length: int) -> np.ndarray:
  x = np.asarray(x)[:length]
  return np.pad(x, (0, length - x.shape[0]))


def _real_tokens(example: Mapping[str, np.ndarray], targets: np.ndarray) -> np.ndarray:
  """1 on the real (not padding) positions of an unpacked row."""
  mask = example.get("targets_mask")
  return (targets > 0) if mask is None else (np.asarray(mask) > 0)


def enc_dec(example: Mapping[str, np.ndarray], packed: bool) -> dict[str, np.ndarray]:
  """Converts one (packed or padded-to-length) example to encoder-decoder model features."""
  targets = np.asarray(example["targets"], np.int32)
  out = {
      "encoder_input_tokens": np.asarray(example["inputs"], np.int32),
      "decoder_target_tokens": targets,
  }
  if packed:
    dec_seg = np.asarray(example["targets_segment_ids"], np.int32)
    out["decoder_input_tokens"] = autoregressive_inputs(targets, dec_seg)
    out["decoder_loss_weights"] = (dec_seg > 0).astype(np.float32)
    out["encoder_segment_ids"] = np.asarray(example["inputs_segment_ids"], np.int32)
    out["encoder_positions"] = np.asarray(example["inputs_positions"], np.int32)
    out["decoder_segment_ids"] = dec_seg
    out["decoder_positions"] = np.asarray(example["targets_positions"], np.int32)
  else:
    out["decoder_input_tokens"] = autoregressive_inputs(targets)
    out["decoder_loss_weights"] = _real_tokens(example, targets).astype(np.float32)
  if "task_ids" in example:
    out["task_ids"] = np.asarray(example["task_ids"], np.int32)
  return out


def concat_for_prefix_lm(example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Prefix LM, before packing: one sequence `inputs + targets` with a mask of the inputs part."""
  inputs = np.asarray(example["inputs"], np.int32)
  targets = np.asarray(example["targets"], np.int32)
  mask = np.zeros(len(inputs) + len(targets), np.int32)  # (few numpy calls: runs per example)
  mask[:len(inputs)] = 1
  out = {"targets": np.concatenate([inputs, targets]), "inputs_mask": mask}
  if "task_ids" in example:
    out["task_ids"] = np.full(len(mask), np.asarray(example["task_ids"]).flat[0], np.int32)
  return out


def decoder_only(example: Mapping[str, np.ndarray], packed: bool,
                 start_id: int = BOS_ID) -> dict[str, np.ndarray]:
  """Targets-only language modelling (`seqio.LMFeatureConverter`): loss on every token.
  `start_id`: the token each row (each packed segment) starts from (see the module doc)."""
  targets = np.asarray(example["targets"], np.int32)
  seg = np.asarray(example["targets_segment_ids"], np.int32) if packed else None
  out = {
      "decoder_target_tokens": targets,
      "decoder_input_tokens": autoregressive_inputs(targets, seg, start_id),
      "decoder_loss_weights": (_real_tokens(example, targets) if seg is None
                               else (seg > 0)).astype(np.int32),
  }
  if packed:
    out["decoder_segment_ids"] = seg
    out["decoder_positions"] = np.asarray(example["targets_positions"], np.int32)
  if "task_ids" in example:
    out["task_ids"] = np.asarray(example["task_ids"], np.int32)
  return out


def prefix_lm(example: Mapping[str, np.ndarray], packed: bool,
              loss_on_targets_only: bool = True, start_id: int = BOS_ID) -> dict[str, np.ndarray]:
  """Prefix LM (`seqio.PrefixLMFeatureConverter`) from a `concat_for_prefix_lm` example.

  `decoder_causal_attention` marks the bidirectional part: the inputs plus one position, where
  the last input token is read and the first target is predicted.
  """
  out = decoder_only(example, packed, start_id)
  is_input = np.asarray(example["inputs_mask"], np.int32)
  if packed:
    seg = out["decoder_segment_ids"]
  else:
    seg = _real_tokens(example, out["decoder_target_tokens"]).astype(np.int32)
  prev_input = np.concatenate([[0], is_input[:-1]])
  prev_seg = np.concatenate([[0], seg[:-1]])
  one_more = (prev_input == 1) & (prev_seg == seg) & (seg > 0)
  out["decoder_causal_attention"] = ((is_input == 1) | one_more).astype(np.int32)
  if loss_on_targets_only:
    out["decoder_loss_weights"] = (out["decoder_loss_weights"] * (1 - is_input)).astype(np.int32)
  return out


def check_converter(kind: str) -> str:
  if kind not in CONVERTERS:
    raise ValueError(f"data.feature_converter must be one of {CONVERTERS}, got {kind!r}")
  return kind


def concatenates(kind: str) -> bool:
  """Whether examples become one `inputs + targets` sequence before packing or padding."""
  return check_converter(kind) != "enc_dec"


def model_lengths(kind: str, lengths: Mapping[str, int]) -> dict[str, int]:
  """Lengths the packer / padder fills: two streams for enc-dec, one concatenated otherwise."""
  if concatenates(kind):
    return {"inputs": 0, "targets": lengths["inputs"] + lengths["targets"]}
  return {"inputs": lengths["inputs"], "targets": lengths["targets"]}


def pad_example(example: Mapping[str, np.ndarray], kind: str,
                lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
  """Pads one prepared (trimmed, and for decoder kinds concatenated) example to model lengths."""
  model = model_lengths(kind, lengths)
  real = np.ones(len(example["targets"]), np.int32)
  if concatenates(kind):
    out = {k: pad_to(example[k], model["targets"]) for k in ("targets", "inputs_mask", "task_ids")
           if k in example}
    out["targets_mask"] = pad_to(real, model["targets"])
    return out
  out = {"inputs": pad_to(example["inputs"], model["inputs"]),
         "targets": pad_to(example["targets"], model["targets"]),
         "targets_mask": pad_to(real, model["targets"])}
  if "task_ids" in example:
    out["task_ids"] = pad_to(example["task_ids"], model["targets"])
  return out


def convert(example: Mapping[str, np.ndarray], kind: str, packed: bool,
            start_id: int = BOS_ID) -> dict[str, np.ndarray]:
  """Model features of one padded or packed row for the chosen converter. `start_id` starts
  decoder rows (`decoder_only`, `prefix_lm`); `enc_dec` starts from 0 as T5 does."""
  if check_converter(kind) == "enc_dec":
    return enc_dec(example, packed=packed)
  out = prefix_lm(example, packed=packed, start_id=start_id)
  if kind == "decoder_only":
    del out["decoder_causal_attention"]
  return out
