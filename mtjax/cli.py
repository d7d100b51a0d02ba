"""`mtjax <command>`: train, eval, infer, lm-eval, cache, convert, export, ablate, promot, merge,
tasks.

Configuration comes from gin (`--gin_file=... --gin.KEY=VALUE`, T5X style) or a python config
(`--config=configs/x.py --set a.b=VALUE`). Unknown keys are errors that name the key.

A mistake of the user's (`mtjax.errors.UserError`, a storage path that cannot be used, a bad
config) is one `error: ...` line on stderr (plus a `hint: ...` line when there is one) and exit
status 2. Anything else is a bug and keeps its traceback. `--debug` (anywhere on the command
line) or `MTJAX_DEBUG=1` shows the traceback of user errors too. TensorFlow's C++ start-up
logging is hidden (`mtjax.quiet`); `--verbose` (anywhere) or `MTJAX_VERBOSE=1` shows it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from mtjax import errors

USER_ERROR_STATUS = 2  # as argparse uses for bad arguments
_DEBUG = False  # set by main(): --debug or MTJAX_DEBUG=1

COMMANDS = {
    "train": "train (or resume) a run from a config; evaluates every task at the end",
    "eval": "evaluate a checkpoint on each task of a mixture (decoding, scoring, metrics)",
    "infer": "predict (and score answer choices) with a checkpoint for prompts in a file",
    "lm-eval": "run lm-evaluation-harness tasks on a checkpoint (pip install 'mtjax[lmeval]')",
    "cache": "materialise a SeqIO mixture or task into the ArrayRecord cache",
    "convert": "load a local Hugging Face checkpoint into an mtjax model directory",
    "export": "write an mtjax model or run checkpoint as a Hugging Face checkpoint",
    "ablate": "run a sweep of mixture variants x seeds (resumable) and tabulate the results",
    "promot": "ProMoT: prompt tuning, then model tuning with the prompt frozen; report vs baselines",
    "merge": "merge finetuned models into their base (task arithmetic, TIES, DARE, LiNeS, ...)",
    "tasks": "list registered collections, mixtures and tasks; show a task's rendered examples",
}

# Options every command takes, anywhere on the command line (read by `main`, not by a command's
# parser; the documentation's CLI reference lists them from here).
GLOBAL_OPTIONS = {
    "--debug": "show the traceback of a user error (also MTJAX_DEBUG=1)",
    "--verbose": "show TensorFlow's C++ start-up logging, hidden by default (also "
                 "MTJAX_VERBOSE=1)",
    "--progress=MODE": "progress of training, caching and evaluation on stderr: bar (redrawn "
                       "in place), lines (a plain line every --progress_every seconds, for "
                       "logs), none, or auto (the default: bar on a terminal, lines otherwise); "
                       "also MTJAX_PROGRESS=MODE",
    "--progress_every=SECONDS": "seconds between two progress lines in lines mode (default 30; "
                                "also MTJAX_PROGRESS_EVERY)",
}
_VALUED_GLOBALS = {"--progress": "MTJAX_PROGRESS", "--progress_every": "MTJAX_PROGRESS_EVERY"}

CONFIG_HELP = """configuration (exactly one front end):
  --gin_file=FILE          gin file (repeatable); --gin.MACRO=VALUE or --gin.Class.param=VALUE
                           override bindings, as in T5X
  --gin_search_paths=DIRS  comma-separated folders for gin files and includes (the packaged
                           configs are searched last)
  --config=FILE            python file defining get_config() -> RunConfig
  --set KEY=VALUE          override a field of the python config, e.g. --set train.steps=50
