"""The training input pipeline: cached ArrayRecord -> Grain -> packed model batches. TF-free.

Per task: random-access source over the cache, a seeded shuffle, endless repeat, decode and the
post-cache ops in numpy. The tasks are then interleaved by Grain's deterministic proportional
interleave (`ProportionalSelection`: `MapDataset.mix`'s rule on exact integer proportions of the
mixture's rates), packed or padded, converted to model features, and batched. Every step is a
Grain dataset, so the iterator's state is a few integers and restoring it replays the exact
stream. The default window packer (packing.py) and the unpacked stream (`HostSlotsIterDataset`)
work on the global stream, each host taking its slots of every global batch, so their batches
and (converted) states do not depend on the number of hosts; Grain's packers mix and pack each
host's own shard of every task.

Options: the feature converter (`enc_dec`, or `decoder_only` / `prefix_lm`, which pack one
`inputs + targets` sequence per example), staged rates (`StagedBatches`: another mixing from a
given step on), and worker processes (`SlicedBatches` + Grain's `mp_prefetch`: same batches).
Evaluation reads the cache differently (in order, unpacked, with the examples): `eval_data.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any, Mapping

import grain
import numpy as np

from mtjax import errors
from mtjax.data import cache, feature_converters, mixing, packing, records

TOKEN_FEATURES = ("inputs", "targets")
NO_FEATURE = {"add_eos": False}  # a task without `inputs` (language modelling): empty inputs

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
  feature_converter: str = "enc_dec"  # enc_dec | decoder_only | prefix_lm (feature_converters)
  rate_stages: mixing.StagedRates = ()  # other rates from given steps on (`StagedBatches`)
  # Processes preparing batches (Grain's mp_prefetch; 0: a thread). Worker w makes batches
  # w, w + N, ... and Grain interleaves them back in order, so batches do not change. A
  # checkpoint restores only with the same worker count and number of processes.
  worker_count: int = 0
  # The token decoder rows (decoder_only / prefix_lm) start from; None: the tasks' caches say
  # (`start_id`: the tokenizer's BOS for an HF vocabulary, 0 for SeqIO's). enc_dec starts at 0.
  start_id: int | None = None


def require_manifest(cache_dir: str, task: str, split: str) -> dict:
  """The split's cache manifest; a missing one is an error naming close cached names."""
  manifest = cache.read_manifest(cache_dir, task, split)
  if manifest is None:
    import difflib  # pylint: disable=g-import-not-at-top

    close = difflib.get_close_matches(f"{task}/{split}", cache.cached_splits(cache_dir), n=3,
                                      cutoff=0.6)
    hint = f" Cached close matches: {', '.join(close)}." if close else ""
    raise FileNotFoundError(f"no cache for task {task!r} split {split!r} under {cache_dir}; run "
                            f"`mtjax cache`.{hint}")
  return manifest


def task_start_id(cache_dir: str, task: str, split: str) -> int:
  """The start token of a task's decoder rows, as its cache manifest records it (a manifest
  written before mtjax recorded it: 0, which is what those caches' SeqIO vocabularies use)."""
  features = require_manifest(cache_dir, task, split).get("output_features") or {}
  feature = features.get("targets") or next(iter(features.values()), {})
  return int(feature.get("start_id", feature_converters.BOS_ID))


def start_id(cache_dir: str, task_names, split: str) -> int:
  """The one start token of a run's decoder rows. The model reads every task's rows, and it was
  pretrained with one start token (its tokenizer's), so tasks that disagree (different
  tokenizers) are a configuration error, not something to average over."""
  starts = {t: task_start_id(cache_dir, t, split) for t in task_names}
  if len(set(starts.values())) > 1:
    listed = ", ".join(f"{t}: {s}" for t, s in starts.items())
    raise errors.ConfigError(
        f"the mixture's tasks start decoder rows from different tokens ({listed}): their "
        "vocabularies differ", hint="give every task the model's tokenizer (data.tokenizer or "
        "model.hf_checkpoint's)")
  return next(iter(starts.values()), feature_converters.BOS_ID)


