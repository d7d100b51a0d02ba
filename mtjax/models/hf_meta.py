"""What a Hugging Face export needs beyond weights, recorded next to the weights.

`mtjax export` must hand `transformers` a model dir it can use as it is: `config.json` naming
the special ids the run trained with (else transformers falls back to its class defaults: an
exported Llama 3 gets bos 1 / eos 2, a Qwen2 no eos at all), a `generation_config.json` that
stops at the run's EOS, and the tokenizer. Those facts live in the run's tasks (their
vocabulary), in the source checkpoint (`model.hf_checkpoint`: its generation config, lengths)
and in the tokenizer dir: places that may be gone, or whose tasks are not registered, when
export runs. So the trainer records them when a run starts (`record`), in `<run_dir>/hf/`:

  hf/export.json             what export sets in config.json / generation_config.json, and why
  hf/generation_config.json  the source checkpoint's own, if it has one (unchanged)
  hf/tokenizer/...           the files of the run's HF tokenizer, if it has one

`mtjax convert` writes the same folder into a model dir (`record_source`: the source's own ids
and files). `load(path, model_cfg)` reads it back for any `--checkpoint` export accepts; a run
dir from before this existed is described from its config.json instead (`collect`, as at train
time).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from mtjax import fs
from mtjax.models import families, locations

log = logging.getLogger(__name__)

DIR = "hf"
META = "export.json"
GENERATION = "generation_config.json"
TOKENIZER = "tokenizer"
FORMAT = 1
# The files `AutoTokenizer.from_pretrained` reads, for every tokenizer family mtjax meets
# (tokenizers' JSON, GPT-2-style BPE, SentencePiece `*.model`, chat templates of transformers 5).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "chat_template.json")
TOKENIZER_SUFFIXES = (".model",)  # spiece.model (T5), tokenizer.model (Llama 2, Gemma)
# Source config.json entries that survive a finetune: ids (when the run kept the source's
# vocabulary) and lengths.
SOURCE_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
               "max_position_embeddings", "n_positions")
ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# transformers' own default when a decoder config names no length (LlamaConfig's).
DEFAULT_MAX_POSITIONS = 2048


# ---------------------------------------------------------------------------------- reading


def _read_json(path: str) -> dict | None:
  """A JSON file's dict, or None when it is absent or unreadable: every file here is optional,
  and a missing one must never stop a run."""
  try:
    if not fs.exists(path):
      return None
    value = fs.read_json(path)
  except (OSError, ValueError) as e:
    log.warning("export metadata: cannot read %s (%s); left out", path, e)
    return None
  return value if isinstance(value, dict) else None


def tokenizer_files(directory: str) -> list[str]:
  """Names of the tokenizer files in `directory` (empty when it has none or cannot be listed)."""
  try:
    names = fs.listdir(directory) if directory and fs.isdir(directory) else []
  except OSError as e:
    log.warning("export metadata: cannot list %s (%s); no tokenizer files", directory, e)
    return []
  return sorted(n for n in names if n in TOKENIZER_FILES or n.endswith(TOKENIZER_SUFFIXES))


def _source(hf_dir: str) -> dict:
  """The source checkpoint's ids and lengths (config.json) and its generation config."""
  if not hf_dir:
    return {"path": "", "config": {}, "generation_config": None}
  config = _read_json(fs.join(hf_dir, "config.json")) or {}
  return {"path": hf_dir, "config": {k: config[k] for k in SOURCE_KEYS if k in config},
          "generation_config": _read_json(fs.join(hf_dir, GENERATION))}


def _vocab_name(vocab) -> str:
  """A vocabulary's class name (a recorded one's: `mtjax.data.registration.RecordedVocabulary`)."""
  return getattr(vocab, "recorded_name", None) or type(vocab).__name__


