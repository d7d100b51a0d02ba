"""`mtjax infer`: predictions (and rank-classification scores) for prompts in a file.

`load(checkpoint)` gives an `InferenceModel`: the weights (a run dir, its `checkpoints/` dir, a
step dir, an mtjax model dir from `mtjax convert`, or a Hugging Face dir), placed on a mesh over
the local devices, with what decoding must share with training: the vocabulary, whether inputs
end in EOS, the decoder start token, the targets' EOS, the lengths and the model family.
`predict(model, texts, ...)` decodes each text (greedy / beam / sampling, as `mtjax eval`) and,
given answer choices, scores every choice as rank classification does.

The vocabulary, in order:
  1. `tokenizer=` (an HF tokenizer dir), for any checkpoint;
  2. a run: its tasks' own. The run's `data.modules` are imported with the run's default
     vocabulary (`vocabularies.for_run`), exactly as training registered them, and the targets
     vocabulary of `task=` (default: the first task of the run's mixture) is used, with its
     features' `add_eos` and (only when `task=` is given) its postprocessor. This is the one rule
     that is right for every run: a task may name its own vocabulary (T5's SentencePiece, SeqIO's
     ByteVocabulary, an HF tokenizer), and the cache manifests record only its ids, not the
     vocabulary itself;
  3. an HF dir's `tokenizer.json`; an mtjax model dir's copy of its source's (`hf/tokenizer/`,
     recorded by `mtjax convert`).
The decoder start token is the vocabulary's (`cache.vocab_start_id`: an HF tokenizer's BOS,
else 0), what the tasks' cache manifests record and training used; T5 always starts from 0.

Everything goes through `mtjax.eval` (`generate`, `scoring`, `batching`), so a prediction is
the one `mtjax eval` makes for the same text: a test holds them equal. Tasks are registered by
`mtjax.data.modules` and a run's soft prompt is read by `mtjax.train.pretrained.load_prompt` (the
checkpoint format is the trainer's) and attached by `mtjax.peft.prompt_setup`, as `mtjax eval`
does. Task-routed adapters (Poly/MHR, MTLoRA) use the adapters of `task=` (its index among the
run's training tasks, as `mtjax eval`; a task not trained, or none given: those of
`model.adapter_default_task`, else an error). Nothing here builds an optimizer or runs the
training loop.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtjax import errors, fs
from mtjax.data import cache, feature_converters
from mtjax.eval import batching, generate, scoring
from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib

log = logging.getLogger(__name__)

DEFAULT_LENGTHS = {"inputs": 512, "targets": 128}  # without a run's config.json


@dataclasses.dataclass
class InferenceModel:
  """A model placed on a mesh, with everything a prediction must share with training."""

  graphdef: Any
  params: Any
  vocab: Any  # SeqIO vocabulary (or `HFVocabulary`): encodes inputs, decodes predictions
  family: str  # enc_dec | decoder_only | prefix_lm (how prompts become model features)
  lengths: dict[str, int]  # {"inputs", "targets"}: inputs are trimmed, targets decoded to it
  start_id: int = feature_converters.BOS_ID  # decoder rows' first token
  inputs_eos: bool = True  # inputs end in EOS (SeqIO's `add_eos` of the inputs feature)
  targets_eos: bool = True  # answer choices are scored with EOS, as targets were trained
  postprocess: Callable[[str], Any] | None = None  # the task's postprocess_fn, if one is named
  mesh: Any = None
  rules: Any = rules_lib.DEFAULT_RULES
  source: str = ""  # what was loaded, for messages
  run_dir: str = ""  # a run's checkpoint: its run directory ("" otherwise)
  step: int | None = None  # a run's checkpoint: the step loaded

  @property
  def eos_id(self) -> int:
    return int(self.vocab.eos_id)


# --- loading -----------------------------------------------------------------------------------

def _kind(path: str) -> str:
  """model | run | hf: what a `--checkpoint` path holds."""
  from mtjax.models import store  # pylint: disable=g-import-not-at-top

  if not fs.isdir(path):
    raise errors.MissingError(f"--checkpoint {path} does not exist")
  if fs.exists(fs.join(path, store.MODEL_FILE)):
    return "model"
  name = os.path.basename(path.rstrip("/"))
  if (fs.isdir(fs.join(path, "checkpoints")) or name == "checkpoints"
      or (name.isdigit() and fs.isdir(fs.join(path, "params")))):
    return "run"
  config = fs.join(path, "config.json")
  if fs.exists(config) and "model_type" in (fs.read_json(config) or {}):
    return "hf"
  raise errors.MissingError(
      f"--checkpoint {path} holds no model: give a run directory written by mtjax train (or "
      "its checkpoints/ or a step's directory), an mtjax model directory (mtjax convert) or a "
      "Hugging Face checkpoint directory (config.json + *.safetensors)")


def _run_dir(path: str) -> str:
  from mtjax.models import store  # pylint: disable=g-import-not-at-top

  return store.locate(path).run_dir


def _run_config(run_dir: str):
  from mtjax.config import schema  # pylint: disable=g-import-not-at-top

  path = fs.join(run_dir, "config.json")
  if not fs.exists(path):
    raise errors.MissingError(f"{path} not found: the run's config names its tasks and lengths")
  return schema.from_dict(fs.read_json(path))


def _family(model_cfg, run_cfg=None) -> str:
  from mtjax.models import registry, t5  # pylint: disable=g-import-not-at-top

  if registry.family(model_cfg) is t5:
    return "enc_dec"
  if run_cfg is not None:
    return run_cfg.data.feature_converter
  return "decoder_only"


def _place(model, mesh, rules):
  """(graphdef, params): every parameter on its sharding from its logical axis names, as the
  trainer creates them (replicated where a name maps to no mesh axis)."""
  graphdef, state = nnx.split(model)

  def put(variable):
    names = rules_lib.axis_names(variable)
    value = variable.get_value()
    spec = (rules_lib.logical_to_spec(names, rules)
            if names is not None and len(names) == np.ndim(value) else P())
    return variable.replace(jax.device_put(value, NamedSharding(mesh, spec)))

  state = jax.tree.map(put, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return graphdef, state.to_pure_dict()


def _import_run_modules(run_cfg) -> None:
  """Registers the run's tasks as training did (its modules, under its default vocabulary)."""
  from mtjax.data import modules, vocabularies  # pylint: disable=g-import-not-at-top

  modules.import_modules(run_cfg.data.modules, vocabularies.for_run(run_cfg),
                         missing_seqio_ok=False, options=modules.run_options(run_cfg.data),
                         hint="run from where the run's task modules import, or give the "
                              "vocabulary with --tokenizer")