A file may be a path, a URL (gs://...) or the name of a config shipped with mtjax, e.g.
--config=quickstart, --config=experiments/t0, --gin_file=quickstart.gin.
"""


def _flag_from_env(name: str) -> bool:
  return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _debug_from_env() -> bool:
  return _flag_from_env("MTJAX_DEBUG")


def fail(message, hint: str = "") -> None:
  """Prints `error: <message>` (and `hint: <hint>`) to stderr and exits with status 2."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr)
  if hint:
    print(f"hint: {hint}", file=sys.stderr)
  sys.stderr.flush()
  raise SystemExit(USER_ERROR_STATUS)


def _message(e: BaseException) -> str:
  """One line for an exception: a KeyError's text without the quotes repr() gives it."""
  if isinstance(e, KeyError) and len(e.args) == 1:
    return str(e.args[0])
  return str(e) or type(e).__name__


def fail_on(e: BaseException) -> None:
  """Exits with `e`'s one-line message (status 2), or re-raises it under --debug."""
  if _DEBUG:
    raise e
  fail(_message(e), getattr(e, "hint", ""))


def _config_parser(name: str, description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"mtjax {name}", description=description, epilog=CONFIG_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--gin_file", action="append", default=[], help="gin config file (repeatable)")
  p.add_argument("--gin_search_paths", default="",
                 help="comma-separated folders where gin files and includes are looked up")
  p.add_argument("--config", help="python config file with get_config(), or a packaged "
                 "config's name (quickstart, experiments/t0, ...)")
  p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                 help="override a python-config field (repeatable)")
  return p


def resolve_config(args, gin_bindings):
  """Builds the RunConfig from whichever front end the arguments name."""
  from mtjax.config import gin_config, python_config  # pylint: disable=g-import-not-at-top

  if args.gin_file and args.config:
    fail("use either --gin_file or --config, not both")
  if args.gin_file:
    if args.set:
      fail("--set applies to --config; with gin use --gin.KEY=VALUE")
    search = [d.strip() for d in getattr(args, "gin_search_paths", "").split(",") if d.strip()]
    return gin_config.load(args.gin_file, gin_bindings, search)
  if gin_bindings:
    fail("--gin.KEY=VALUE needs --gin_file")
  if getattr(args, "gin_search_paths", ""):
    fail("--gin_search_paths applies to --gin_file")
  if args.config:
    return python_config.load(args.config, args.set)
  fail("give a config: --gin_file=FILE or --config=FILE "
                   "(e.g. --config=quickstart, a config shipped with mtjax)")


def _split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Pulls `--gin.X=Y` (and `--gin.X Y`) out of argv; returns (rest, bindings)."""
  rest, bindings, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          fail(f"{arg} needs a value")
        body, i = f"{body}={argv[i + 1]}", i + 1
      bindings.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


def _cmd_train(argv):
  argv, bindings = _split_gin_flags(argv)
  parser = _config_parser("train", COMMANDS["train"])
  parser.add_argument("--no_progress", action="store_true",
                      help="report no progress (as --progress=none)")
  multi = parser.add_argument_group(
      "multi-host (default: JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID or the "
      "cluster launcher's variables; none: one process)")
  multi.add_argument("--coordinator_address", help="host:port of process 0")
  multi.add_argument("--num_processes", type=int, help="how many processes (hosts) take part")
  multi.add_argument("--process_id", type=int, help="this process's index (0 = the coordinator)")
  args = parser.parse_args(argv)
  if args.no_progress:
    os.environ["MTJAX_PROGRESS"] = "none"  # the evaluation's and the cache's too
  cfg = _load_or_exit(args, bindings)
  from mtjax.parallel import distributed  # pylint: disable=g-import-not-at-top
  from mtjax.recipes import train as train_recipe  # pylint: disable=g-import-not-at-top

  from mtjax import fs  # pylint: disable=g-import-not-at-top

  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  try:
    summary = train_recipe.run(cfg, progress=not args.no_progress)
  except (FloatingPointError, fs.StorageError) as e:
    fail_on(e)
  print(json.dumps({"run_dir": summary["run_dir"], "steps": summary["steps"],
                    "preempted": summary.get("preempted", False),
                    "final_metrics": {k: round(v, 4) for k, v in summary["final_metrics"].items()
                                      if "/" not in k}}))


def _eval_option_parser(parser, names=None) -> None:
  """One `--<field>` flag per EvalConfig field (tuples comma-separated), default: the config's;
  `names`: only those fields."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from mtjax.config import schema  # pylint: disable=g-import-not-at-top

  group = parser.add_argument_group("eval options (override the config's eval.*)")
  for f in dataclasses.fields(schema.EvalConfig):
    if names is not None and f.name not in names:
      continue
    default = f.default
    if isinstance(default, bool):
      kind = lambda v: v.lower() in ("1", "true", "yes")
    elif isinstance(default, tuple):
      item = int if "int" in str(f.type) else str
      kind = lambda v, item=item: tuple(item(x.strip()) for x in v.split(",") if x.strip())
    else:
      kind = type(default)
    group.add_argument(f"--{f.name}", type=kind, default=None, metavar=f.name.upper(),
                       help=f"(default {default!r})")


def _cmd_eval(argv):
  argv, bindings = _split_gin_flags(argv)
  parser = _config_parser("eval", COMMANDS["eval"])
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument("--run_dir", help="a run directory written by mtjax train (latest step)")
  where.add_argument("--checkpoint", help="a run dir, its checkpoints/ dir, or one step's dir")
  parser.add_argument("--mixture_or_task", help="what to evaluate (default: the run's mixture)")
  parser.add_argument("--module", action="append", default=[],
                      help="module registering it (repeatable)")
  parser.add_argument("--output_dir", help="where results go (default: the run directory)")
  _eval_option_parser(parser)
  args = parser.parse_args(argv)
  import dataclasses  # pylint: disable=g-import-not-at-top
  from mtjax.config import schema  # pylint: disable=g-import-not-at-top
  from mtjax.eval import run  # pylint: disable=g-import-not-at-top

  eval_fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(schema.EvalConfig)
                 if getattr(args, f.name) is not None}
  from mtjax import fs  # pylint: disable=g-import-not-at-top

  flag = "--checkpoint" if args.checkpoint else "--run_dir"
  try:
    fs.check_usable(args.checkpoint or args.run_dir, flag)
    if args.output_dir:
      fs.check_usable(args.output_dir, "--output_dir")
    ref = run.locate(args.checkpoint or args.run_dir, flag)
    cfg = (_load_or_exit(args, bindings) if args.gin_file or args.config
           else run.run_config(ref))
    cfg = run.with_overrides(cfg, mixture_or_task=args.mixture_or_task,
                             modules=tuple(args.module), eval_fields=eval_fields)
    run.evaluate_checkpoint(cfg, ref, args.output_dir)
  except (FileNotFoundError, KeyError, ValueError, fs.StorageError) as e:
    fail_on(e)


