"""The training input pipeline: cached ArrayRecord -> Grain -> packed model batches. TF-free.

Per task: random-access source over the cache, this host's shard, a seeded shuffle, endless
repeat, decode and the post-cache ops in numpy. The tasks are then interleaved by
`MapDataset.mix` with the mixture's normalised rates (deterministic by construction), packed
(first-fit) or padded, converted to model features, and batched. Every step is a Grain dataset,
so the iterator's state is a few integers and restoring it replays the exact stream.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import grain
import numpy as np

from mtjax.data import cache, feature_converters, mixing, packing, records

TOKEN_FEATURES = ("inputs", "targets")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """What shapes the stream; everything else comes from the mixture spec and the cache."""

  lengths: Mapping[str, int]  # {"inputs": ..., "targets": ...}
  batch_size: int  # per host
  pack: bool = True
  packer: str = "window"  # "window" (packing.py) or Grain's "best_fit" / "first_fit"
  packing_bins: int = 0  # Grain packers: rows packed at once (0: one batch); window: examples
  seed: int = 0
  shard_index: int = 0  # this host's data shard
  num_shards: int = 1
  prefetch: int = 2  # batches prepared by a background thread while the step runs (0: off)


def _manifest(cache_dir: str, task: str, split: str) -> dict:
  manifest = cache.read_manifest(cache_dir, task, split)
  if manifest is None:
    raise FileNotFoundError(
        f"no cache for task {task!r} split {split!r} under {cache_dir}; run `mtjax cache`")
  return manifest


def task_source(cache_dir: str, task: str, split: str) -> grain.sources.ArrayRecordDataSource:
  """Full cached examples (serialized records; strings included), by index."""
  manifest = _manifest(cache_dir, task, split)
  folder = cache.split_dir(cache_dir, task, split)
  return grain.sources.ArrayRecordDataSource(
      [os.path.join(folder, s["file"]) for s in manifest["shards"]])


class TokenSource:
  """Random access to a split's token features through memory-mapped flat arrays.

  Example `i` of feature `f` is `tokens_f[offsets_f[i]:offsets_f[i + 1]]`: a slice, no record
  read or decode. This is what the training stream reads.
  """

  def __init__(self, cache_dir: str, task: str, split: str, features=TOKEN_FEATURES):
    manifest = _manifest(cache_dir, task, split)
    folder = cache.split_dir(cache_dir, task, split)
    arrays = manifest.get("token_arrays", {})
    missing = [f for f in features if f not in arrays]
    if missing:
      raise ValueError(f"cache of {task}/{split} has no token arrays for {missing}; rebuild it "
                       "with `mtjax cache`")
    self._features = tuple(features)
    self._tokens = {f: np.load(os.path.join(folder, arrays[f]["tokens"]), mmap_mode="r")
                    for f in features}
    self._offsets = {f: np.load(os.path.join(folder, arrays[f]["offsets"])) for f in features}
    self._len = manifest["num_examples"]

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    out = {}
    for f in self._features:
      start, end = self._offsets[f][i], self._offsets[f][i + 1]
      out[f] = np.asarray(self._tokens[f][start:end])
    return out

  def __repr__(self) -> str:
    return f"TokenSource({self._len} examples, features={self._features})"


def post_cache(example: dict[str, Any], ops: list[str], output_features: Mapping[str, dict],
               lengths: Mapping[str, int]) -> dict[str, Any]:
  """Numpy versions of SeqIO's post-cache EOS ops, then the final trim to `lengths`."""
  out = dict(example)
  for name in TOKEN_FEATURES:
    tokens = np.asarray(out[name])
    feature, length = output_features[name], lengths[name]
    for op in ops:
      if feature["add_eos"] and op in ("append_eos_after_trim", "append_eos"):
        keep = min(len(tokens), length - 1) if op == "append_eos_after_trim" else len(tokens)
        with_eos = np.empty(keep + 1, tokens.dtype)
        with_eos[:keep] = tokens[:keep]
        with_eos[keep] = feature["eos_id"]
        tokens = with_eos
    out[name] = tokens[:length]
  return out


