"""Scoring many targets of one input with the input run once (rank classification's shape).

T0-style evaluation scores every answer choice of every example: k (input, choice) pairs that
share their input. Run pair by pair, T5's encoder (or a decoder's prompt) runs k times. Here
the pairs are grouped by input; each group becomes one row: the input once, and its targets laid
side by side after it (`offsets` number each target's tokens from 0). The model families'
`continuation_logits` make each target see the input and its own earlier tokens only, at the
positions it has alone, so its log-likelihood is the pair's (to float rounding): T5 encodes the
input once and decodes the targets as segments of one decoder row that all read it; a decoder
runs the prompt once into its KV cache and extends the cache with all targets at once.

Rows are batched like `batching.plan`'s: longest first, each batch padded to the length buckets
of its longest prompt and row of targets, the last batch short.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtjax.eval import batching, generate, log_probs

MIN_ROW_WIDTH = 128  # targets of one input share a row up to this many tokens (or the longest)


def model_type(graphdef):
  """The model class a graphdef rebuilds."""
  try:
    return graphdef.nodes[0].type
  except (AttributeError, IndexError):
    return None


def supported(graphdef) -> bool:
  """Whether the model's family provides `continuation_logits` (both mtjax families do)."""
  module = sys.modules.get(getattr(model_type(graphdef), "__module__", ""))
  return module is not None and hasattr(module, "continuation_logits")


def groups(pairs: Sequence[tuple[np.ndarray, np.ndarray]],
           starts: Sequence[int] | None = None) -> list[list[int]]:
  """Pair indices grouped by identical input tokens (and start token, given `starts`), in order
  of first appearance."""
  out: dict[tuple, list[int]] = {}
  for i, (inputs, _) in enumerate(pairs):
    key = (None if starts is None else int(starts[i]), np.asarray(inputs, np.int32).tobytes())
    out.setdefault(key, []).append(i)
  return list(out.values())


def rows(pairs, grouped: Sequence[Sequence[int]], width_cap: int) -> list[tuple[int, list]]:
  """(input's pair index, [(pair index, start, length), ...]) per row: a group's targets side
  by side, a new row (the same input again) when the next would pass `width_cap`."""
  out = []
  for members in grouped:
    row, used = [], 0
    for p in members:
      n = len(pairs[p][1])
      if row and used + n > width_cap:
        out.append((members[0], row))
        row, used = [], 0
      row.append((p, used, n))
      used += n
    out.append((members[0], row))
  return out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def score_rows(graphdef, params, prompts, tokens, offsets, weights) -> dict[str, jax.Array]:
  """Per-token `log p` `[B, W]` of the targets laid in `tokens` and whether each is the argmax."""
  model = nnx.merge(graphdef, params)
  module = sys.modules[type(model).__module__]
  logits = module.continuation_logits(model, prompts, tokens, offsets)
  lp = log_probs.target_log_probs(logits, tokens, weights)
  greedy = (jnp.argmax(logits, -1) == tokens) | (weights <= 0)
  return {"log_prob": lp, "greedy": greedy}


def _prompts(family: str, inputs: Sequence[np.ndarray], width: int, starts: Sequence[int]):
  """The prompt features of `inputs`, `width` tokens wide (decoders: start token included)."""
  if family == "enc_dec":
    tokens = np.zeros((len(inputs), width), np.int32)
    for r, x in enumerate(inputs):
      tokens[r, :len(x)] = x
    return generate.prompt_batch("enc_dec", tokens)
  tokens = np.zeros((len(inputs), width - 1), np.int32)
  for r, x in enumerate(inputs):
    tokens[r, :len(x)] = x
  batch = generate.prompt_batch(family, tokens, [len(x) for x in inputs])
  batch["decoder_input_tokens"][:, 0] = starts
  return batch


PROMPT = "prompt_"  # feature-name prefix of the prompt features in a batch