# EvalConfig fields that mean something to `mtjax infer` (how to decode and score, batch size).
INFER_EVAL_FIELDS = ("decode", "beam_size", "alpha", "temperature", "top_k", "top_p", "seed",
                     "scoring", "batch_size")


def _cmd_infer(argv):
  parser = argparse.ArgumentParser(
      prog="mtjax infer", description=COMMANDS["infer"], epilog=(
          "Input: .txt (one prompt a line) or .jsonl (records with \"inputs\" and optional "
          "\"answer_choices\"). Output: JSONL, each record with \"prediction\" (and, with "
          "choices, \"scores\" and \"choice\"). Decode options as mtjax eval: --decode beam "
          "--beam_size 4, or --set eval.decode=beam eval.beam_size=4."))
  parser.add_argument("--checkpoint", required=True,
                      help="a run dir (latest step), its checkpoints/ dir, a step dir, an mtjax "
                           "model dir (mtjax convert) or a Hugging Face checkpoint dir")
  parser.add_argument("--input", required=True, help=".txt or .jsonl prompts")
  parser.add_argument("--output", required=True, help="JSONL predictions to write")
  parser.add_argument("--tokenizer", default="",
                      help="an HF tokenizer dir (default: the run's tasks' vocabulary, an HF "
                           "dir's tokenizer.json)")
  parser.add_argument("--task", default="",
                      help="a task of the run: its vocabulary, features and postprocessor "
                           "(default: the first task of the run's mixture, no postprocessor); "
                           "task-routed adapters (model.adapter=poly/mhr/mtlora) use its "
                           "adapters (a task not trained: model.adapter_default_task's)")
  parser.add_argument("--inputs_length", type=int, default=0,
                      help="inputs are trimmed to it (default: the run's, else 512)")
  parser.add_argument("--targets_length", type=int, default=0,
                      help="decoded and scored length (default: the run's, else 128)")
  parser.add_argument("--inputs_eos", choices=("true", "false"), default=None,
                      help="inputs end in EOS (default: as the run's task; true without one, as "
                           "mtjax tasks train; false for a plain pretrained decoder's prompts)")
  parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="eval.KEY=VALUE",
                      help="a decode option, e.g. eval.decode=beam "
                           f"({', '.join(INFER_EVAL_FIELDS)})")
  _eval_option_parser(parser, INFER_EVAL_FIELDS)
  args = parser.parse_args(argv)
  from mtjax import fs  # pylint: disable=g-import-not-at-top

  from mtjax.config import schema  # pylint: disable=g-import-not-at-top

  options = {f: getattr(args, f) for f in INFER_EVAL_FIELDS if getattr(args, f) is not None}
  for item in args.set:
    key, sep, value = item.partition("=")
    field = key[len("eval."):] if key.startswith("eval.") else ""
    if not sep or field not in INFER_EVAL_FIELDS:
      fail(f"--set {item}: mtjax infer takes eval.KEY=VALUE with KEY one of "
           f"{', '.join(INFER_EVAL_FIELDS)}")
    kind = type(getattr(schema.EvalConfig, field))  # int, float or str, as the --FIELD flag
    try:
      options[field] = kind(value)
    except ValueError:
      fail(f"--set {item}: {field} takes a {kind.__name__}")
  from mtjax.eval import generate, infer  # pylint: disable=g-import-not-at-top

  ev = schema.EvalConfig(**options)
  try:
    fs.check_usable(args.checkpoint, "--checkpoint")
    decode = generate.DecodeOptions(method=ev.decode, beam_size=ev.beam_size, alpha=ev.alpha,
                                    temperature=ev.temperature, top_k=ev.top_k, top_p=ev.top_p)
    records = infer.read_inputs(args.input)  # a bad input file fails before the model loads
    model = infer.load(args.checkpoint, tokenizer=args.tokenizer, task=args.task,
                       inputs_length=args.inputs_length, targets_length=args.targets_length,
                       inputs_eos=None if args.inputs_eos is None
                       else args.inputs_eos == "true")
    rows = infer.predict_records(model, records, decode=decode, batch_size=ev.batch_size,
                                 seed=ev.seed, scoring_mode=ev.scoring)
    infer.write_rows(args.output, rows)
  except (FileNotFoundError, KeyError, ValueError, fs.StorageError) as e:
    fail_on(e)
  print(json.dumps({"output": fs.abspath(args.output), "rows": len(rows), "decode": ev.decode,
                    "lengths": model.lengths, "checkpoint": model.source}))