def _vocab_facts(vocab, origin: str) -> dict:
  """What an export needs of a SeqIO vocabulary. An `HFVocabulary` (mtjax.data.hf_vocab) also
  knows the tokenizer's own pad token (its `pad_id` is SeqIO's padding, 0, a real token in
  Llama 3) and the end ids generation stops at (EOS first)."""
  special = getattr(vocab, "special_ids", None)
  pad = special.get("pad") if isinstance(special, dict) else vocab.pad_id
  stops = [i for i in (_int(i) for i in getattr(vocab, "stop_ids", None) or ()) if i is not None]
  from mtjax.data import cache  # pylint: disable=g-import-not-at-top

  return {"name": _vocab_name(vocab), "eos_id": _int(vocab.eos_id), "pad_id": _int(pad),
          "bos_id": _int(getattr(vocab, "bos_id", None)), "stop_ids": stops,
          "start_id": cache.vocab_start_id(vocab), "vocab_size": _int(vocab.vocab_size),
          "from": origin}


def _int(value) -> int | None:
  """An id as an int; None for "none" (SeqIO and tokenizers say None or -1)."""
  try:
    value = int(value)
  except (TypeError, ValueError):
    return None
  return value if value >= 0 else None


def _task_vocabulary(task_names):
  """The targets vocabulary of the run's registered SeqIO tasks (the first task's when they
  differ, with a warning), or None when they cannot be looked up. After a fast start-up
  (`mtjax.data.startup`: registration put off) the start-up record's facts of them, when it has
  them for every task: looking them up would import SeqIO and TensorFlow."""
  found = []
  try:
    from mtjax.data import registration  # pylint: disable=g-import-not-at-top

    recorded = [(name, registration.recorded_vocabulary(name)) for name in task_names]
    if recorded and all(v is not None for _, v in recorded):
      found = recorded
    else:
      registration.ensure_registered()
      import seqio  # pylint: disable=g-import-not-at-top

      for name in task_names:
        feature = seqio.get_mixture_or_task(name).output_features.get("targets")
        if feature is not None:
          found.append((name, feature.vocabulary))
  except Exception as e:  # pylint: disable=broad-except  (no seqio, an unregistered task)
    log.debug("export metadata: task vocabularies unavailable (%s); reading the cache", e)
    return None
  if not found:
    return None
  first_name, first = found[0]
  key = lambda v: (_int(v.eos_id), _int(v.pad_id), _int(getattr(v, "bos_id", None)))
  others = sorted({n for n, v in found if key(v) != key(first)})
  if others:
    log.warning("export metadata: tasks %s have other special ids than %s; the export uses "
                "%s's (eos %s)", others[:5], first_name, first_name, first.eos_id)
  return first


def _manifest_vocabulary(task_names, cache_dir: str) -> dict | None:
  """eos / pad / size of the first task's targets, as its cache manifest recorded them."""
  for name in list(task_names)[:1]:
    manifest = _read_json(fs.join(cache_dir, name, "train", "manifest.json")) or {}
    targets = (manifest.get("output_features") or {}).get("targets")
    if targets:
      return {"name": "", "eos_id": _int(targets.get("eos_id")),
              "pad_id": _int(targets.get("pad_id")), "bos_id": None, "stop_ids": [],
              "start_id": int(targets.get("start_id", 0)),
              "vocab_size": _int(targets.get("vocab_size")), "from": "cache manifest"}
  return None


def _tokenizer_dir(cfg) -> str:
  """The run's default HF tokenizer dir ("" if none), as the run itself chose it."""
  try:
    from mtjax.data import vocabularies  # pylint: disable=g-import-not-at-top

    return vocabularies.tokenizer_dir(cfg)
  except ImportError:  # no HF tokenizer support: only an explicit data.tokenizer counts
    return getattr(cfg.data, "tokenizer", "")


def _tokenizer_from_dir(path: str):
  """The `HFVocabulary` of a tokenizer dir, None if it cannot be built."""
  try:
    from mtjax.data import hf_vocab  # pylint: disable=g-import-not-at-top

    return hf_vocab.HFVocabulary.from_dir(path) if hf_vocab.has_tokenizer(path) else None
  except Exception as e:  # pylint: disable=broad-except  (optional: logged, never fatal)
    log.warning("export metadata: cannot read the tokenizer in %s (%s)", path, e)
    return None