def task_source(cache_dir: str, task: str, split: str) -> grain.sources.ArrayRecordDataSource:
  """Full cached examples (serialized records; strings included), by index."""
  manifest = require_manifest(cache_dir, task, split)
  folder = cache.split_dir(cache_dir, task, split)
  return grain.sources.ArrayRecordDataSource(
      [os.path.join(folder, s["file"]) for s in manifest["shards"]])


class TokenSource:
  """Random access to a split's token features through memory-mapped flat arrays.

  Example `i` of feature `f` is `tokens_f[offsets_f[i]:offsets_f[i + 1]]`: a slice, no record
  read or decode. This is what the training stream reads. A targets-only task (SeqIO's LM
  tasks) reads empty `inputs`.
  """

  def __init__(self, cache_dir: str, task: str, split: str, features=TOKEN_FEATURES):
    manifest = require_manifest(cache_dir, task, split)
    folder = cache.split_dir(cache_dir, task, split)
    arrays = manifest.get("token_arrays", {})
    missing = [f for f in features if f not in arrays and not (f == "inputs" and
                                                                "targets" in arrays)]
    if missing:
      raise ValueError(f"cache of {task}/{split} has no token arrays for {missing}; rebuild it "
                       "with `mtjax cache`")
    self._args = (cache_dir, task, split, tuple(features))
    self._empty = tuple(f for f in features if f not in arrays)
    features = tuple(f for f in features if f in arrays)
    self._features = tuple(features)
    # Plain ndarray views of the memory maps: slicing a `np.memmap` costs ~3 us of subclass
    # bookkeeping per call, a view ~0.2 us (the training stream slices every example).
    self._tokens = {f: np.asarray(np.load(os.path.join(folder, arrays[f]["tokens"]),
                                          mmap_mode="r")) for f in features}
    self._offsets = {f: np.load(os.path.join(folder, arrays[f]["offsets"])) for f in features}
    self._len = manifest["num_examples"]

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    out = {}
    for f in self._features:
      start, end = self._offsets[f][i], self._offsets[f][i + 1]
      out[f] = np.asarray(self._tokens[f][start:end])
    for f in self._empty:
      out[f] = np.zeros(0, np.int32)
    return out

  def __repr__(self) -> str:
    return f"TokenSource({self._len} examples, features={self._features})"

  def __reduce__(self):  # worker processes re-open the memory maps instead of copying them
    return TokenSource, self._args


def post_cache(example: dict[str, Any], ops: list[str], output_features: Mapping[str, dict],
               lengths: Mapping[str, int]) -> dict[str, Any]:
  """Numpy versions of SeqIO's post-cache EOS ops, then the final trim to `lengths`."""
  out = dict(example)
  for name in TOKEN_FEATURES:
    out[name] = finish_tokens(np.asarray(out.get(name, _EMPTY)), ops,
                              output_features.get(name, NO_FEATURE), lengths[name])
  return out


_EMPTY = np.zeros(0, np.int32)