def final_lengths(raw: np.ndarray, ops: list[str], feature: Mapping[str, Any],
                  length: int) -> np.ndarray:
  """Lengths after `post_cache` (EOS ops, then the trim), computed from raw lengths only."""
  out = np.asarray(raw, np.int64)
  for op in ops:
    if feature["add_eos"] and op == "append_eos_after_trim":
      out = np.minimum(out, length - 1) + 1
    elif feature["add_eos"] and op == "append_eos":
      out = out + 1
  return np.minimum(out, length)


class PlanSource:
  """Per example of a task: its index and final feature lengths, from the offsets alone."""

  def __init__(self, cache_dir: str, task: str, task_id: int, split: str,
               lengths: Mapping[str, int]):
    manifest = _manifest(cache_dir, task, split)
    folder = cache.split_dir(cache_dir, task, split)
    arrays = manifest.get("token_arrays", {})
    self._task_id = task_id
    self._lengths = {}
    for name in TOKEN_FEATURES:
      if name not in arrays:
        raise ValueError(f"cache of {task}/{split} has no token arrays for {name!r}; rebuild it")
      raw = np.diff(np.load(os.path.join(folder, arrays[name]["offsets"])))
      self._lengths[name] = final_lengths(raw, manifest["post_cache_ops"],
                                          manifest["output_features"][name], lengths[name])

  def __len__(self) -> int:
    return len(self._lengths["inputs"])

  def __getitem__(self, i: int) -> dict[str, int]:
    return {"task_ids": self._task_id, "index": i, "inputs_len": self._lengths["inputs"][i],
            "targets_len": self._lengths["targets"][i]}


def _task_stream(source, task: str, task_id: int, split: str, options: PipelineOptions,
                 shard: bool, repeat: bool = True) -> grain.MapDataset:
  """Random access over one task: optionally this host's shard, seeded shuffle, repeat."""
  ds = grain.MapDataset.source(source)
  if shard and options.num_shards > 1:
    ds = ds[options.shard_index::options.num_shards]
  if len(ds) == 0:
    raise ValueError(f"task {task!r} split {split!r}: shard {options.shard_index} of "
                     f"{options.num_shards} is empty ({len(source)} examples)")
  # A distinct, fixed shuffle seed per task keeps tasks independent of the mixture's order.
  ds = ds.shuffle(seed=options.seed * 1_000_003 + task_id)
  return ds.repeat() if repeat else ds


def _preparer(cache_dir: str, task: str, task_id: int, split: str, lengths: Mapping[str, int]):
  """Raw token example -> EOS-terminated, trimmed int32 features plus per-token `task_ids`."""
  manifest = _manifest(cache_dir, task, split)
  ops, features = manifest["post_cache_ops"], manifest["output_features"]
  lengths = dict(lengths)

  def prepare(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    example = post_cache(example, ops, features, lengths)
    out = {k: np.asarray(example[k], np.int32) for k in TOKEN_FEATURES}
    out["task_ids"] = np.full_like(out["targets"], task_id)
    return out

  return prepare


def task_dataset(cache_dir: str, task: str, task_id: int, split: str,
                 options: PipelineOptions, repeat: bool = True) -> grain.MapDataset:
  """One task's examples: this host's shard, shuffled, repeated, EOS-terminated, trimmed."""
  prepare = _preparer(cache_dir, task, task_id, split, options.lengths)
  ds = _task_stream(TokenSource(cache_dir, task, split), task, task_id, split, options,
                    shard=True, repeat=repeat)
  return ds.map(prepare)


def _mix(parts: list[grain.MapDataset], spec: mixing.MixtureSpec) -> grain.MapDataset:
  return parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, list(spec.weights))


def mixed_examples(spec: mixing.MixtureSpec, cache_dir: str, options: PipelineOptions,
                   split: str = "train") -> grain.MapDataset:
  """This host's examples of the mixture, interleaved deterministically by the rates."""
  return _mix([task_dataset(cache_dir, t, i, split, options)
               for i, t in enumerate(spec.task_names)], spec)


def mixed_plan(spec: mixing.MixtureSpec, cache_dir: str, options: PipelineOptions,
               split: str = "train") -> grain.MapDataset:
  """The global (all hosts) mixed stream as (task, index, lengths): reads no tokens."""
  return _mix([_task_stream(PlanSource(cache_dir, t, i, split, options.lengths), t, i, split,
                            options, shard=False) for i, t in enumerate(spec.task_names)], spec)