def _tokenizer_contents(vocab, default_dir: str) -> dict[str, tuple[str, str]]:
  """{file name: ("file", path) or ("text", contents)} of the tokenizer that goes with the
  export: the tasks' HF vocabulary's own dir (or its files, for one built from contents), else
  the run's tokenizer dir, unless the tasks use another kind of vocabulary (bytes)."""
  directory = ""
  if vocab is not None and hasattr(vocab, "files"):  # an HFVocabulary
    directory = getattr(vocab, "source", "") or ""
    names = tokenizer_files(directory)
    if not names:  # built from contents (a copy, a pickle): write what it holds
      return {n: ("text", text) for n, text in vocab.files.items() if n in TOKENIZER_FILES}
  elif default_dir and _vocab_name(vocab) != "ByteVocabulary":
    directory = default_dir
    names = tokenizer_files(directory)
  else:
    if default_dir and tokenizer_files(default_dir):
      log.info("export metadata: the tasks use %s, not the tokenizer in %s: its files are not "
               "exported", _vocab_name(vocab), default_dir)
    return {}
  return {n: ("file", fs.join(directory, n)) for n in names}


def _content(item: tuple[str, str]) -> bytes:
  kind, value = item
  return fs.read_bytes(value) if kind == "file" else value.encode("utf-8")


# ---------------------------------------------------------------------------------- settings


def _eos(run_eos: int, stop_ids, source_eos) -> int | list[int]:
  """The run's EOS, or a list of end ids with it first: the tokenizer's (an HFVocabulary's
  `stop_ids`, where mtjax's decoding cuts the text too), or the source's own list when it holds
  the run's EOS (Llama 3 Instruct's `<|eot_id|>`), so chat stops keep working."""
  for ids in (stop_ids or [], source_eos if isinstance(source_eos, list) else []):
    if len(ids) > 1 and run_eos in ids:
      return [run_eos] + [e for e in ids if e != run_eos]
  return run_eos


def settings(family: str, vocab: dict | None, source: dict, lengths: dict | None,
             model_cfg=None) -> tuple[dict, dict]:
  """(config.json entries, generation_config.json entries) for an export.

  Ids come from the run's vocabulary, since they are what the weights learned; the source's ids
  only where the run's vocabulary is unknown (`vocab` None: a converted checkpoint). T5's
  decoder starts at `BOS_ID` (the pad), as mtjax's training and decoding do. A decoder's
  `bos_token_id` is the token mtjax's rows start from (`feature_converters.autoregressive_inputs`
  with the vocabulary's `start_id`: an HF tokenizer's BOS, or Qwen2's `<|endoftext|>`; 0 for
  SeqIO's vocabularies).
  """
  from mtjax.data.feature_converters import BOS_ID  # pylint: disable=g-import-not-at-top

  src = source.get("config") or {}
  config: dict[str, Any] = {}
  if vocab is None:
    ids = {k: src[k] for k in ID_KEYS if k in src}
  else:
    eos = vocab["eos_id"] if vocab["eos_id"] is not None else 1
    pad = vocab["pad_id"] if vocab["pad_id"] is not None else eos
    ids = {"eos_token_id": _eos(eos, vocab.get("stop_ids"), src.get("eos_token_id")),
           "pad_token_id": pad}
    if family == "t5":
      ids["decoder_start_token_id"] = BOS_ID
    else:
      ids["bos_token_id"] = _start_id(vocab)
  config.update(ids)
  if family == "t5":
    if "n_positions" in src:
      config["n_positions"] = src["n_positions"]
  elif _max_positions(src, lengths, model_cfg) is not None:
    config["max_position_embeddings"] = _max_positions(src, lengths, model_cfg)
  generation = dict(ids)
  base = source.get("generation_config") or {}
  if lengths and "max_length" not in base and "max_new_tokens" not in base:
    # transformers stops at 20 tokens otherwise; the run's lengths are what it learned to fill
    # (a decoder row: start token + inputs + targets; T5: decoder start + targets).
    generation["max_length"] = 1 + lengths["targets"] + (
        lengths["inputs"] if family != "t5" else 0)
  return config, generation


def _start_id(vocab: dict) -> int:
  """The token a decoder row starts from (older metadata without `start_id`: its BOS, else 0)."""
  from mtjax.data.feature_converters import BOS_ID  # pylint: disable=g-import-not-at-top

  if vocab.get("start_id") is not None:
    return int(vocab["start_id"])
  return vocab["bos_id"] if vocab.get("bos_id") is not None else BOS_ID