def finish_tokens(tokens: np.ndarray, ops: list[str], feature: Mapping[str, Any],
                  length: int) -> np.ndarray:
  """One feature through the post-cache EOS ops (`append_eos_after_trim`, `append_eos`), then
  trimmed to `length`."""
  if feature["add_eos"]:
    for op in ops:
      if op in ("append_eos_after_trim", "append_eos"):
        keep = min(len(tokens), length - 1) if op == "append_eos_after_trim" else len(tokens)
        with_eos = np.empty(keep + 1, tokens.dtype)
        with_eos[:keep] = tokens[:keep]
        with_eos[keep] = feature["eos_id"]
        tokens = with_eos
  return tokens[:length]


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
               lengths: Mapping[str, int], concat: bool = False):
    manifest = require_manifest(cache_dir, task, split)
    folder = cache.split_dir(cache_dir, task, split)
    arrays = manifest.get("token_arrays", {})
    self._task_id = task_id
    self._lengths = {}
    for name in ("targets", "inputs"):
      if name == "inputs" and name not in arrays:  # a targets-only (LM) task
        self._lengths[name] = np.zeros_like(self._lengths["targets"])
        continue
      if name not in arrays:
        raise ValueError(f"cache of {task}/{split} has no token arrays for {name!r}; rebuild it")
      raw = np.diff(np.load(os.path.join(folder, arrays[name]["offsets"])))
      self._lengths[name] = final_lengths(raw, manifest["post_cache_ops"],
                                          manifest["output_features"][name], lengths[name])
    if concat:  # decoder-only: one `inputs + targets` sequence
      self._lengths = {"inputs": np.zeros_like(self._lengths["inputs"]),
                       "targets": self._lengths["inputs"] + self._lengths["targets"]}

  def __len__(self) -> int:
    return len(self._lengths["inputs"])

  @property
  def lengths(self) -> Mapping[str, np.ndarray]:
    return self._lengths

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
  ds = ds.shuffle(seed=(options.seed * 1_000_003 + task_id) % 2**32)  # Grain wants < 2**32
  return ds.repeat() if repeat else ds