def _cmd_lm_eval(argv):
  parser = argparse.ArgumentParser(
      prog="mtjax lm-eval", description=COMMANDS["lm-eval"], epilog=(
          "Results: <output>/lm_eval/<step or the checkpoint dir's name>.json (lm-eval's "
          "results) and .samples.jsonl (every request); for a run, also a row of "
          "eval_metrics.jsonl and TensorBoard scalars lm_eval/<task>/<metric> at its step. "
          "Metrics are lm-eval's (accuracies in 0-1). Example: mtjax lm-eval --checkpoint "
          "runs/try --tasks my_task --include_path my_tasks/ --num_fewshot 5 --limit 100"))
  parser.add_argument("--checkpoint", required=True,
                      help="a run dir (latest step), its checkpoints/ dir, a step dir, an mtjax "
                           "model dir (mtjax convert) or a Hugging Face checkpoint dir")
  parser.add_argument("--tasks", required=True,
                      help="comma-separated lm-eval task (or group) names")
  parser.add_argument("--num_fewshot", type=int, default=None,
                      help="demonstrations per prompt (default: each task's own)")
  parser.add_argument("--limit", type=float, default=None,
                      help="examples per task (below 1: a fraction of each task)")
  parser.add_argument("--include_path", default="",
                      help="a folder of task YAMLs; only its tasks are indexed (not lm-eval's "
                           "~14,700 built-in ones)")
  parser.add_argument("--output", default="",
                      help="results folder (default: the run dir, else the current folder)")
  parser.add_argument("--batch_size", type=int, default=32,
                      help="rows per batch (rounded up to the data parallelism)")
  parser.add_argument("--max_length", type=int, default=0,
                      help="context tokens (default: an HF dir's config, else the run's "
                           "inputs + targets lengths; T5: the inputs length)")
  parser.add_argument("--tokenizer", default="",
                      help="an HF tokenizer dir (default: the run's tasks' vocabulary, an HF "
                           "dir's tokenizer.json)")
  parser.add_argument("--seed", type=int, default=0, help="sampling rng (do_sample tasks)")
  args = parser.parse_args(argv)
  from mtjax import fs  # pylint: disable=g-import-not-at-top
  from mtjax.eval import lm_eval  # pylint: disable=g-import-not-at-top

  try:
    fs.check_usable(args.checkpoint, "--checkpoint")
    if args.output:
      fs.check_usable(args.output, "--output")
    summary = lm_eval.run_checkpoint(
        args.checkpoint, args.tasks.split(","), num_fewshot=args.num_fewshot, limit=args.limit,
        include_path=args.include_path, output=args.output, batch_size=args.batch_size,
        max_length=args.max_length, tokenizer=args.tokenizer, seed=args.seed)
  except (FileNotFoundError, KeyError, ValueError, fs.StorageError) as e:
    fail_on(e)
  if summary is not None:
    print(json.dumps(summary))


