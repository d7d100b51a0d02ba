"""EleutherAI's lm-evaluation-harness on mtjax models: `mtjax lm-eval` and `eval.lm_eval_*`.

`pip install 'mtjax[lmeval]'`. Nothing of `lm_eval` is imported until a harness runs (this
module imports it inside functions only).

`harness_lm(engine)` is an `lm_eval.api.model.TemplateLM` over an `Engine` (an
`infer.InferenceModel` on its mesh); `evaluate` hands it to `lm_eval.simple_evaluate`. The three
request types, as lm-eval defines them:
- `loglikelihood(context, continuation)` -> (summed log-probability of the continuation's
  tokens, whether each is the argmax given what precedes it). TemplateLM splits the pair as lm-eval
  does: trailing spaces of the context move to the continuation; decoders encode `context +
  continuation` and take the continuation's tokens as what follows the context's; seq2seq (T5)
  encodes the context (encoder input, EOS added when the model's inputs end in EOS) and the
  continuation (decoder targets, no EOS) separately; an empty context is the prefix token.
  Decoder rows start with the model's start token (its tokenizer's BOS, what training started
  rows with: `InferenceModel.start_id`), so for a tokenizer that adds a BOS the rows are exactly
  the `hf` backend's; longer than `max_length + 1` tokens they lose tokens on the left, as there.
  A prefix-LM run (`data.feature_converter=prefix_lm`) reads the context bidirectionally, as it
  was trained to read its inputs.
- `loglikelihood_rolling(text)` (perplexity): the text's tokens (no special tokens) in lm-eval's
  windows (`get_rolling_token_windows` + `make_disjoint_window`, context 1, `max_length`
  tokens, the first conditioned on the prefix token), each scored as a loglikelihood pair, and
  summed per text.
- `generate_until(context, gen_kwargs)`: greedy (`do_sample` with a temperature: mtjax's sampler)
  up to `max_gen_toks` tokens (lm-eval's default 256) or EOS, then cut before the first `until`
  string; decoder prompts keep their last `max_length - max_gen_toks` tokens.

Batches have fixed shapes: requests are grouped by power-of-two length buckets (decoders: the row
length, capped at `max_length`; seq2seq: encoder x decoder lengths), sorted longest first inside a
bucket, and cut into batches of exactly `batch_size` rows (padded with dummy rows), so the number
of compiled programs is bounded by the number of buckets (`Engine.shapes` records them); results
come back in request order. Loglikelihood requests that share their context (a multiple-choice
question's choices) run the context once (`mtjax.eval.prefix_sharing`, its own length buckets). Scores are `mtjax.eval.scoring`'s (`FEATURES` rows, `score_batch`),
generations `mtjax.eval.generate`'s.

Multi-host: the harness runs on process 0 only (lm-eval's own multi-rank path needs torch). When
the model's mesh spans several processes (training's), every batch process 0 runs is first
broadcast through the coordinator's key-value store (`distributed.broadcast_bytes`) and the other
processes run the same computation on it (`Engine.follow`) until process 0 sends its results.
A mesh of one process's devices (`mtjax lm-eval` loads onto local devices) needs no followers.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtjax import errors, fs
from mtjax.eval import batching, generate, infer, prefix_sharing, scoring
from mtjax.parallel import distributed
from mtjax.parallel import rules as rules_lib

log = logging.getLogger(__name__)

MIN_BUCKET = 16  # shortest padded length: tiny requests share one program
MAX_GEN_TOKS = 256  # lm-eval's default when a task names none (its `hf` backend's)
CHANNEL = "lm_eval"  # broadcast name of process 0's batches
INSTALL_HINT = "pip install 'mtjax[lmeval]' (lm-eval 0.4.13 or later 0.4.x)"


def bucket(n: int, cap: int | None = None) -> int:
  """The padded length of `n` tokens: the next power of two (at least MIN_BUCKET), at most `cap`
  (which `n` must not exceed)."""
  size = max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length())
  return size if cap is None else max(min(size, cap), n)


def default_max_length(model: infer.InferenceModel) -> int:
  """A model's context length: a Hugging Face dir's config (`n_positions`,
  `max_position_embeddings` or `n_ctx`, as lm-eval's `hf` backend reads it); otherwise what the
  run trained on: inputs + targets tokens for decoders, the inputs length (encoder) for T5."""
  config = fs.join(model.source, "config.json") if model.source else ""
  if config and not model.run_dir and fs.exists(config):
    raw = fs.read_json(config) or {}
    raw = raw.get("text_config") or raw
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
      if isinstance(raw.get(key), int) and raw[key] > 0:
        return int(raw[key])
  if model.family == "enc_dec":
    return int(model.lengths["inputs"])
  return int(model.lengths["inputs"] + model.lengths["targets"])


class Engine:
  """Fixed-shape batches of one model: scoring (token pairs) and generation (prompts)."""

  def __init__(self, model: infer.InferenceModel, *, batch_size: int = 32, max_length: int = 0,
               seed: int = 0):
    self.model = model
    self.backend = "seq2seq" if model.family == "enc_dec" else "causal"
    self.max_length = int(max_length or default_max_length(model))
    # Rows per batch: a multiple of the mesh's data parallelism (batching's rule).
    self.batch_size = batching.batch_size_for(batch_size, batch_size, model.mesh)
    self.seed = seed
    self.shapes: set[tuple] = set()  # (op, feature shapes, static options) of every batch run
    self._batches = 0
    self._sharding = NamedSharding(model.mesh, rules_lib.logical_to_spec(("batch",), model.rules))
    here = jax.process_index()
    self.multihost = jax.process_count() > 1 and any(
        d.process_index != here for d in model.mesh.devices.flat)
    self.leader = here == 0

  # --- tokens ---------------------------------------------------------------------------------

  @property
  def prefix_id(self) -> int:
    """What an empty context (and the first rolling window) is conditioned on: a decoder's start
    token; for T5, the encoding of "" (EOS)."""
    return int(self.model.start_id if self.backend == "causal" else self.model.eos_id)

  @property
  def eos_id(self) -> int:
    return int(self.model.eos_id)

  def encode(self, text: str, special: bool = True) -> list[int]:
    """`text`'s ids; `special`: as a context is encoded (decoders: the start token first;
    seq2seq: EOS last when the model's inputs end in EOS), as an HF tokenizer's
    `add_special_tokens=True` does for Llama / T5."""
    vocab = self.model.vocab
    ids = [int(t) for t in vocab.encode(text)]
    if getattr(vocab, "add_bos", False) and ids and ids[0] == vocab.bos_id:
      ids = ids[1:]  # a `with_bos()` vocabulary: the start token below is the one BOS
    if not special:
      return ids
    if self.backend == "causal":
      return [int(self.model.start_id)] + ids
    return ids + [self.eos_id] if self.model.inputs_eos else ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of generated ids, up to the first EOS."""
    ids = [int(t) for t in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.model.vocab.decode(ids)

  # --- scoring --------------------------------------------------------------------------------

  def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
            ) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each (context tokens, continuation tokens) pair, in order.
    Decoders: the context starts with the start token (`encode`); the row `context +
    continuation` keeps its last `max_length + 1` tokens. Seq2seq: the context is the encoder
    input (its last `max_length` tokens), the continuation the decoder's targets."""
    rows, keys, sizes = [], [], []
    for context, continuation in pairs:
      context, continuation = [int(t) for t in context], [int(t) for t in continuation]
      if not continuation:
        raise errors.DataError("lm-eval asked for the log-likelihood of an empty continuation")
      if self.backend == "causal":
        context = context or [self.prefix_id]  # (TemplateLM already does this for "")
        if len(continuation) > self.max_length:
          raise errors.DataError(
              f"a continuation of {len(continuation)} tokens is longer than max_length "
              f"{self.max_length}", hint="raise --max_length (eval.lm_eval_max_length)")
        seq = (context + continuation)[-(self.max_length + 1):]
        rows.append((seq, len(continuation)))
        sizes.append(len(seq) - 1)
        keys.append(bucket(len(seq) - 1, self.max_length))
      else:
        encoder = (context or [self.prefix_id])[-self.max_length:]
        rows.append((encoder, continuation))
        sizes.append(len(encoder) + len(continuation))
        keys.append((bucket(len(encoder), self.max_length), bucket(len(continuation))))
    shared = self._score_shared(rows)
    if shared is not None:
      return shared
    out_sum = np.zeros(len(rows), np.float64)
    out_greedy = np.zeros(len(rows), bool)
    dummy = (([self.prefix_id] * 2, 1) if self.backend == "causal"
             else ([self.prefix_id], [self.eos_id]))
    for key, chunk in self._chunks(keys, sizes):
      batch_rows = [rows[i] for i in chunk]
      batch_rows += [dummy] * (self.batch_size - len(batch_rows))
      out = self._run("score", self._score_features(batch_rows, key))
      out_sum[chunk] = out["sum"][:len(chunk)]
      out_greedy[chunk] = out["greedy"][:len(chunk)]
    return [(float(s), bool(g)) for s, g in zip(out_sum, out_greedy)]

  def _score_shared(self, rows) -> list[tuple[float, bool]] | None:
    """Requests that share their context (multiple choice) with the context run once
    (`prefix_sharing`); None when no two share one."""
    if self.backend == "causal":  # (row, n): the start token, the context, the continuation
      pairs = [(seq[1:len(seq) - n], seq[len(seq) - n:]) for seq, n in rows]
      starts = [seq[0] for seq, _ in rows]
    else:
      pairs, starts = [(enc, dec) for enc, dec in rows], None
    grouped = prefix_sharing.groups(pairs, starts)
    if len(grouped) == len(pairs) or not prefix_sharing.supported(self.model.graphdef):
      return None
    out = prefix_sharing.empty(len(pairs))
    for features, placement in prefix_sharing.batches(
        pairs, family=self.model.family, batch_size=self.batch_size,
        parallel=batching.parallelism(self.model.mesh), starts=starts, grouped=grouped):
      prefix_sharing.unpack(self._run("score_shared", features), placement, out)
    return [(float(s), bool(g)) for s, g in zip(out["sum"], out["greedy"])]

  def _score_features(self, rows, key) -> dict[str, np.ndarray]:
    """`scoring.FEATURES` rows padded to the bucket: a decoder row's first token is its start
    token and the rest its inputs; seq2seq rows are (encoder, targets) pairs."""
    convert = scoring.FEATURES[self.model.family]
    if self.backend == "causal":
      features = [convert(np.asarray(seq[1:len(seq) - n], np.int32),
                          np.asarray(seq[len(seq) - n:], np.int32),
                          {"inputs": key - n, "targets": n}, start_id=seq[0])
                  for seq, n in rows]
    else:
      width, depth = key
      features = [convert(np.asarray(enc, np.int32), np.asarray(dec, np.int32),
                          {"inputs": width, "targets": depth}) for enc, dec in rows]
    return {k: np.stack([f[k] for f in features]) for k in features[0]}

  def _chunks(self, keys: Sequence[Any], sizes: Sequence[int]):
    """(bucket, request indices) batches: by bucket, longest first inside one, at most
    `batch_size` each."""
    order = sorted(range(len(keys)), key=lambda i: (keys[i], -sizes[i], i))
    groups: dict[Any, list[int]] = {}
    for i in order:
      groups.setdefault(keys[i], []).append(i)
    for key, members in groups.items():
      for start in range(0, len(members), self.batch_size):
        yield key, np.asarray(members[start:start + self.batch_size], np.int64)

  # --- generation -----------------------------------------------------------------------------

  def generate(self, prompts: Sequence[Sequence[int]], max_new: int,
               sampling: Mapping[str, Any] | None = None) -> list[list[int]]:
    """Generated ids of each prompt (decoders: start token first, as `encode`; seq2seq: encoder
    input), up to EOS (excluded) or `max_new` tokens, in order. Greedy, or mtjax's sampler with
    `sampling` (`temperature`, `top_k`, `top_p`). Prompts must fit (`prompt_limit`)."""
    limit = self.prompt_limit(max_new)
    options = dict(method="greedy", max_length=int(max_new), eos_id=self.eos_id)
    if sampling:
      options.update(method="sample", **{k: sampling[k] for k in ("temperature", "top_k", "top_p")
                                         if k in sampling})
    prompts = [[int(t) for t in p][-limit:] or [self.prefix_id] for p in prompts]
    keys = [bucket(len(p), limit) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    for key, chunk in self._chunks(keys, [len(p) for p in prompts]):
      batch_prompts = [prompts[i] for i in chunk]
      batch_prompts += [[self.prefix_id]] * (self.batch_size - len(batch_prompts))
      tokens = np.zeros((len(batch_prompts), key - (self.backend == "causal")), np.int32)
      for row, p in enumerate(batch_prompts):
        body = p[1:] if self.backend == "causal" else p
        tokens[row, :len(body)] = body
      if self.backend == "causal":  # prompt_batch puts a start column before the bodies
        batch = generate.prompt_batch(self.model.family, tokens,
                                      [len(p) - 1 for p in batch_prompts])
        batch["decoder_input_tokens"][:, 0] = [p[0] for p in batch_prompts]
      else:
        batch = generate.prompt_batch("enc_dec", tokens)
      static = {"options": options, "seed": self.seed, "counter": self._batches}
      self._batches += 1
      ids = self._run("generate", batch, static)["ids"]
      for row, i in enumerate(chunk):
        seq = [int(t) for t in ids[row]]
        out[i] = seq[:seq.index(self.eos_id)] if self.eos_id in seq else seq
    return out

  def prompt_limit(self, max_new: int) -> int:
    """Prompt tokens kept: decoders `max_length - max_new` (lm-eval's `hf` rule), T5's encoder
    `max_length`."""
    if self.backend == "seq2seq":
      return self.max_length
    if max_new >= self.max_length:
      raise errors.ConfigError(f"max_gen_toks {max_new} leaves no room for a prompt in "
                               f"max_length {self.max_length}",
                               hint="raise --max_length (eval.lm_eval_max_length)")
    return self.max_length - max_new

  # --- running batches (and following process 0's) ---------------------------------------------

  def _run(self, op: str, features: Mapping[str, np.ndarray], static=None):
    if self.multihost:
      self._send(op, features, static)
    return self._execute(op, features, static)

  def _global(self, value: np.ndarray, sharding) -> jax.Array:
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  @staticmethod
  def _host(x) -> np.ndarray:
    if x.is_fully_addressable:
      return np.asarray(x)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  def _execute(self, op: str, features: Mapping[str, np.ndarray], static) -> dict[str, np.ndarray]:
    m = self.model
    self.shapes.add((op, tuple(sorted((k, np.shape(v)) for k, v in features.items())),
                     json.dumps(static and static.get("options"), sort_keys=True)))
    batch = {k: self._global(v, self._sharding) for k, v in features.items()}
    with jax.set_mesh(m.mesh), nnx.logical_axis_rules(m.rules):
      if op == "score":
        out = scoring.score_batch(m.graphdef, m.params, batch)
        out = {"sum": out["sum"], "greedy": out["greedy"]}
      elif op == "score_shared":
        out = prefix_sharing.run_batch(m.graphdef, m.params, batch)
      elif op == "generate":
        key = jax.random.fold_in(jax.random.key(static["seed"]), static["counter"])
        data = self._global(np.asarray(jax.random.key_data(key)), NamedSharding(m.mesh, P()))
        ids, _ = generate.generate(m.graphdef, m.params, batch, jax.random.wrap_key_data(data),
                                   options=generate.DecodeOptions(**static["options"]))
        out = {"ids": ids}
      else:
        raise ValueError(f"unknown engine operation {op!r}")
      out = {k: self._host(v) for k, v in out.items()}
    if self.multihost:  # every process took part in this batch: it has read its message
      distributed.drop_broadcasts(CHANNEL)
    return out

  def _send(self, op: str, features: Mapping[str, np.ndarray], static) -> None:
    header = json.dumps({"op": op, "static": static}).encode()
    buffer = io.BytesIO()
    if features:
      np.savez_compressed(buffer, **features)  # padded token rows shrink several times
    distributed.broadcast_bytes(CHANNEL, len(header).to_bytes(8, "little") + header
                                + buffer.getvalue())

  def _receive(self):
    data = distributed.broadcast_bytes(CHANNEL, None)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    rest = data[8 + n:]
    features = dict(np.load(io.BytesIO(rest))) if rest else {}
    return header["op"], features, header.get("static")

  def follow(self) -> Any:
    """A process other than 0: runs each batch process 0 broadcasts until it stops; returns what
    process 0 sent with its stop (raises if it failed)."""
    while True:
      op, features, static = self._receive()
      if op == "stop":
        return static
      if op == "error":
        raise RuntimeError(f"lm-eval failed on process 0: {static}")
      self._execute(op, features, static)

  def stop(self, payload=None) -> None:
    if self.multihost:
      self._send("stop", {}, payload)

  def abort(self, message: str) -> None:
    if self.multihost:
      self._send("error", {}, message)


# --- the lm-eval model --------------------------------------------------------------------------

_LM_CLASS = None


def _import_lm_eval():
  try:
    import lm_eval  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.ModuleError(f"lm-evaluation-harness is not installed ({e})",
                             hint=INSTALL_HINT) from None
  return lm_eval


def harness_lm(engine: Engine):
  """An `lm_eval.api.model.TemplateLM` over `engine` (module doc)."""
  global _LM_CLASS
  if _LM_CLASS is None:
    _LM_CLASS = _define_lm_class()
  return _LM_CLASS(engine)


def _define_lm_class():
  """The TemplateLM subclass, defined on first use (lm_eval imported here)."""
  _import_lm_eval()
  from lm_eval import utils as lm_utils  # pylint: disable=g-import-not-at-top
  from lm_eval.api.model import TemplateLM  # pylint: disable=g-import-not-at-top
  from lm_eval.models import utils as model_utils  # pylint: disable=g-import-not-at-top

  class MtjaxLM(TemplateLM):
    """lm-eval's model interface over an mtjax `Engine`."""

    def __init__(self, engine: Engine):
      super().__init__()
      self.engine = engine
      self.backend = engine.backend

    @property
    def eot_token_id(self) -> int:
      return self.engine.eos_id

    @property
    def prefix_token_id(self) -> int:
      return self.engine.prefix_id

    @property
    def max_length(self) -> int:
      return self.engine.max_length

    @property
    def max_gen_toks(self) -> int:
      return MAX_GEN_TOKS

    @property
    def tokenizer_name(self) -> str:
      return str(getattr(self.engine.model.vocab, "source", "") or self.engine.model.source)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs):
      del kwargs
      return self.engine.encode(string, special=add_special_tokens is not False)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
      del skip_special_tokens
      return self.engine.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
      del disable_tqdm, kwargs
      answers = self.engine.score([(context, continuation)
                                   for _, context, continuation in requests])
      for (key, _, _), answer in zip(requests, answers):
        if key is not None:
          self.cache_hook.add_partial("loglikelihood", key, answer)
      return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
      del disable_tqdm
      windows, owners = [], []
      for i, (text,) in enumerate(r.args for r in requests):
        tokens = self.tok_encode(text, add_special_tokens=False)
        for window in lm_utils.get_rolling_token_windows(
            token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
            context_len=1):
          windows.append(lm_utils.make_disjoint_window(window))
          owners.append(i)
      totals = [0.0] * len(requests)
      for owner, (logprob, _) in zip(owners, self.engine.score(windows)):
        totals[owner] += logprob
      for request, total in zip(requests, totals):
        self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
      return totals

    def generate_until(self, requests, disable_tqdm: bool = False):
      del disable_tqdm
      groups: dict[str, list[int]] = {}
      for i, request in enumerate(requests):
        groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
      out = [""] * len(requests)
      for members in groups.values():
        kwargs = model_utils.normalize_gen_kwargs(requests[members[0]].args[1], MAX_GEN_TOKS)
        until = model_utils.handle_stop_sequences(kwargs.pop("until", None), eos=None)
        max_new = int(kwargs.pop("max_gen_toks"))
        sampling = None
        if kwargs.get("do_sample") and float(kwargs.get("temperature") or 0.0) > 0.0:
          sampling = {"temperature": float(kwargs["temperature"]),
                      "top_k": int(kwargs.get("top_k") or 0),
                      "top_p": float(kwargs.get("top_p") or 1.0)}
        prompts = [self.tok_encode(requests[i].args[0]) for i in members]
        generated = self.engine.generate(prompts, max_new, sampling)
        for i, ids in zip(members, generated):
          text = model_utils.postprocess_generated_text(self.tok_decode(ids), until, None)
          out[i] = text
          self.cache_hook.add_partial("generate_until", requests[i].args, text)
      return out

  return MtjaxLM


# --- running the harness --------------------------------------------------------------------------

def task_manager(include_path: str = ""):
  """lm-eval's TaskManager: `include_path`'s YAML tasks only (lm-eval's ~14,700 built-in tasks
  are not indexed then), else the built-in ones."""
  _import_lm_eval()
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top

  if include_path and not fs.isdir(include_path):
    raise errors.MissingError(f"--include_path {include_path} is not a directory")
  return TaskManager(include_path=include_path or None, include_defaults=not include_path)


def evaluate(model: infer.InferenceModel, tasks: Sequence[str], *, num_fewshot: int | None = None,
             limit: float | None = None, include_path: str = "", batch_size: int = 32,
             max_length: int = 0, seed: int = 0, engine: Engine | None = None
             ) -> dict[str, Any] | None:
  """`lm_eval.simple_evaluate` of `tasks` on `model` (no bootstrap standard errors, samples
  logged). Returns lm-eval's results dict on process 0; on a follower, what process 0 broadcast
  (`results`, `n-samples`, `group_subtasks`); None on other processes of a one-process mesh."""
  engine = engine or Engine(model, batch_size=batch_size, max_length=max_length, seed=seed)
  if not engine.leader:
    return engine.follow() if engine.multihost else None
  try:
    lm_eval = _import_lm_eval()
    manager = task_manager(include_path)
    tasks = [t.strip() for t in tasks if t.strip()]
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
      where = (f"in {include_path} (lm-eval's built-in tasks are not read with --include_path)"
               if include_path else "among lm-eval's tasks")
      raise errors.ConfigError(f"lm-eval task(s) {unknown or tasks} not found {where}",
                               hint="`lm-eval ls tasks` lists lm-eval's own; your YAML files go "
                                    "in a folder given with --include_path")
    out = lm_eval.simple_evaluate(
        model=harness_lm(engine), tasks=tasks, num_fewshot=num_fewshot,
        limit=limit or None, bootstrap_iters=0, log_samples=True, task_manager=manager)
  except BaseException as e:
    engine.abort(f"{type(e).__name__}: {e}")
    raise
  log.info("lm-eval on %s: %s in %d batch shapes", model.source, ", ".join(tasks),
           len(engine.shapes))
  engine.stop(json.loads(json.dumps(
      {k: out.get(k) for k in ("results", "n-samples", "group_subtasks")}, default=str)))
  return out


# --- results ------------------------------------------------------------------------------------

def _metric_name(key: str) -> str:
  """lm-eval's `metric,filter` key -> `metric` (filter "none") or `metric/filter`."""
  metric, _, kind = key.partition(",")
  return metric if kind in ("", "none") else f"{metric}/{kind}"


def rows(out: Mapping[str, Any] | None) -> list[dict]:
  """One row per task (and group) as mtjax's evaluation reports them: `task`, `metrics`
  (numbers only, as lm-eval reports them: accuracies in 0-1), `num_examples`, `split_examples`."""
  if not out:
    return []
  counts = out.get("n-samples") or {}
  found = []
  for task, values in (out.get("results") or {}).items():
    metrics = {}
    for key, value in values.items():
      if "_stderr" in key or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      if key in ("sample_len", "sample_count"):
        continue
      metrics[_metric_name(key)] = float(value)
    row = {"task": task, "metrics": metrics}
    if task in counts:
      row["num_examples"] = int(counts[task].get("effective", 0))
      row["split_examples"] = int(counts[task].get("original", 0))
    found.append(row)
  return found


def flat_metrics(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """`lm_eval/<task>/<metric>`, and `lm_eval/average/<metric>` (unweighted) for a metric that
  several tasks report (a group's own row counts as one task); what metrics rows, trackers and
  `train.best_metric` see."""
  row, pooled = {}, {}
  for r in results:
    for metric, value in r["metrics"].items():
      row[f"lm_eval/{r['task']}/{metric}"] = value
      if math.isfinite(value):
        pooled.setdefault(metric, []).append(value)
  row.update({f"lm_eval/average/{k}": float(np.mean(v)) for k, v in pooled.items() if len(v) > 1})
  return row


def format_table(out: Mapping[str, Any]) -> str:
  """lm-eval's own results table (and its groups table)."""
  from lm_eval.utils import make_table  # pylint: disable=g-import-not-at-top

  table = make_table(out)
  if out.get("groups"):
    table += "\n" + make_table(out, "groups")
  return table


def write(out: Mapping[str, Any], output_dir: str, name: str) -> str:
  """`<output_dir>/lm_eval/<name>.json` (lm-eval's results, configs, versions, n-shot, ...;
  without the samples) and `<name>.samples.jsonl` (each request's document, arguments,
  responses and metrics, one line per sample, with its `task`); returns the JSON's path."""
  from lm_eval.utils import handle_non_serializable  # pylint: disable=g-import-not-at-top

  folder = fs.join(output_dir, "lm_eval")
  fs.makedirs(folder)
  path = fs.join(folder, f"{name}.json")
  body = {k: v for k, v in out.items() if k != "samples"}
  fs.write_text(path, json.dumps(body, indent=1, default=handle_non_serializable,
                                 ensure_ascii=False))
  lines = [json.dumps({"task": task, **sample}, default=handle_non_serializable,
                      ensure_ascii=False)
           for task, samples in (out.get("samples") or {}).items() for sample in samples]
  fs.write_text(fs.join(folder, f"{name}.samples.jsonl"), "".join(x + "\n" for x in lines))
  return path


def report(out: Mapping[str, Any], output_dir: str, name: str, *, step: int | None = None,
           metrics_rows: bool = False) -> str:
  """`write`, then (`metrics_rows`: a run dir) one `eval_metrics.jsonl` row and TensorBoard
  scalars at `step` (`lm_eval/...`, as mtjax's evaluation logs its own), then prints the table.
  Returns the JSON's path."""
  from mtjax.eval import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top

  path = write(out, output_dir, name)
  if metrics_rows and step is not None:
    results = rows(out)
    evaluate_lib.log_results(results, output_dir, step, row=flat_metrics(results))
  print(format_table(out), flush=True)
  return path


# --- entry points -------------------------------------------------------------------------------

def run_checkpoint(checkpoint: str, tasks: Sequence[str], *, num_fewshot: int | None = None,
                   limit: float | None = None, include_path: str = "", output: str = "",
                   batch_size: int = 32, max_length: int = 0, tokenizer: str = "",
                   seed: int = 0) -> dict[str, Any] | None:
  """`mtjax lm-eval`: a run dir (latest step) / step dir / model dir / HF dir, loaded as
  `mtjax infer` loads it (`infer.load`, local devices; a per-task soft-prompt table removed, a
  shared prompt kept), evaluated on `tasks`; results in `<output or run dir or .>/lm_eval/
  <step or the dir's name>.json`; for a run, a metrics row at its step. Returns a summary (None
  on processes other than 0)."""
  _import_lm_eval()  # a missing install fails before the model loads
  distributed.initialize()
  model = infer.load(checkpoint, tokenizer=tokenizer)
  if jax.process_index() != 0:
    return None
  name = (str(model.step) if model.step is not None
          else os.path.basename(model.source.rstrip("/")) or "model")
  output_dir = output or model.run_dir or "."
  out = evaluate(model, tasks, num_fewshot=num_fewshot, limit=limit, include_path=include_path,
                 batch_size=batch_size, max_length=max_length, seed=seed)
  path = report(out, output_dir, name, step=model.step,
                metrics_rows=bool(model.run_dir) and model.step is not None)
  return {"output": fs.abspath(path), "checkpoint": model.source, "step": model.step,
          "metrics": flat_metrics(rows(out))}


def training_evaluation(cfg):
  """The `eval.lm_eval_*` evaluation as the training loop calls it
  (`mtjax.train.hooks.PeriodicEvaluation`, composed by `mtjax.recipes.train`): every
  `eval.lm_eval_every` steps and after the final step, the current parameters (a per-task
  soft-prompt table removed, as `mtjax lm-eval` loads the run) on `eval.lm_eval_tasks`; results
  in `<run_dir>/lm_eval/<step>.json`, `eval_metrics.jsonl` and TensorBoard (`lm_eval/...`)."""
  from mtjax.peft import prompts  # pylint: disable=g-import-not-at-top
  from mtjax.train import hooks  # pylint: disable=g-import-not-at-top

  e = cfg.eval
  _import_lm_eval()  # fail at the start of training, not at the first evaluation

  def run(setup, params, step):
    model = infer.from_setup(setup, params)
    if cfg.model.prompt_tasks:
      graphdef, params = prompts.detach(model.graphdef, model.params)
      model = dataclasses.replace(model, graphdef=graphdef, params=params)
    out = evaluate(model, e.lm_eval_tasks,
                   num_fewshot=None if e.lm_eval_num_fewshot < 0 else e.lm_eval_num_fewshot,
                   limit=e.lm_eval_limit or None, include_path=e.lm_eval_include_path,
                   batch_size=e.lm_eval_batch_size, max_length=e.lm_eval_max_length,
                   seed=e.seed)
    step = cfg.train.steps if step is None else step
    if jax.process_index() == 0:
      report(out, cfg.run_dir, str(step), step=step, metrics_rows=True)
    return rows(out)

  return hooks.PeriodicEvaluation(name="lm_eval", every=e.lm_eval_every, at_end=True, run=run,
                                  metrics=flat_metrics)