def preparer(cache_dir: str, task: str, task_id: int, split: str, lengths: Mapping[str, int],
             concat: bool = False):
  """Raw token example -> EOS-terminated, trimmed int32 features plus per-token `task_ids`
  (concatenated to `inputs + targets` with an `inputs_mask` for decoder-only models)."""
  manifest = require_manifest(cache_dir, task, split)
  ops, features = manifest["post_cache_ops"], manifest["output_features"]
  lengths = dict(lengths)

  finish = [(name, features.get(name, NO_FEATURE), lengths[name]) for name in TOKEN_FEATURES]

  def prepare(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {name: finish_tokens(np.asarray(example.get(name, _EMPTY), np.int32), ops, feature,
                               length)
           for name, feature, length in finish}
    out["task_ids"] = (task_id,) if concat else np.full(len(out["targets"]), task_id, np.int32)
    return feature_converters.concat_for_prefix_lm(out) if concat else out

  return prepare


def task_dataset(cache_dir: str, task: str, task_id: int, split: str,
                 options: PipelineOptions, repeat: bool = True) -> grain.MapDataset:
  """One task's examples: this host's shard, shuffled, repeated, EOS-terminated, trimmed."""
  prepare = preparer(cache_dir, task, task_id, split, options.lengths,
                      feature_converters.concatenates(options.feature_converter))
  ds = _task_stream(TokenSource(cache_dir, task, split), task, task_id, split, options,
                    shard=True, repeat=repeat)
  return ds.map(prepare)


def _mix(make_part, spec: mixing.MixtureSpec, weights=None) -> grain.MapDataset:
  """Mixes `make_part(task_id, task)` over the tasks with positive weight (task ids stay)."""
  weights = spec.weights if weights is None else weights
  chosen = [(i, t, w) for i, (t, w) in enumerate(zip(spec.task_names, weights)) if w > 0]
  if not chosen:
    raise ValueError(f"mixture {spec.name!r}: no task has a positive rate")
  parts = [make_part(i, t) for i, t, _ in chosen]
  if len(parts) == 1:
    return parts[0]
  return grain.MapDataset.select_from_datasets(
      parts, ProportionalSelection(parts, mixing.int_proportions([w for *_, w in chosen])))


class ProportionalSelection(grain.transforms.DatasetSelectionMap):
  """`MapDataset.mix`'s deterministic interleave, on exact integer proportions.

  Grain's own `mix` rounds the proportions to integers with the smallest at 100, which merges
  rates within 1% of it; `mixing.int_proportions` keeps them exact. Like Grain's map it is
  stateless (the iterator's state stays the mixed position) and its length lets every element of
  the shortest part (relative to its share) appear at most once.
  """

  def __init__(self, parts, proportions: tuple[int, ...]):
    self._proportions = tuple(proportions)
    total = sum(self._proportions)
    self._length = min(sys.maxsize,
                       int(min(len(part) * total / p for part, p in zip(parts, proportions))))

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> tuple[int, int]:
    return mixing.select(index, self._proportions)

  def __repr__(self) -> str:
    return f"ProportionalSelection(proportions={self._proportions}, length={self._length})"


def mixed_examples(spec: mixing.MixtureSpec, cache_dir: str, options: PipelineOptions,
                   split: str = "train", weights=None) -> grain.MapDataset:
  """This host's examples of the mixture (its shard of every task), interleaved
  deterministically by the rates: the input of Grain's packers."""
  return _mix(lambda i, t: task_dataset(cache_dir, t, i, split, options), spec, weights)


def global_examples(spec: mixing.MixtureSpec, cache_dir: str, options: PipelineOptions,
                    split: str = "train", weights=None) -> grain.MapDataset:
  """The global (all hosts) examples of the mixture: `mixed_examples` of one host."""
  return mixed_examples(spec, cache_dir, dataclasses.replace(options, shard_index=0, num_shards=1),
                        split, weights)


def mixed_plan(spec: mixing.MixtureSpec, cache_dir: str, options: PipelineOptions,
               split: str = "train", weights=None) -> grain.MapDataset:
  """The global (all hosts) mixed stream as (task, index, lengths): reads no tokens.

  The definition, in Grain's terms; training reads it a window at a time through `WindowPlan`
  (the same elements, vectorised), and the tests hold the two equal."""
  concat = feature_converters.concatenates(options.feature_converter)
  return _mix(lambda i, t: _task_stream(PlanSource(cache_dir, t, i, split, options.lengths, concat),
                                        t, i, split, options, shard=False), spec, weights)


class WindowPlan:
  """`mixed_plan` read a window at a time as arrays, without Grain's per-element bookkeeping.

  Grain's mixed, shuffled, repeated plan costs ~45 us an element through its per-element
  statistics; a packed 16 x 2048 decoder batch of short examples needs ~1,800 elements. This
  computes the same elements with the same rules, vectorised: the proportional interleave
  (`mixing.select` on `mixing.int_proportions`, as `ProportionalSelection`), then per task the
  epoch and Grain's `index_shuffle` permutation of that epoch (`shuffle(...).repeat()`). Equality
  with `mixed_plan` is tested, so a Grain change to either rule fails a test, not a run.
  """

  def __init__(self, spec: mixing.MixtureSpec, cache_dir: str, options: PipelineOptions,
               split: str = "train", weights=None):
    weights = spec.weights if weights is None else weights
    concat = feature_converters.concatenates(options.feature_converter)
    chosen = [(i, t, w) for i, (t, w) in enumerate(zip(spec.task_names, weights)) if w > 0]
    if not chosen:
      raise ValueError(f"mixture {spec.name!r}: no task has a positive rate")
    self._task_ids = np.array([i for i, _, _ in chosen], np.int32)
    self._sources = [PlanSource(cache_dir, t, i, split, options.lengths, concat)
                     for i, t, _ in chosen]
    for (_, t, _), source in zip(chosen, self._sources):
      if len(source) == 0:
        raise ValueError(f"task {t!r} split {split!r} has no examples")
    self._seeds = [(options.seed * 1_000_003 + i) % 2**32 for i, _, _ in chosen]
    self._proportions = (mixing.int_proportions([w for *_, w in chosen])
                         if len(chosen) > 1 else None)

  def _select(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which chosen task, its element number) of mixed positions `k`: `mixing.select`."""
    if self._proportions is None:
      return np.zeros(len(k), np.int64), k
    remaining = sum(self._proportions)
    if remaining >= 2**31:  # `_scaled_floor` multiplies two numbers below the total in int64
      raise OverflowError(f"mixing proportions total {remaining} >= 2**31")
    part, key = np.full(len(k), -1, np.int64), np.zeros(len(k), np.int64)
    cur, cur1 = k, k + 1
    for i, p in enumerate(self._proportions):
      nxt, nxt1 = _scaled_floor(cur, remaining - p, remaining), _scaled_floor(cur1, remaining - p,
                                                                              remaining)
      count = cur1 - nxt1
      hit = (part < 0) & ((cur - nxt) != count)
      part[hit], key[hit] = i, count[hit] - 1
      remaining -= p
      cur, cur1 = nxt, nxt1
    return part, key

  def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
    """Plan entries of mixed positions `[start, stop)`: task_ids, index, inputs_len, targets_len."""
    part, key = self._select(np.arange(start, stop, dtype=np.int64))
    index = np.empty(len(part), np.int64)
    out = {"task_ids": self._task_ids[part], "index": index,
           "inputs_len": np.empty(len(part), np.int64),
           "targets_len": np.empty(len(part), np.int64)}
    for p, source in enumerate(self._sources):
      where = np.flatnonzero(part == p)
      if not len(where):
        continue
      n = len(source)
      epoch, within = np.divmod(key[where], n)
      seeds = (self._seeds[p] + epoch) % 2**32
      index[where] = [grain.experimental.index_shuffle(int(r), max_index=n - 1, seed=int(sd),
                                                       rounds=4)
                      for r, sd in zip(within, seeds)]
      for name in ("inputs", "targets"):
        out[f"{name}_len"][where] = source.lengths[name][index[where]]
    return out


def _scaled_floor(c: np.ndarray, num: int, den: int) -> np.ndarray:
  """`c * num // den` for `num <= den < 2**31` without int64 overflow: with `c = a * den + b`,
  it is `a * num + b * num // den`, and `b * num < 2**62`."""
  a, b = np.divmod(c, den)
  return a * num + (b * num) // den


class HostSlotsIterDataset(grain.IterDataset):
  """This host's slots of every global batch of a global, random-access example stream.

  Global example `g` is slot `g % global_batch` of global batch `g // global_batch`; host `h`
  keeps the slots `[h * per_host, (h + 1) * per_host)`, so its `j`-th example is global example
  `(j // per_host) * global_batch + h * per_host + j % per_host` (one host: the stream itself).
  The global batches thus do not depend on the number of hosts. The state is `next_index` (this
  host's examples handed out) plus the layout that wrote it; a state of another layout restores
  at its batch boundary (`next_index // its per_host` global batches done).
  """

  def __init__(self, parent: grain.MapDataset, *, global_batch: int, shard_index: int,
               num_shards: int):
    super().__init__()
    if global_batch % num_shards:
      raise ValueError(f"global batch {global_batch} is not divisible by {num_shards} hosts")
    self.parent = parent
    self.global_batch, self.shard_index, self.num_shards = global_batch, shard_index, num_shards

  def __iter__(self) -> grain.DatasetIterator:
    return _HostSlotsIterator(self)


class _HostSlotsIterator(grain.DatasetIterator):

  def __init__(self, ds: HostSlotsIterDataset):
    super().__init__()
    self._ds = ds
    self._per_host = ds.global_batch // ds.num_shards
    self._next = 0

  def __next__(self) -> Any:
    ds, p = self._ds, self._per_host
    batch, slot = divmod(self._next, p)
    example = ds.parent[batch * ds.global_batch + ds.shard_index * p + slot]
    self._next += 1
    return example

  def get_state(self) -> dict[str, Any]:
    ds = self._ds
    return {"next_index": self._next, "global_batch": ds.global_batch,
            "num_shards": ds.num_shards, "shard_index": ds.shard_index}

  def set_state(self, state: dict[str, Any]) -> None:
    ds = self._ds
    position = int(state["next_index"])
    if "num_shards" not in state:  # written before this stream was host-count independent
      if ds.num_shards > 1:
        log.warning("data.pack=False: this checkpoint's data state predates host-count "
                    "independent unpacked streams; continuing after %d examples of this "
                    "host's new stream (not the batches the old stream would have given)",
                    position)
      self._next = position
      return
    g, n = int(state["global_batch"]), int(state["num_shards"])
    if (n, int(state["shard_index"])) == (ds.num_shards, ds.shard_index):
      self._next = position
      return
    if g != ds.global_batch:
      raise ValueError(f"unpacked stream state of global batch {g}, this stream has "
                       f"{ds.global_batch}")
    batches, within = divmod(position, g // n)
    if within:
      raise ValueError(f"unpacked stream state is inside global batch {batches}; only batch "
                       "boundaries restore onto another host count")
    self._next = batches * self._per_host


def report_trimming(spec: mixing.MixtureSpec, cache_dir: str, lengths: Mapping[str, int],
                    split: str = "train") -> dict[str, dict[str, int]]:
  """Logs, per task, how many examples the feature lengths will trim; returns the counts."""
  report = {}
  for task in spec.task_names:
    manifest = require_manifest(cache_dir, task, split)
    trimmed = {k: v for k, v in cache.count_trimmed(manifest, lengths).items() if v}
    if trimmed:
      report[task] = trimmed
      log.warning("task %s/%s: %s of %d examples are longer than the feature length %s and will "
                  "be trimmed", task, split, trimmed, manifest["num_examples"], dict(lengths))
  return report


def _window_rows(spec, cache_dir, options, split, weights=None,
                 batch_slice: slice | None = None) -> grain.IterDataset:
  """This host's rows of the host-count-independent global packing (packing.py)."""
  concat = feature_converters.concatenates(options.feature_converter)
  sources = [TokenSource(cache_dir, t, split) for t in spec.task_names]
  preparers = [preparer(cache_dir, t, i, split, options.lengths, concat)
               for i, t in enumerate(spec.task_names)]

  def fetch(task_id: int, index: int) -> dict[str, np.ndarray]:
    return preparers[task_id](sources[task_id][index])

  return packing.WindowPackIterDataset(
      WindowPlan(spec, cache_dir, options, split, weights), fetch,
      feature_converters.model_lengths(options.feature_converter, options.lengths),
      global_batch=options.batch_size * options.num_shards, shard_index=options.shard_index,
      num_shards=options.num_shards, window=options.packing_bins or 4096, seed=options.seed,
      batch_slice=batch_slice)


def train_batches(spec: mixing.MixtureSpec, cache_dir: str, options: PipelineOptions,
                  split: str = "train") -> grain.IterDataset:
  """This host's batches of model features (a checkpointable iterator).

  With the `window` packer or unpacked (pack=False) the global batches do not depend on the
  number of hosts; with Grain's packers each host mixes and packs its own shard of every task.
  With `rate_stages`, the stream switches rates at each stage's start step (`StagedBatches`).
  """
  feature_converters.check_converter(options.feature_converter)
  single = dataclasses.replace(options, prefetch=0, worker_count=0, rate_stages=())
  if options.rate_stages:
    stages = stage_weights(spec, options.rate_stages)

    def make(k: int, batch_slice: slice | None) -> grain.IterDataset:
      # Stage k > 0 shuffles with its own seed, so it does not replay stage 0's order.
      stage_options = dataclasses.replace(single, seed=options.seed + 7_919 * k)
      return _batches(spec, cache_dir, stage_options, split, stages[k][1], batch_slice)

    ds = StagedBatches(make, [start for start, _ in stages])
  elif options.worker_count > 0:
    ds = SlicedBatches(lambda sl: _batches(spec, cache_dir, single, split, batch_slice=sl))
  else:
    return _prefetch(_batches(spec, cache_dir, options, split), options)
  if options.worker_count > 0:
    if options.pack and options.packer != "window":
      raise ValueError("data.worker_count > 0 needs the window packer or pack=False (Grain's "
                       "packers cannot skip to another worker's batches)")
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():  # Grain's mp_prefetch reads absl flags; we use none
      flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.worker_count))
  return _prefetch(ds, options)