def _cmd_cache(argv):
  parser = argparse.ArgumentParser(prog="mtjax cache", description=COMMANDS["cache"])
  parser.add_argument("--mixture_or_task", required=True)
  parser.add_argument("--module", action="append", default=[],
                      help="module registering it (repeatable; default mtjax.mixtures.synthetic)")
  parser.add_argument("--cache_dir", default=".cache/mtjax", help="local folder or URL (gs://...)")
  parser.add_argument("--splits", default="train,validation")
  parser.add_argument("--num_shards", type=int, default=1)
  parser.add_argument("--num_workers", type=int, default=1,
                      help="local worker processes building the plan's units, across tasks "
                           "(the same cache for any N)")
  parser.add_argument("--num_processes", type=int, default=None,
                      help="hosts building one cache dir together (default: JAX's multi-host "
                           "environment, SLURM, a TPU slice; else 1)")
  parser.add_argument("--process_id", type=int, default=None,
                      help="this host's index among --num_processes")
  parser.add_argument("--engine", choices=("local", "beam"), default="local",
                      help="local: --num_workers processes here (this host's share on many "
                           "hosts); beam: an Apache Beam pipeline (pip install 'mtjax[beam]') "
                           "on the runner --beam_options names (the same cache)")
  parser.add_argument("--beam_options", default="",
                      help="with --engine=beam: Beam pipeline options as one string, e.g. "
                           "'--runner=DataflowRunner --project=P --region=R "
                           "--temp_location=gs://B/tmp' (default: Beam's DirectRunner)")
  parser.add_argument("--path", choices=("auto", "tf_free", "seqio"), default="auto",
                      help="how units are built: TF-free where a task allows it (auto), always "
                           "(tf_free: a task that cannot is an error), or through SeqIO")
  parser.add_argument("--inputs_length", type=int, default=0,
                      help="with --targets_length: the run's lengths, given (as SeqIO does) to "
                           "preprocessors of tasks without a cache placeholder that read them")
  parser.add_argument("--targets_length", type=int, default=0)
  parser.add_argument("--tokenizer", default="",
                      help="an HF tokenizer dir: the default vocabulary (as data.tokenizer)")
  _data_location_flags(parser)
  args = parser.parse_args(argv)
  from mtjax import fs  # pylint: disable=g-import-not-at-top

  if args.beam_options and args.engine != "beam":
    fail_on(errors.ConfigError("--beam_options needs --engine=beam"))
  if args.engine == "beam":  # not installed: one line, before any work
    from mtjax.data.caching import beam  # pylint: disable=g-import-not-at-top

    beam.import_beam()
  try:  # a typo'd bucket or missing credentials: one line, before any work
    fs.check_usable(args.cache_dir, "data.cache_dir")
  except fs.StorageError as e:
    fail_on(e)
  from mtjax.data import cache  # pylint: disable=g-import-not-at-top
  from mtjax.data.modules import import_modules  # pylint: disable=g-import-not-at-top

  from mtjax.data import hf_vocab  # pylint: disable=g-import-not-at-top

  from mtjax.collections import catalog  # pylint: disable=g-import-not-at-top

  vocabulary = hf_vocab.HFVocabulary.from_dir(args.tokenizer) if args.tokenizer else None
  collection = catalog.collection_of(args.mixture_or_task)
  default = [catalog.COLLECTIONS[collection].module] if collection else ["mtjax.mixtures.synthetic"]
  import_modules(args.module or default, vocabulary, options=_data_options(args))
  lengths = None
  if args.inputs_length or args.targets_length:
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  if args.num_workers < 1 or args.num_shards < 1:
    fail_on(errors.ConfigError("--num_workers and --num_shards must be at least 1"))
  try:
    spec = cache.cache_mixture(args.mixture_or_task, args.cache_dir,
                               splits=tuple(args.splits.split(",")), num_shards=args.num_shards,
                               num_workers=args.num_workers, sequence_length=lengths,
                               tf_free={"auto": None, "tf_free": True, "seqio": False}[args.path],
                               num_processes=args.num_processes, process_id=args.process_id,
                               summary=True, engine=args.engine,
                               pipeline_options=args.beam_options or None)
  except fs.StorageError as e:
    fail_on(e)
  for entry, weight in zip(spec.tasks, spec.weights):
    print(f"{entry.name}\trate={entry.rate:g}\tweight={weight:.4f}")