def _task_of(run_cfg, task: str):
  """The SeqIO task whose vocabulary and features the run's inputs had."""
  import seqio  # pylint: disable=g-import-not-at-top

  name = task or run_cfg.data.mixture
  try:
    found = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise errors.ConfigError(f"task {name!r} is not registered by the run's data.modules "
                             f"{list(run_cfg.data.modules)}: {e}") from None
  while isinstance(found, seqio.Mixture):  # a mixture: its first task
    found = found.tasks[0]
  return found


def load(checkpoint: str, *, tokenizer: str = "", task: str = "", inputs_length: int = 0,
         targets_length: int = 0, inputs_eos: bool | None = None,
         mesh_shape: tuple[int, int, int] | None = None, devices=None) -> InferenceModel:
  """The model at `checkpoint` with its vocabulary and training's conventions (module doc).

  `inputs_length` / `targets_length` (0: the run's `data.*_length`, else 512 / 128);
  `inputs_eos`: inputs end in EOS (None: as the run's task's inputs feature; True without a
  task, as mtjax's file tasks and T5's tasks train; False for a plain pretrained decoder);
  `mesh_shape` (data, fsdp, tensor) over `devices` (default: a run's `mesh`, else every local
  device on the data axis)."""
  from mtjax.data import hf_vocab  # pylint: disable=g-import-not-at-top
  from mtjax.models import hf, store  # pylint: disable=g-import-not-at-top
  from mtjax.parallel import compile_cache  # pylint: disable=g-import-not-at-top

  compile_cache.enable()
  path = fs.abspath(checkpoint)
  kind = _kind(path)
  run_cfg = _run_config(_run_dir(path)) if kind == "run" else None
  lengths = dict(DEFAULT_LENGTHS)
  if run_cfg is not None:
    lengths = {"inputs": run_cfg.data.inputs_length, "targets": run_cfg.data.targets_length}
  lengths["inputs"] = inputs_length or lengths["inputs"]
  lengths["targets"] = targets_length or lengths["targets"]
  if mesh_shape is None:
    mesh_shape = ((run_cfg.mesh.data, run_cfg.mesh.fsdp, run_cfg.mesh.tensor)
                  if run_cfg is not None else (-1, 1, 1))
  devices = jax.local_devices() if devices is None else list(devices)
  mesh = mesh_lib.make_mesh(*mesh_shape, devices=devices)
  rules = rules_lib.DEFAULT_RULES

  # The vocabulary and the features' conventions.
  vocab, task_inputs_eos, targets_eos, postprocess, seqio_task = None, True, True, None, None
  if tokenizer:
    vocab = hf_vocab.HFVocabulary.from_dir(tokenizer)
  elif kind == "run":
    _import_run_modules(run_cfg)
    seqio_task = _task_of(run_cfg, task)
  elif kind == "hf":
    if not hf_vocab.has_tokenizer(path):
      raise errors.MissingError(f"{path} has no tokenizer.json", hint="give one with --tokenizer")
    vocab = hf_vocab.HFVocabulary.from_dir(path)
  else:
    recorded = fs.join(path, "hf", "tokenizer")
    if not hf_vocab.has_tokenizer(recorded):
      raise errors.MissingError(f"model dir {path} records no tokenizer ({recorded})",
                                hint="give the tokenizer with --tokenizer")
    vocab = hf_vocab.HFVocabulary.from_dir(recorded)
  if task and seqio_task is None:
    if run_cfg is None:
      raise errors.ConfigError("--task names a task of a run: give a run directory")
    _import_run_modules(run_cfg)
    seqio_task = _task_of(run_cfg, task)
  if seqio_task is not None:
    features = seqio_task.output_features
    vocab = vocab or features["targets"].vocabulary
    task_inputs_eos = bool(features["inputs"].add_eos) if "inputs" in features else False
    targets_eos = bool(features["targets"].add_eos)
    if task:
      postprocess = functools.partial(seqio_task.postprocess_fn, example={}, is_target=False)

  # The weights, placed on the mesh.
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    if kind == "hf":
      model = hf.load(path, mesh=mesh, rules=rules)
    else:
      model = store.load_any(path)
      if run_cfg is not None and run_cfg.model.prompt_length > 0:
        _attach_prompt(model, path, run_cfg, task)
      if kind == "run":
        _route_task(model, path, task)
    family = _family(model.cfg, run_cfg)
    graphdef, params = _place(model, mesh, rules)
  inputs_eos = task_inputs_eos if inputs_eos is None else bool(inputs_eos)
  run_dir, step = "", None
  if kind == "run":
    where = store.locate(path)
    run_dir, step = where.run_dir, where.step
    step = store.latest_step(where.ckpt_dir) if step is None else step
  return InferenceModel(graphdef=graphdef, params=params, vocab=vocab, family=family,
                        lengths=lengths, start_id=cache.vocab_start_id(vocab),
                        inputs_eos=inputs_eos, targets_eos=targets_eos, postprocess=postprocess,
                        mesh=mesh, rules=rules, source=path, run_dir=run_dir, step=step)