def _max_positions(src: dict, lengths: dict | None, model_cfg) -> int | None:
  """The source's, else what Llama 3 rope scaling was built for, else the run's row length
  (at least transformers' own default); None when nothing is known (a converted checkpoint
  that names none keeps transformers' default)."""
  if src.get("max_position_embeddings"):
    return int(src["max_position_embeddings"])
  scaling = getattr(model_cfg, "rope_llama3_scaling", None)
  if scaling:
    return int(scaling[0] * scaling[3])
  if not lengths:
    return None
  return max(DEFAULT_MAX_POSITIONS, lengths["inputs"] + lengths["targets"])


# ---------------------------------------------------------------------------------- writing


def collect(cfg, task_names, family: str, model_cfg=None, registered: bool = True) -> dict:
  """The export facts of a run (`cfg`: its RunConfig; `task_names`: its mixture's tasks;
  `registered`: they are registered SeqIO tasks, else the cache manifests and the run's tokenizer
  dir say what their vocabulary was)."""
  tok_dir = _tokenizer_dir(cfg)
  vocab_obj = _task_vocabulary(tuple(task_names)) if registered else None
  vocab = _vocab_facts(vocab_obj, "tasks") if vocab_obj is not None else None
  if vocab is None:
    vocab = _manifest_vocabulary(task_names, cfg.data.cache_dir)
    tokenizer = _tokenizer_from_dir(tok_dir) if tok_dir else None
    if tokenizer is not None and (vocab is None or vocab["vocab_size"] == tokenizer.vocab_size):
      # The tasks' tokenizer (same size): it knows BOS, its pad and end ids; the manifest's EOS
      # stays (a task may end its targets with another token, `HFVocabulary.with_eos`).
      eos = vocab["eos_id"] if vocab is not None else None
      vocab_obj, vocab = tokenizer, _vocab_facts(tokenizer, "tokenizer dir")
      if eos is not None:
        vocab["eos_id"] = eos
  if vocab is None:
    log.warning("export metadata: the run's vocabulary is unknown (tasks not registered, no "
                "cache manifest): mtjax's defaults (ByteVocabulary: eos 1, pad 0) are used")
    vocab = {"name": "ByteVocabulary", "eos_id": 1, "pad_id": 0, "bos_id": None, "stop_ids": [],
             "start_id": 0, "vocab_size": None, "from": "default"}
  source = _source(cfg.model.hf_checkpoint)
  contents = _tokenizer_contents(vocab_obj, tok_dir)
  lengths = {"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length}
  config, generation = settings(family, vocab, source, lengths, model_cfg)
  from mtjax.data.feature_converters import BOS_ID  # pylint: disable=g-import-not-at-top

  return {"format": FORMAT, "family": family, "feature_converter": cfg.data.feature_converter,
          # the token every training row (and mtjax's decoding) starts from
          "start_token_id": BOS_ID if family == "t5" else _start_id(vocab), "vocabulary": vocab, "lengths": lengths,
          "source": {"path": source["path"],
                     "generation_config": source["generation_config"] is not None},
          "tokenizer": {"files": sorted(contents)},
          "config": config, "generation": generation,
          "_generation_base": source["generation_config"], "_tokenizer": contents}


def _write(meta: dict, root: str) -> None:
  """Writes `meta` into `<root>/hf/` with copies of the generation config and tokenizer files;
  export.json last, so a folder with it is complete. Rewrites everything (idempotent): a resume
  records the same facts again."""
  out = fs.join(root, DIR)
  fs.makedirs(out)
  if meta["_generation_base"] is not None:
    fs.write_json(fs.join(out, GENERATION), meta["_generation_base"])
  if meta["_tokenizer"]:
    fs.makedirs(fs.join(out, TOKENIZER))
  for name, item in sorted(meta["_tokenizer"].items()):
    data = _content(item)
    with fs.open(fs.join(out, TOKENIZER, name), "wb") as f:
      f.write(data)
  fs.write_json(fs.join(out, META), {k: v for k, v in meta.items() if not k.startswith("_")})


def record(setup, run_dir: str) -> None:
  """Records the run's tokenizer and special-token facts in `run_dir/hf/` (process 0 only).
  `setup`: a `mtjax.train.setup.Setup` (its `cfg`, `spec.task_names` and built `model_cfg`).

  Never fails the run: what cannot be recorded is logged, and `mtjax export` derives it from
  the run's config.json instead."""
  try:
    model_cfg = setup.model_cfg
    _write(collect(setup.cfg, setup.spec.task_names, families.name(model_cfg), model_cfg), run_dir)
  except Exception as e:  # pylint: disable=broad-except  (a convenience for export, see above)
    log.warning("could not record export metadata in %s/%s: %s: %s", run_dir, DIR,
                type(e).__name__, e)


def record_source(hf_dir: str, model_dir: str, family: str) -> None:
  """`mtjax convert`: keeps the source checkpoint's ids, generation config and tokenizer files
  in the model dir, so exporting it again gives them back."""
  source = _source(hf_dir)
  config, generation = settings(family, None, source, None)
  files = tokenizer_files(hf_dir)
  _write({"format": FORMAT, "family": family, "vocabulary": None, "lengths": None,
          "source": {"path": hf_dir, "generation_config": source["generation_config"] is not None},
          "tokenizer": {"files": files}, "config": config, "generation": generation,
          "_generation_base": source["generation_config"],
          "_tokenizer": {n: ("file", fs.join(hf_dir, n)) for n in files}}, model_dir)


# ---------------------------------------------------------------------------------- export


def load(path: str, model_cfg) -> dict | None:
  """The export facts for `mtjax export --checkpoint path` of a model with config `model_cfg`
  (None: nothing known, e.g. a model dir written by an older `mtjax convert`). Keys: those of
  `collect`, with `_generation_base` (the source's generation config, or None) and
  `_tokenizer` (where its files are)."""
  where = locations.locate(path)
  root = where.model_dir or where.run_dir
  folder = fs.join(root, DIR)
  meta = _read_json(fs.join(folder, META))
  if meta is not None:
    meta["_generation_base"] = (_read_json(fs.join(folder, GENERATION))
                                if meta["source"].get("generation_config") else None)
    meta["_tokenizer"] = {n: ("file", fs.join(folder, TOKENIZER, n))
                          for n in (meta.get("tokenizer") or {}).get("files", [])}
    return meta
  if where.model_dir:
    return None
  return _from_run_config(where.run_dir, model_cfg)


def _from_run_config(run_dir: str, model_cfg) -> dict | None:
  """A run dir without `hf/` (recorded before it existed): the same facts from config.json, the
  task list of model_summary.json (or the cached mixture) and the source and tokenizer dirs
  where they still are."""
  raw = _read_json(fs.join(run_dir, "config.json"))
  if raw is None:
    return None
  from mtjax.config import schema  # pylint: disable=g-import-not-at-top

  cfg = schema.from_dict(raw)
  summary = _read_json(fs.join(run_dir, "model_summary.json")) or {}
  tasks = summary.get("tasks")
  if not tasks:
    spec = _read_json(fs.join(cfg.data.cache_dir, "mixtures", f"{cfg.data.mixture}.json")) or {}
    tasks = [t["name"] for t in spec.get("tasks", [])] or [cfg.data.mixture]
  # Export does not import the run's task modules (SeqIO, TensorFlow): the cache manifests say
  # what the tasks' vocabulary was.
  return collect(cfg, tasks, families.name(model_cfg), model_cfg, registered=False)


def generation_config(meta: dict | None, config: dict) -> dict | None:
  """generation_config.json for an export with HF config `config` (None without `meta`:
  transformers derives one from config.json)."""
  if meta is None:
    return None
  generation = {**(meta.get("_generation_base") or {}), **meta.get("generation", {})}
  if config.get("is_encoder_decoder"):
    generation.setdefault("decoder_start_token_id", config.get("decoder_start_token_id", 0))
  generation.pop("transformers_version", None)  # it names the version that wrote it
  return generation


def copy_tokenizer(meta: dict | None, out_dir: str) -> list[str]:
  """Copies the tokenizer files `meta` names into the local dir `out_dir`; their names."""
  if not meta:
    return []
  copied = []
  for name, item in sorted((meta.get("_tokenizer") or {}).items()):
    try:
      data = _content(item)
    except OSError as e:
      log.warning("export: tokenizer file %s is unreadable (%s); left out", item[1], e)
      continue
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(data)
    copied.append(name)
  return copied