def _data_location_flags(parser) -> None:
  parser.add_argument("--hf_data_dir", default="",
                      help="local copies of Hugging Face dataset repos as <dir>/<org>/<name> "
                           "(as data.hf_data_dir; default $MTJAX_HF_DATA_DIR)")
  parser.add_argument("--promptsource_dir", default="",
                      help="PromptSource's templates folder (as data.promptsource_dir; default "
                           "$MTJAX_PROMPTSOURCE_DIR, else the promptsource package's)")


def _data_options(args) -> dict[str, str]:
  return {k: v for k, v in (("hf_data_dir", args.hf_data_dir),
                            ("promptsource_dir", args.promptsource_dir)) if v}


def _cmd_tasks(argv):
  parser = argparse.ArgumentParser(
      prog="mtjax tasks", description=COMMANDS["tasks"], epilog=(
          "examples:\n  mtjax tasks\n  mtjax tasks --mixture t0_train --promptsource_dir "
          "DIR\n  mtjax tasks --show super_glue_rte_GPT_3_style -n 3 --split validation"),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mixture", default="",
                      help="list this mixture's (or task's) tasks: rate, share, train examples "
                           "(from the cache or the collection's records), cached splits")
  parser.add_argument("--show", default="", metavar="TASK",
                      help="print the first examples of TASK as text")
  parser.add_argument("-n", type=int, default=3, help="how many examples --show prints")
  parser.add_argument("--split", default="train", help="the split --show reads")
  parser.add_argument("--module", action="append", default=[],
                      help="module registering tasks (repeatable, as data.modules); the "
                           "collections' own modules are found by name")
  parser.add_argument("--cache_dir", default=".cache/mtjax",
                      help="where to look for cached splits (as data.cache_dir)")
  parser.add_argument("--json", action="store_true", help="machine-readable output")
  _data_location_flags(parser)
  args = parser.parse_args(argv)
  if args.n < 1:
    fail(f"-n must be at least 1, got {args.n}")
  from mtjax.collections import catalog  # pylint: disable=g-import-not-at-top
  from mtjax.data import modules  # pylint: disable=g-import-not-at-top

  with modules.options_set(_data_options(args)):
    names = [modules.builtin_name(m) for m in args.module]
    if not args.mixture and not args.show:
      print(catalog.overview(names))
      return
    if args.mixture:
      catalog.ensure_registered(args.mixture, names)
      rows = catalog.mixture_rows(args.mixture, args.cache_dir)
      print(json.dumps(rows, indent=1) if args.json else catalog.format_rows(args.mixture, rows))
    if args.show:
      catalog.ensure_registered(args.show, names)
      examples = catalog.show(args.show, args.split, args.n)
      print(json.dumps(examples, indent=1, ensure_ascii=False) if args.json else
            catalog.format_examples(args.show, args.split, examples))