def from_setup(setup, params, *, task: str = "") -> InferenceModel:
  """A built run (`mtjax.train.setup.Setup`, its tasks registered) with `params` (e.g. training's
  current ones, on the run's mesh) as `load` gives a checkpoint of that run: the targets
  vocabulary and features of `task` (default: the first task of the mixture), the run's
  lengths and model family. The parameters are used as they are (soft prompt included)."""
  cfg = setup.cfg
  features = _task_of(cfg, task).output_features
  vocab = features["targets"].vocabulary
  return InferenceModel(
      graphdef=setup.graphdef, params=params, vocab=vocab,
      family=_family(setup.model_cfg, cfg),
      lengths={"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length},
      start_id=cache.vocab_start_id(vocab),
      inputs_eos=bool(features["inputs"].add_eos) if "inputs" in features else False,
      targets_eos=bool(features["targets"].add_eos), mesh=setup.mesh, rules=setup.rules,
      source=cfg.run_dir, run_dir=cfg.run_dir)


def _attach_prompt(model, path: str, run_cfg, task: str) -> None:
  """A soft-prompt run's prompt, as `mtjax eval` uses it: one shared prompt always; with
  `model.prompt_tasks`, the row of `task` (none given, or a task without a row: no prompt)."""
  from mtjax.peft import prompt_setup  # pylint: disable=g-import-not-at-top
  from mtjax.train import pretrained  # pylint: disable=g-import-not-at-top

  table, _ = pretrained.load_prompt(path)
  if not prompt_setup.attach_row(model, table, run_cfg.model.prompt_tasks,
                                 run_cfg.model.prompt_placement, task):
    log.warning("%s: the soft prompt has rows for %s; inferring without one (name a task with "
                "--task to use its row)", path, list(run_cfg.model.prompt_tasks))


def _route_task(model, path: str, task: str) -> None:
  """Task-routed adapters (model.adapter=poly/mhr/mtlora) fixed to `task`'s index among the
  run's training tasks, as `mtjax eval` evaluates that task; a task they have no row for uses
  model.adapter_default_task's, else is an error (`mtjax.peft.adapters.task_index`). Without
  `--task`: the default task, else an error asking for one."""
  from mtjax.models import store  # pylint: disable=g-import-not-at-top
  from mtjax.peft import adapters  # pylint: disable=g-import-not-at-top

  graphdef, params = nnx.split(model)
  if not adapters.task_routed(graphdef, params):
    return
  names = store.run_task_names(store.locate(path).run_dir) or ()
  if not task:
    if adapters.default_task(graphdef, params) is None:
      raise errors.ConfigError(
          f"{path}: its adapters route by task (model.adapter={model.cfg.adapter}) and the run "
          "set no model.adapter_default_task: name the task whose adapters to use",
          hint=f"mtjax infer --task NAME, NAME one of {list(names)}; mtjax lm-eval (no task) "
               "needs a run trained with model.adapter_default_task")
    return
  adapters.select_task_on(model, adapters.task_index(graphdef, params, task, names))


# --- predicting --------------------------------------------------------------------------------

def encode_inputs(model: InferenceModel, text: str) -> np.ndarray:
  """Input tokens as the task's cache had them: encoded, trimmed, EOS after the trim (SeqIO's
  `append_eos_after_trim`) when the inputs feature adds one."""
  ids = [int(t) for t in model.vocab.encode(text)]
  length = model.lengths["inputs"]
  ids = ids[:length - 1] + [model.eos_id] if model.inputs_eos else ids[:length]
  return np.asarray(ids, np.int32)


def _decode_text(model: InferenceModel, ids) -> Any:
  text = model.vocab.decode([int(t) for t in ids])
  return model.postprocess(text) if model.postprocess is not None else text


def predict(model: InferenceModel, texts: Sequence[str], *,
            answer_choices: Sequence[Sequence[str] | None] | None = None,
            decode: generate.DecodeOptions | None = None, batch_size: int = 64, seed: int = 0,
            scoring_mode: str = "sum", generate_text: bool = True) -> list[dict[str, Any]]:
  """One row per text: `inputs`, `prediction` (decoded, postprocessed with a named task) and,
  where `answer_choices[i]` is given, `scores` (`{choice, sum, mean}` per choice: the choice's
  log-likelihood and its per-token mean) and `choice` (the best by `scoring_mode`).

  `decode`'s method options count; its length and EOS are the model's (`targets` length, the
  vocabulary's EOS). Batches are `batch_size` rows (rounded to the mesh's data parallelism),
  sharded over the mesh; sampling uses `fold_in(key(seed), batch index)`, as `mtjax eval`."""
  if scoring_mode not in scoring.MODES:
    raise errors.ConfigError(f"scoring must be one of {scoring.MODES}, got {scoring_mode!r}")
  texts = [str(t) for t in texts]
  rows: list[dict[str, Any]] = [{"inputs": t} for t in texts]
  if not texts:
    return rows
  inputs = [encode_inputs(model, t) for t in texts]
  lengths = model.lengths
  run = functools.partial(batching.map_batches, batch_size=batch_size, mesh=model.mesh,
                          rules=model.rules)
  with jax.set_mesh(model.mesh), nnx.logical_axis_rules(model.rules):
    if generate_text:
      options = dataclasses.replace(decode or generate.DecodeOptions(),
                                    max_length=lengths["targets"], eos_id=model.eos_id)
      tokens = np.stack([feature_converters.pad_to(x, lengths["inputs"]) for x in inputs])
      rng, counter = jax.random.key(seed), iter(range(1 << 30))
      prompt_lengths = [min(len(x), lengths["inputs"]) for x in inputs]
      predicted, _ = run(
          lambda b: generate.generate(model.graphdef, model.params, b,
                                      jax.random.fold_in(rng, next(counter)), options=options),
          generate.prompt_batch(model.family, tokens, prompt_lengths, start_id=model.start_id),
          row_lengths=generate.prompt_row_lengths(model.family, prompt_lengths), name="generate")
      for row, ids in zip(rows, predicted):
        row["prediction"] = _decode_text(model, ids)
    if answer_choices is not None and any(answer_choices):
      _rank(model, rows, inputs, answer_choices, batch_size, scoring_mode)
  return rows


def _rank(model: InferenceModel, rows, inputs, answer_choices, batch_size: int,
          mode: str) -> None:
  """Rank classification (`scoring.choice_pairs` + `rank_answer_choices`, as `mtjax eval`)."""
  if len(answer_choices) != len(rows):
    raise errors.DataError(f"{len(answer_choices)} lists of answer choices for {len(rows)} "
                           "inputs")
  examples = [{"answer_choices": list(c or [])} for c in answer_choices]
  pairs, owners, gold = scoring.choice_pairs(examples, inputs, model.vocab,
                                             add_eos=model.targets_eos,
                                             targets_length=model.lengths["targets"])
  scores = scoring.score_pairs(model.graphdef, model.params, pairs, lengths=model.lengths,
                               family=model.family, batch_size=batch_size, mesh=model.mesh,
                               rules=model.rules, start_id=model.start_id)
  ranked = scoring.rank_answer_choices(scores, owners, gold, mode)
  for i, (row, choices) in enumerate(zip(rows, answer_choices)):
    if not choices:
      continue
    mine = np.flatnonzero(owners == i)
    row["scores"] = [{"choice": str(c), "sum": float(scores["sum"][j]),
                      "mean": float(scores["mean"][j])} for c, j in zip(choices, mine)]
    row["choice"] = str(choices[int(ranked["predicted"][i])])


# --- files -------------------------------------------------------------------------------------

def read_inputs(path: str) -> list[dict[str, Any]]:
  """Records from `.txt` (one prompt a line: `{"inputs": line}`) or `.jsonl` (objects with an
  `inputs` string and optional `answer_choices` list; other fields are passed through)."""
  if not fs.exists(path):
    raise errors.MissingError(f"--input {path} does not exist")
  text = fs.read_text(path)
  if not path.endswith(".jsonl"):
    return [{"inputs": line} for line in text.splitlines() if line.strip()]
  records = []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise errors.DataError(f"{path} line {number}: not JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("inputs"), str):
      raise errors.DataError(f"{path} line {number}: a record needs an \"inputs\" string")
    choices = record.get("answer_choices")
    if choices is not None and (not isinstance(choices, list)
                                or not all(isinstance(c, str) for c in choices)):
      raise errors.DataError(f"{path} line {number}: \"answer_choices\" must be a list of "
                             "strings")
    records.append(record)
  return records


def predict_records(model: InferenceModel, records: Sequence[Mapping[str, Any]],
                    **predict_kwargs) -> list[dict[str, Any]]:
  """`predict` over `read_inputs` records: each record's fields plus `prediction`, and `scores`
  / `choice` where it has answer choices."""
  choices = [r.get("answer_choices") for r in records]
  rows = predict(model, [r["inputs"] for r in records],
                 answer_choices=choices if any(choices) else None, **predict_kwargs)
  return [{**record, **row} for record, row in zip(records, rows)]


def write_rows(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  """JSONL, one row a line (UTF-8 text as it is)."""
  parent = os.path.dirname(fs.abspath(path))
  if parent:
    fs.makedirs(parent)
  fs.write_text(path, "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in rows))


def infer_file(model: InferenceModel, input_path: str, output_path: str,
               **predict_kwargs) -> int:
  """`read_inputs` -> `predict_records` -> `write_rows`; returns the row count."""
  rows = predict_records(model, read_inputs(input_path), **predict_kwargs)
  write_rows(output_path, rows)
  return len(rows)


def _jsonable(x: Mapping[str, Any]):
  return json.loads(json.dumps(x, default=str))