def batches(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, family: str, batch_size: int,
            parallel: int = 1, starts: Sequence[int] | None = None,
            grouped: Sequence[Sequence[int]] | None = None):
  """(features, placement) per batch: host arrays for `run_batch` and, per row, the pairs laid
  in it as (pair index, start, length). `pairs`: (input ids, target ids), already cut to the
  run's lengths; `starts`: each pair's decoder start token; `batch_size` counts pairs, as
  `eval.batch_size` does; rows are a multiple of `parallel`."""
  starts = [0] * len(pairs) if starts is None else [int(s) for s in starts]
  grouped = groups(pairs, starts) if grouped is None else grouped
  longest = max((len(t) for _, t in pairs), default=1)
  layout = rows(pairs, grouped, max(MIN_ROW_WIDTH, longest))
  extra = 0 if family == "enc_dec" else 1  # a decoder prompt starts with the start token
  prompt_len = [len(pairs[i][0]) + extra for i, _ in layout]
  width = [max(1, sum(n for _, _, n in targets)) for _, targets in layout]
  # Rows per batch: as many inputs as `batch_size` pairs hold, on average.
  per_row = len(pairs) / max(len(layout), 1)
  row_batch = max(1, math.ceil(batch_size / per_row))
  sizes = [p + w for p, w in zip(prompt_len, width)]
  for chunk, n_rows in batching.plan(sizes, row_batch, parallel=parallel):
    p_width = batching.bucket(max(prompt_len[r] for r in chunk))
    t_width = batching.bucket(max(width[r] for r in chunk))
    inputs = [pairs[layout[r][0]][0] for r in chunk]
    row_starts = [starts[layout[r][0]] for r in chunk]
    inputs += [inputs[-1][:0]] * (n_rows - len(chunk))  # filler rows: an empty input
    row_starts += [row_starts[-1]] * (n_rows - len(chunk))
    prompts = _prompts(family, inputs, p_width, row_starts)
    tokens = np.zeros((n_rows, t_width), np.int32)
    offsets = np.tile(np.arange(t_width, dtype=np.int32), (n_rows, 1))
    weights = np.zeros((n_rows, t_width), np.int32)
    placement = []
    for r, row in enumerate(chunk):
      end = 0
      for p, start, n in layout[row][1]:
        tokens[r, start:start + n] = pairs[p][1]
        offsets[r, start:start + n] = np.arange(n)
        weights[r, start:start + n] = 1
        end = start + n
      offsets[r, end:] = np.arange(t_width - end)  # the padding tail: a segment of its own
      placement.append(layout[row][1])
    yield ({"tokens": tokens, "offsets": offsets, "weights": weights,
            **{PROMPT + k: v for k, v in prompts.items()}}, placement)


def run_batch(graphdef, params, features) -> dict[str, jax.Array]:
  """`score_rows` on a batch from `batches` (host or device arrays)."""
  prompts = {k[len(PROMPT):]: v for k, v in features.items() if k.startswith(PROMPT)}
  return score_rows(graphdef, params, prompts, features["tokens"], features["offsets"],
                    features["weights"])


def unpack(result: dict, placement, out: dict[str, np.ndarray]) -> None:
  """Writes each pair's summed log-probability, length and greedy flag into `out`."""
  lp, greedy = np.asarray(result["log_prob"]), np.asarray(result["greedy"])
  for r, laid in enumerate(placement):
    for p, start, n in laid:
      out["sum"][p] = float(lp[r, start:start + n].astype(np.float64).sum())
      out["length"][p] = n
      out["greedy"][p] = bool(greedy[r, start:start + n].all())


def empty(n: int) -> dict[str, np.ndarray]:
  return {"sum": np.zeros(n, np.float64), "length": np.zeros(n, np.int64),
          "greedy": np.ones(n, bool)}


def score(graphdef, params, pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, family: str,
          batch_size: int, mesh=None, rules=None, start_id: int = 0,
          grouped: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:
  """`{"sum", "length", "greedy"}` per pair, in order (`batches` -> `run_batch` -> `unpack`)."""
  out = empty(len(pairs))
  for features, placement in batches(pairs, family=family, batch_size=batch_size,
                                     parallel=batching.parallelism(mesh),
                                     starts=[start_id] * len(pairs), grouped=grouped):
    batching.SHAPES.add("score_shared", features)
    unpack(run_batch(graphdef, params, batching.put(features, mesh, rules)), placement, out)
  return out