def _batches(spec, cache_dir, options: PipelineOptions, split: str, weights=None,
             batch_slice: slice | None = None) -> grain.IterDataset:
  """The batch stream; with `batch_slice`, only those batches (others are skipped unread)."""
  kind = options.feature_converter
  if options.start_id is None and feature_converters.concatenates(kind):
    options = dataclasses.replace(options, start_id=start_id(cache_dir, spec.task_names, split))
  start = feature_converters.BOS_ID if options.start_id is None else options.start_id
  model = feature_converters.model_lengths(kind, options.lengths)
  if options.pack and options.packer == "window":
    return _convert_and_batch(
        _window_rows(spec, cache_dir, options, split, weights, batch_slice), options)
  if batch_slice is not None:
    if options.pack:
      raise ValueError("batch slices need the window packer or pack=False")
    lengths = dict(options.lengths)
    ds = global_examples(spec, cache_dir, options, split, weights).map(
        lambda ex: feature_converters.convert(
            feature_converters.pad_example(ex, kind, lengths), kind, packed=False,
            start_id=start))
    # Global batch b's slots of host h are the global examples' group b * num_shards + h.
    ds = ds.batch(options.batch_size, drop_remainder=True)
    ds = ds[options.shard_index::options.num_shards][batch_slice]
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if not options.pack:
    ds = HostSlotsIterDataset(global_examples(spec, cache_dir, options, split, weights),
                              global_batch=options.batch_size * options.num_shards,
                              shard_index=options.shard_index, num_shards=options.num_shards)
    lengths = dict(options.lengths)
    return _convert_and_batch(
        ds.map(lambda ex: feature_converters.pad_example(ex, kind, lengths)), options)
  # Grain's packers: each host mixes and packs its own shard of every task.
  packers = {"first_fit": grain.experimental.FirstFitPackIterDataset,
             "best_fit": grain.experimental.BestFitPackIterDataset}
  if options.packer not in packers:
    raise ValueError(f"data.packer must be one of {sorted(packers) + ['window']}, "
                     f"got {options.packer!r}")
  ds = mixed_examples(spec, cache_dir, options, split, weights).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  aligned = ("task_ids", "inputs_mask") if feature_converters.concatenates(kind) else \
      ("task_ids",)
  length_struct = {k: v for k, v in model.items() if v > 0}
  length_struct.update({k: model["targets"] for k in aligned})
  ds = packers[options.packer](
      ds,
      length_struct=length_struct,
      num_packing_bins=options.packing_bins or options.batch_size,
      seed=options.seed,
      shuffle_bins=True,
  )
  return _convert_and_batch(ds, options)