def _pad_example(example: Mapping[str, np.ndarray], lengths: Mapping[str, int]) -> dict:
  return {
      "inputs": feature_converters.pad_to(example["inputs"], lengths["inputs"]),
      "targets": feature_converters.pad_to(example["targets"], lengths["targets"]),
      "task_ids": feature_converters.pad_to(example["task_ids"], lengths["targets"]),
  }


def report_trimming(spec: mixing.MixtureSpec, cache_dir: str, lengths: Mapping[str, int],
                    split: str = "train") -> dict[str, dict[str, int]]:
  """Logs, per task, how many examples the feature lengths will trim; returns the counts."""
  report = {}
  for task in spec.task_names:
    manifest = _manifest(cache_dir, task, split)
    trimmed = {k: v for k, v in cache.count_trimmed(manifest, lengths).items() if v}
    if trimmed:
      report[task] = trimmed
      log.warning("task %s/%s: %s of %d examples are longer than the feature length %s and will "
                  "be trimmed", task, split, trimmed, manifest["num_examples"], dict(lengths))
  return report


def _window_rows(spec, cache_dir, options, split) -> grain.IterDataset:
  """This host's rows of the host-count-independent global packing (packing.py)."""
  sources = [TokenSource(cache_dir, t, split) for t in spec.task_names]
  preparers = [_preparer(cache_dir, t, i, split, options.lengths)
               for i, t in enumerate(spec.task_names)]

  def fetch(task_id: int, index: int) -> dict[str, np.ndarray]:
    return preparers[task_id](sources[task_id][index])

  return packing.WindowPackIterDataset(
      mixed_plan(spec, cache_dir, options, split), fetch, options.lengths,
      global_batch=options.batch_size * options.num_shards, shard_index=options.shard_index,
      num_shards=options.num_shards, window=options.packing_bins or 4096, seed=options.seed)


def train_batches(spec: mixing.MixtureSpec, cache_dir: str, options: PipelineOptions,
                  split: str = "train") -> grain.IterDataset:
  """This host's batches of encoder-decoder features (a checkpointable iterator).

  With the `window` packer the global batches do not depend on the number of hosts; with
  Grain's packers each host mixes and packs its own shard of every task.
  """
  lengths = dict(options.lengths)
  if options.pack and options.packer == "window":
    return _convert_and_batch(_window_rows(spec, cache_dir, options, split), options)
  ds = mixed_examples(spec, cache_dir, options, split).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if options.pack:
    packers = {"first_fit": grain.experimental.FirstFitPackIterDataset,
               "best_fit": grain.experimental.BestFitPackIterDataset}
    if options.packer not in packers:
      raise ValueError(f"data.packer must be one of {sorted(packers) + ['window']}, "
                       f"got {options.packer!r}")
    ds = packers[options.packer](
        ds,
        length_struct={"inputs": lengths["inputs"], "targets": lengths["targets"],
                       "task_ids": lengths["targets"]},
        num_packing_bins=options.packing_bins or options.batch_size,
        seed=options.seed,
        shuffle_bins=True,
    )
  else:
    ds = ds.map(lambda ex: _pad_example(ex, lengths))
  return _convert_and_batch(ds, options)


def _convert_and_batch(ds: grain.IterDataset, options: PipelineOptions) -> grain.IterDataset:
  packed = options.pack
  ds = ds.map(lambda ex: feature_converters.enc_dec(ex, packed=packed))
  ds = ds.batch(options.batch_size, drop_remainder=True)
  if options.prefetch > 0:
    # Checkpointable: the saved state is that of the last batch handed out, not produced.
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=options.prefetch)
  return ds


def read_examples(cache_dir: str, task: str, split: str, limit: int | None = None) -> list[dict]:
  """All (or the first `limit`) cached examples of a split, in cache order (for evaluation)."""
  source = task_source(cache_dir, task, split)
  n = len(source) if limit is None else min(limit, len(source))
  return [records.decode(source[i]) for i in range(n)]