def _cmd_convert(argv):
  parser = argparse.ArgumentParser(prog="mtjax convert", description=COMMANDS["convert"])
  parser.add_argument("--hf_dir", required=True, help="config.json + *.safetensors")
  parser.add_argument("--out", required=True, help="mtjax model directory to write")
  args = parser.parse_args(argv)
  from mtjax import fs  # pylint: disable=g-import-not-at-top
  from mtjax.models import hf, store  # pylint: disable=g-import-not-at-top

  try:
    fs.check_usable(args.hf_dir, "--hf_dir")
    fs.check_usable(args.out, "--out")
    model = hf.load(args.hf_dir)
  except (FileNotFoundError, KeyError, ValueError, NotImplementedError, fs.StorageError) as e:
    fail_on(e)
  store.save(model, args.out)
  from mtjax.models import hf_meta  # pylint: disable=g-import-not-at-top

  # The source's ids, generation config and tokenizer files, for `mtjax export` to give back.
  hf_meta.record_source(args.hf_dir, args.out, hf.family_of(model))
  print(json.dumps({"out": fs.abspath(args.out), "family": hf.family_of(model),
                    "num_params": hf.num_params(model)}))


def _cmd_export(argv):
  parser = argparse.ArgumentParser(prog="mtjax export", description=COMMANDS["export"])
  parser.add_argument("--checkpoint", required=True,
                      help="an mtjax model dir (mtjax convert), a run dir, or a checkpoint step dir")
  parser.add_argument("--out", required=True, help="HF checkpoint directory to write")
  parser.add_argument("--task", default=None,
                      help="task-routed adapters (model.adapter=poly/mhr/mtlora): the mixture "
                           "task whose adapters are folded into the weights")
  args = parser.parse_args(argv)
  from mtjax import fs  # pylint: disable=g-import-not-at-top
  from mtjax.models import hf, hf_meta, store  # pylint: disable=g-import-not-at-top

  try:
    fs.check_usable(args.checkpoint, "--checkpoint")
    fs.check_usable(args.out, "--out")
    model = store.load_any(args.checkpoint, task=args.task)
    # What generation needs beyond weights: the run's special ids and lengths, the source's
    # generation config, the tokenizer (recorded at train / convert time; see hf_meta).
    meta = hf_meta.load(args.checkpoint, model.cfg)
  except (FileNotFoundError, KeyError, ValueError, fs.StorageError) as e:
    fail_on(e)
  if meta is None:
    logging.getLogger(__name__).warning(
        "%s records no special token ids (written before mtjax recorded them): config.json "
        "gets %s", args.checkpoint, "T5's (pad 0, eos 1)" if hf.family_of(model) == "t5"
        else "none, so transformers' defaults apply")
  files = hf.export(model, args.out, meta)
  print(json.dumps({"out": fs.abspath(args.out), "family": hf.family_of(model),
                    "files": files}))


def _cmd_ablate(argv):
  argv, bindings = _split_gin_flags(argv)
  parser = _config_parser("ablate", COMMANDS["ablate"] + " (mtjax.recipes.ablate)")
  from mtjax.recipes import ablate  # pylint: disable=g-import-not-at-top

  ablate.add_arguments(parser)
  args = parser.parse_args(argv)
  cfg = _load_or_exit(args, bindings)
  try:
    code = ablate.run(cfg, args)
  except (FileNotFoundError, KeyError, ValueError, TypeError, AttributeError, OSError) as e:
    fail_on(e)
  if code:
    raise SystemExit(code)


def _cmd_promot(argv):
  argv, bindings = _split_gin_flags(argv)
  parser = _config_parser("promot", COMMANDS["promot"])
  parser.description = (
      "ProMoT (mtjax.recipes.promot): stage 1 trains a soft prompt on data.mixture (the target "
      "task), stage 2 trains the model with that prompt attached and frozen, starting from "
      "train.init_from; then each method in promot.methods is evaluated on the target task and "
      "on eval.other_tasks (prompt removed, zero- and eval.few_shot-shot, format rate vs "
      "eval.label_set) into <run_dir>/report.{json,md}. Every stage is a resumable run dir "
      "under run_dir; rerunning resumes.")
  parser.add_argument("--no_progress", action="store_true",
                      help="report no progress (as --progress=none)")
  args = parser.parse_args(argv)
  if args.no_progress:
    os.environ["MTJAX_PROGRESS"] = "none"
  cfg = _load_or_exit(args, bindings)
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  try:
    report = promot.run(cfg, progress=not args.no_progress)
  except (FileNotFoundError, KeyError, ValueError, FloatingPointError, OSError) as e:
    fail_on(e)
  from mtjax import fs  # pylint: disable=g-import-not-at-top

  print(json.dumps({"report": fs.join(fs.abspath(cfg.run_dir), promot.REPORT_MD),
                    "summary": report["summary"]}))


