"""Generation with a model: binds a model family's decode interface to the search algorithms.

The decode interface each family provides (in its model module, or as methods on the model):
  `start_decode(model, batch, max_decode_len) -> (logits [B, V] float32, cache)`
  `decode_step(model, cache, tokens [B] int32) -> (logits [B, V] float32, cache)`
For a family that does not provide it yet, T5 falls back to `_RecomputeT5` here: the cache
holds the encoder output and the decoder input buffer, and each step re-runs the decoder over
the full fixed-length buffer (no KV cache). That is numerically the same as the original greedy
decoder, so end-of-training numbers do not move when the KV cache lands.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtjax.data.feature_converters import BOS_ID
from mtjax.eval import decoding

METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How to decode (hashable: a static argument of the jitted `generate`)."""

  method: str = "greedy"  # greedy | beam | sample
  max_length: int = 16
  eos_id: int = 1
  beam_size: int = 4
  alpha: float = 0.6  # beam length penalty ((5 + len) / 6) ** alpha
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"eval.decode must be one of {METHODS}, got {self.method!r}")
    if self.method == "beam" and self.beam_size < 1:
      raise ValueError(f"eval.beam_size must be >= 1, got {self.beam_size}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"eval.top_p must be in (0, 1], got {self.top_p}")


class _RecomputeT5:
  """Full-recompute `start_decode` / `decode_step` for `mtjax.models.t5.T5` (no KV cache)."""

  @staticmethod
  def start_decode(model, batch, max_decode_len: int):
    tokens = batch["encoder_input_tokens"]
    enc_seg = (tokens > 0).astype(jnp.int32)
    cache = {
        "encoded": model.encode(tokens, enc_seg),
        "encoder_segment_ids": enc_seg,
        "decoder_inputs": jnp.full((tokens.shape[0], max_decode_len), BOS_ID, jnp.int32),
        "position": jnp.zeros((tokens.shape[0],), jnp.int32),  # of the logits last returned
    }
    return _RecomputeT5._logits(model, cache), cache

  @staticmethod
  def decode_step(model, cache, tokens):
    position = cache["position"] + 1
    rows = jnp.arange(tokens.shape[0])
    cache = dict(cache, position=position,
                 decoder_inputs=cache["decoder_inputs"].at[rows, position].set(tokens))
    return _RecomputeT5._logits(model, cache), cache

  @staticmethod
  def _logits(model, cache):
    logits = model.decode(cache["encoded"], cache["encoder_segment_ids"], cache["decoder_inputs"])
    return jnp.take_along_axis(logits, cache["position"][:, None, None], axis=1)[:, 0]


def prompt_batch(family: str, tokens, lengths=None, start_id: int = BOS_ID):
  """Generation inputs from padded prompts `[B, P]`: encoder tokens (enc-dec), or right-padded
  decoder prompts plus their lengths (decoder-only, prefix-LM).

  Decoder prompts start with `start_id` (the run's start token: an HF tokenizer's BOS, else 0;
  `pipeline.start_id`) and (prefix-LM) attend bidirectionally, exactly as the inputs part of a
  training row does (`feature_converters.prefix_lm`: the targets shifted right), so the first
  decoded token is the one the trained model predicts after the inputs. `lengths`:
  each prompt's token count (else the count of non-zero ids, right only where id 0 is never
  text, as in SeqIO's vocabularies).
  """
  if family == "enc_dec":
    return {"encoder_input_tokens": tokens}
  tokens = np.asarray(tokens, np.int32)
  count = (tokens > 0).sum(-1) if lengths is None else np.asarray(lengths)
  lengths = count.astype(np.int32) + 1
  tokens = np.concatenate([np.full((tokens.shape[0], 1), start_id, np.int32), tokens], axis=1)
  batch = {"decoder_input_tokens": tokens, "decoder_prompt_lengths": lengths}
  if family == "prefix_lm":
    batch["decoder_causal_attention"] = (
        np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int32)
  return batch


def prompt_row_lengths(family: str, lengths) -> list[int]:
  """Each `prompt_batch` row's real width (decoders: the start token too), for
  `batching.map_batches(row_lengths=...)` to cut batches to their longest prompt."""
  extra = 0 if family == "enc_dec" else 1
  return [int(n) + extra for n in lengths]


def decode_functions(model):
  """(start_decode, decode_step) of the model's family, as functions of (model, ...)."""
  module = sys.modules.get(type(model).__module__)
  if hasattr(module, "start_decode") and hasattr(module, "decode_step"):
    return module.start_decode, module.decode_step
  if hasattr(model, "start_decode") and hasattr(model, "decode_step"):
    return (lambda m, batch, n: m.start_decode(batch, n),
            lambda m, cache, tokens: m.decode_step(cache, tokens))
  if hasattr(model, "encode") and hasattr(model, "decode"):
    return _RecomputeT5.start_decode, _RecomputeT5.decode_step
  raise TypeError(f"{type(model).__name__} provides no start_decode/decode_step")


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def generate(graphdef, params, batch, rng, *, options: DecodeOptions):
  """Best sequence per row `[B, max_length]` (0 after EOS) and its score `[B]`.

  The score is the beam score for beam search and 0 otherwise (use `mtjax.eval.scoring` for
  log-likelihoods). `rng` is used by sampling only.
  """
  model = nnx.merge(graphdef, params)
  start, step = decode_functions(model)
  logits, cache = start(model, batch, options.max_length)
  step_fn = lambda c, t: step(model, c, t)
  kw = dict(max_length=options.max_length, eos_id=options.eos_id)
  if options.method == "beam":
    seqs, scores = decoding.beam_search(logits, cache, step_fn, beam_size=options.beam_size,
                                        alpha=options.alpha, **kw)
    return seqs[:, 0], scores[:, 0]
  if options.method == "sample":
    out = decoding.sample(logits, cache, step_fn, rng, temperature=options.temperature,
                          top_k=options.top_k, top_p=options.top_p, **kw)
  else:
    out = decoding.greedy(logits, cache, step_fn, **kw)
  return out, jnp.zeros(out.shape[:1], jnp.float32)