def _convert_and_batch(ds: grain.IterDataset, options: PipelineOptions) -> grain.IterDataset:
  packed, kind = options.pack, options.feature_converter
  start = feature_converters.BOS_ID if options.start_id is None else options.start_id
  ds = ds.map(lambda ex: feature_converters.convert(ex, kind, packed=packed, start_id=start))
  return ds.batch(options.batch_size, drop_remainder=True)


def _prefetch(ds: grain.IterDataset, options: PipelineOptions) -> grain.IterDataset:
  if options.prefetch > 0:
    # Checkpointable: the saved state is that of the last batch handed out, not produced.
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=options.prefetch)
  return ds


def stage_weights(spec: mixing.MixtureSpec, rate_stages) -> list[tuple[int, tuple[float, ...]]]:
  """[(start_step, normalised weights in spec order)], starting with the spec's own at step 0."""
  stages = [(0, spec.weights)]
  last = 0
  for start, rates in rate_stages:
    start = int(start)
    if start < last or (start == last and len(stages) > 1):
      raise ValueError(f"rate_stages must have increasing start steps, got {start} after {last}")
    unknown = sorted(set(rates) - set(spec.task_names))
    if unknown:
      import difflib  # pylint: disable=g-import-not-at-top

      hints = {u: difflib.get_close_matches(u, spec.task_names, n=1) for u in unknown}
      raise ValueError(f"rate_stages at step {start}: tasks {unknown} are not in mixture "
                       f"{spec.name!r} (close: {hints})")
    raw = [float(rates.get(t, 0.0)) for t in spec.task_names]
    if min(raw) < 0 or sum(raw) <= 0:
      raise ValueError(f"rate_stages at step {start}: rates must be >= 0 with a positive sum")
    weights = tuple(r / sum(raw) for r in raw)
    if start == 0:
      stages[0] = (0, weights)
    else:
      stages.append((start, weights))
    last = start
  return stages