def _cmd_merge(argv):
  from mtjax.merge import command  # pylint: disable=g-import-not-at-top

  try:
    command.main(argv)
  except (FileNotFoundError, KeyError, ValueError, NotImplementedError) as e:
    fail_on(e)


def _load_or_exit(args, bindings):
  try:
    return resolve_config(args, bindings)
  except (KeyError, ValueError, TypeError, FileNotFoundError, AttributeError) as e:
    fail_on(e)


def main(argv: list[str] | None = None) -> None:
  """Runs `mtjax <command> ...`. A user error exits with status 2 and one `error:` line (see the
  module docstring); `--debug` / `MTJAX_DEBUG=1` raise it with its traceback instead."""
  global _DEBUG
  argv = list(sys.argv[1:] if argv is None else argv)
  _DEBUG = "--debug" in argv or _debug_from_env()
  verbose = "--verbose" in argv or _flag_from_env("MTJAX_VERBOSE")
  argv = [a for a in argv if a not in ("--debug", "--verbose")]
  argv = _take_valued_globals(argv)
  # TensorFlow (imported by SeqIO for caching and metrics) prints C++ start-up lines (failed
  # CUDA probes, twice) that no user needs; --verbose keeps them. Before anything imports it.
  from mtjax import quiet  # pylint: disable=g-import-not-at-top  (imports nothing heavy)

  if not verbose:
    quiet.install()
  try:
    _main(argv)
  finally:
    quiet.uninstall()


def _take_valued_globals(argv: list[str]) -> list[str]:
  """Pulls `--progress[=]MODE` and `--progress_every[=]SECONDS` out of argv (anywhere) into
  their environment variables, which `mtjax.progress` reads (and child processes inherit);
  a bad value is one `error:` line."""
  rest, i = [], 0
  while i < len(argv):
    flag, _, value = argv[i].partition("=")
    if flag in _VALUED_GLOBALS:
      if not value:
        if "=" in argv[i] or i + 1 >= len(argv):
          fail(f"{flag} needs a value")
        value, i = argv[i + 1], i + 1
      os.environ[_VALUED_GLOBALS[flag]] = value
    else:
      rest.append(argv[i])
    i += 1
  from mtjax import progress  # pylint: disable=g-import-not-at-top  (imports nothing heavy)

  try:
    progress.requested_mode()
    progress.every_seconds()
  except errors.UserError as e:
    fail_on(e)
  return rest


def _main(argv: list[str]) -> None:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("jax", "orbax", "tensorflow", "fsspec", "gcsfs"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # SeqIO warns that tasks are "not cached" (it means its own cache, not ours) when computing
  # rates from example counts; that is expected here.
  logging.getLogger("absl").setLevel(logging.ERROR)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print("usage: mtjax <command> [options]\n\ncommands:")
    for name, text in COMMANDS.items():
      print(f"  {name:<8}{text}")
    print("\nRun `mtjax <command> --help` for a command's options. A mistake in the input is "
          "one `error:` line\n(exit status 2).\n\noptions of every command (anywhere on the "
          "command line):")
    import textwrap  # pylint: disable=g-import-not-at-top

    for flag, text in GLOBAL_OPTIONS.items():
      print(textwrap.fill(text, 100, initial_indent=f"  {flag:<26}", subsequent_indent=" " * 28))
    return
  command, rest = argv[0], argv[1:]
  handlers = {"train": _cmd_train, "eval": _cmd_eval, "infer": _cmd_infer,
              "lm-eval": _cmd_lm_eval, "cache": _cmd_cache, "convert": _cmd_convert,
              "export": _cmd_export,
              "ablate": _cmd_ablate, "promot": _cmd_promot, "merge": _cmd_merge,
              "tasks": _cmd_tasks}
  if command not in handlers:
    fail(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
  from mtjax import fs  # pylint: disable=g-import-not-at-top

  try:
    handlers[command](rest)
  except (errors.UserError, fs.StorageError) as e:
    fail_on(e)


if __name__ == "__main__":
  main()