class SlicedBatches(grain.IterDataset):
  """A batch stream that Grain's `mp_prefetch` can split among workers by batch.

  Grain hands worker w the slice `w::N` through `set_slice`; `make(slice)` builds a stream of
  exactly those batches (skipping the others without reading them), so interleaving the
  workers' outputs gives back the unsliced stream.
  """

  def __init__(self, make):
    super().__init__()
    self.make, self.batch_slice = make, None

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    if sequential_slice:
      raise ValueError("SlicedBatches supports interleaved slices only")
    self.batch_slice = sl

  def __iter__(self) -> grain.DatasetIterator:
    return iter(self.make(self.batch_slice))


class StagedBatches(grain.IterDataset):
  """Batches from stage k's stream for steps in `[starts[k], starts[k + 1])`.

  Steps are batches handed out by this host (= global steps). Each stage is its own
  deterministic stream, started fresh at its start step; the state is (stage, step, the stage
  stream's state), so restoring is O(1) on either side of a boundary. Under `mp_prefetch`,
  worker w of N makes steps w, w + N, ...: of each stage, the matching slice of its batches.
  """

  def __init__(self, make_stage, starts: list[int]):
    super().__init__()
    self.make_stage, self.starts = make_stage, list(starts)
    self.worker, self.num_workers = 0, 1

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    if sequential_slice:
      raise ValueError("StagedBatches supports interleaved slices only")
    self.worker, self.num_workers = sl.start or 0, sl.step or 1

  def stage_stream(self, k: int) -> grain.IterDataset:
    n = self.num_workers
    sl = None if n == 1 else slice((self.worker - self.starts[k]) % n, None, n)
    return self.make_stage(k, sl)

  def __iter__(self) -> grain.DatasetIterator:
    return _StagedIterator(self)


class _StagedIterator(grain.DatasetIterator):

  def __init__(self, ds: StagedBatches):
    super().__init__()
    self._ds = ds
    self._step = ds.worker
    self._stage = self._stage_of(self._step)
    self._it = iter(ds.stage_stream(self._stage))

  def _stage_of(self, step: int) -> int:
    return max(k for k, start in enumerate(self._ds.starts) if start <= step)

  def __next__(self):
    stage = self._stage_of(self._step)
    if stage != self._stage:
      self._stage, self._it = stage, iter(self._ds.stage_stream(stage))
    batch = next(self._it)
    self._step += self._ds.num_workers
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"stage": self._stage, "step": self._step, "inner": self._it.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._stage, self._step = int(state["stage"]), int(state["step"])
    self._it = iter(self._ds.stage_stream(self._stage))
    self._it.set_state(state["inner"])


def read_examples(cache_dir: str, task: str, split: str, limit: int | None = None) -> list[dict]:
  """All (or the first `limit`) cached examples of a split, in cache order (for evaluation)."""
  source = task_source(cache_dir, task, split)
  n = len(source) if limit is None else min(limit, len(source))
  return [records.decode(source[i]) for i in range(n)]
