"""`mtjax merge`: a base and finetuned models -> one merged model (mtjax.merge.methods).

    mtjax merge --base BASE --models FT1 [FT2 ...] --method ties --density 0.2 \\
        [--lam 1.0] [--drop P --seed S] [--low B --high G] [--lines_beta B [--lines_alpha A|auto]]
        [--out RUN_DIR] [--out_hf HF_DIR]

Inputs: mtjax run dirs (newest checkpoint), step dirs (`run/checkpoints/600`), mtjax model dirs
or HF dirs, any family, mixed freely; LoRA runs are merged into dense weights first. All of them
are placed on a mesh (`--fsdp` x `--tensor` devices, all by default) and merged there one parameter
at a time: no host gathers a model (except `--out_hf`, whose single safetensors file is written by
one host, tensor by tensor, as `mtjax export` does).

`--out` writes a run dir that `mtjax eval`, `mtjax infer` and `mtjax export` accept:
`config.json` (the first finetuned run's config, else the base's; a HF-only merge names the base
in `model.hf_checkpoint`), `checkpoints/0/` (params + meta with the recipe), `hf/` (the export
facts of that run or of the HF base: special ids, generation config, tokenizer) and
`merge.json`. With only `mtjax convert` model dirs as inputs it writes a model dir instead.
`--out_hf` writes a HF checkpoint (plus `mtjax_merge.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile

import jax
from flax import nnx

from mtjax import errors, fs
from mtjax.merge import load as load_lib
from mtjax.merge import methods

log = logging.getLogger(__name__)
DESCRIPTION = "merge finetuned models into their base (task arithmetic, TIES, DARE, Breadcrumbs, LiNeS)"
RECIPE = "merge.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--base", required=True,
                      help="the pretrained model: a run dir, step dir, mtjax model dir or HF dir")
  parser.add_argument("--models", required=True, nargs="+",
                      help="the finetuned models (same kinds; LoRA runs are merged first)")
  parser.add_argument("--method", default="task_arithmetic", choices=methods.METHODS + ("lines",),
                      help="`lines` = task arithmetic scaled by LiNeS (--lines_beta)")
  parser.add_argument("--lam", type=float, default=None,
                      help="scale of the merged update (default 1; replaced by LiNeS' factors)")
  parser.add_argument("--density", type=float, default=0.2,
                      help="TIES: share of each task vector's largest magnitudes kept, per tensor")
  parser.add_argument("--drop", type=float, default=0.9, help="DARE: drop rate p")
  parser.add_argument("--seed", type=int, default=0, help="DARE: seed of the drop masks")
  parser.add_argument("--low", type=float, default=0.85,
                      help="Breadcrumbs: share of smallest magnitudes masked per layer")
  parser.add_argument("--high", type=float, default=0.01,
                      help="Breadcrumbs: share of largest magnitudes masked per layer")
  parser.add_argument("--lines_alpha", default="auto",
                      help="LiNeS: factor of the first layer and outside the layers, or `auto` "
                           "((|sum t|_1 / |update|_1) / T, the authors' merging choice)")
  parser.add_argument("--lines_beta", type=float, default=None,
                      help="LiNeS: the last layer gets alpha + beta (enables LiNeS)")
  parser.add_argument("--out", default="", help="run dir to write (mtjax eval / export read it)")
  parser.add_argument("--out_hf", default="", help="HF checkpoint dir to write")
  parser.add_argument("--fsdp", type=int, default=-1, help="mesh fsdp axis (-1: fill)")
  parser.add_argument("--tensor", type=int, default=1, help="mesh tensor axis")


def _options(args) -> dict:
  method = "task_arithmetic" if args.method == "lines" else args.method
  if args.method == "lines" and args.lines_beta is None:
    raise errors.ConfigError("--method lines needs --lines_beta (the last layer's factor is "
                             "alpha + beta)")
  lines = None
  if args.lines_beta is not None:
    if args.lam is not None:
      raise errors.ConfigError("--lam and LiNeS (--lines_beta) both scale the update: LiNeS' "
                               "alpha + beta * (l - 1) / (L - 1) replaces --lam")
    alpha = args.lines_alpha
    if alpha != "auto":
      try:
        alpha = float(alpha)
      except ValueError:
        raise errors.ConfigError(f"--lines_alpha {alpha!r}: a number or auto") from None
    lines = (alpha, args.lines_beta)
  return dict(method=method, lam=1.0 if args.lam is None else args.lam, density=args.density,
              p=args.drop, seed=args.seed, low=args.low, high=args.high, lines=lines)


def _check_out(path: str, flag: str) -> None:
  if not path:
    return
  fs.check_usable(path, flag)
  if fs.exists(path) and (not fs.isdir(path) or fs.listdir(path)):
    raise errors.RunDirError(f"{flag} {path} already exists and is not empty: give a new "
                             "directory (a merge never overwrites)")


def _copy_tree(src: str, dst: str) -> None:
  fs.makedirs(dst)
  for name in fs.listdir(src):
    s, d = fs.join(src, name), fs.join(dst, name)
    if fs.isdir(s):
      _copy_tree(s, d)
    else:
      with fs.open(d, "wb") as f:
        f.write(fs.read_bytes(s))


def run(args) -> dict:
  """Loads, checks, merges, writes; returns the summary printed as JSON."""
  if not args.out and not args.out_hf:
    raise errors.ConfigError("mtjax merge: give --out (an mtjax run dir) and/or --out_hf "
                             "(a HF checkpoint dir)")
  opts = _options(args)
  methods.check_options(opts["method"], density=opts["density"], p=opts["p"], low=opts["low"],
                        high=opts["high"], n=len(args.models))
  _check_out(args.out, "--out")
  _check_out(args.out_hf, "--out_hf")
  from mtjax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mtjax.parallel import rules as rules_lib  # pylint: disable=g-import-not-at-top

  mesh = mesh_lib.make_mesh(data=1, fsdp=args.fsdp, tensor=args.tensor)
  rules = rules_lib.DEFAULT_RULES
  base = load_lib.load(args.base, mesh=mesh, rules=rules)
  models = [load_lib.load(p, mesh=mesh, rules=rules) for p in args.models]
  load_lib.check_compatible(base, models)
  merged, info = methods.merge(base.params, [m.params for m in models], **opts)
  for m in models:
    m.params.clear()  # the finetuned weights are no longer needed
  graphdef, _ = load_lib.shardings(base.cfg, mesh, rules)
  model = nnx.merge(graphdef, load_lib.unflatten(merged))
  recipe = {"method": info, "base": base.describe(),
            "models": [m.describe() for m in models]}
  summary = {"method": opts["method"] if not opts["lines"] else f"{opts['method']}+lines",
             "num_models": len(models), "family": base.family}
  # Where the export facts (ids, lengths, tokenizer) and the run config come from: the
  # finetuned models' (what they were trained with), else the base's.
  facts = next((s for s in models + [base] if s.kind in ("run", "model")), None)
  run_src = next((s for s in models + [base] if s.kind == "run"), None)
  if args.out:
    summary["out"] = _write_mtjax(args.out, model, merged, base, facts, run_src, recipe)
  if args.out_hf:
    summary["out_hf"] = _write_hf(args.out_hf, model, base, facts, recipe,
                                  args.out and summary["out"])
  return summary


def _write_mtjax(out: str, model, merged: dict, base, facts, run_src, recipe) -> str:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from mtjax.config import schema  # pylint: disable=g-import-not-at-top
  from mtjax.models import hf_meta, store  # pylint: disable=g-import-not-at-top

  out = fs.abspath(out)
  first = jax.process_index() == 0
  if run_src is None and base.kind != "hf":  # only model dirs: no run config to give eval
    store.save(model, out)
  else:
    if run_src is not None:
      cfg = run_src.run_cfg
      model_cfg = dataclasses.replace(cfg.model, lora_rank=0, prompt_length=0)
      cfg = dataclasses.replace(cfg, run_dir=out, model=model_cfg,
                                train=dataclasses.replace(cfg.train, init_from="",
                                                          init_prompt_from="",
                                                          trainable=("all",)))
    else:
      cfg = schema.RunConfig(run_dir=out, model=schema.ModelConfig(
          hf_checkpoint=fs.abspath(base.path)))
    if first:
      fs.makedirs(out)
      fs.write_json(fs.join(out, "config.json"), schema.to_dict(cfg))
    manager = ocp.CheckpointManager(fs.join(out, "checkpoints"), item_handlers={
        "params": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    manager.save(0, args=ocp.args.Composite(
        params=ocp.args.StandardSave(nnx.state(model).to_pure_dict()),
        meta=ocp.args.JsonSave({"step": 0, "merge": recipe})), force=True)
    manager.wait_until_finished()
    manager.close()
  if first:
    if facts is not None and fs.isdir(fs.join(facts.root, hf_meta.DIR)):
      _copy_tree(fs.join(facts.root, hf_meta.DIR), fs.join(out, hf_meta.DIR))
    elif facts is None and base.kind == "hf":
      hf_meta.record_source(base.path, out, base.family)
    fs.write_text(fs.join(out, RECIPE), load_lib.to_json(recipe))
  del merged
  return out


def _write_hf(out_hf: str, model, base, facts, recipe, written: str | None) -> str:
  from mtjax.models import hf, hf_meta  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    if written:
      meta = hf_meta.load(written, model.cfg)
    elif facts is not None:
      meta = hf_meta.load(facts.path, facts.cfg)
    else:  # a HF base only: its own ids, generation config and tokenizer (read during export)
      os.makedirs(os.path.join(tmp, "checkpoints"))
      hf_meta.record_source(base.path, tmp, base.family)
      meta = hf_meta.load(tmp, model.cfg)
    if meta is None:
      log.warning("merge: no export facts (special ids, tokenizer) recorded with %s: "
                  "config.json gets the family's defaults", (facts or base).describe())
    hf.export(model, out_hf, meta)
  if jax.process_index() == 0:
    fs.write_text(fs.join(out_hf, "mtjax_merge.json"), load_lib.to_json(recipe))
  return fs.abspath(out_hf)


def main(argv: list[str]) -> None:
  """`mtjax merge ...` (wired in mtjax/cli.py); user errors propagate to the CLI's one-line
  report."""
  parser = argparse.ArgumentParser(prog="mtjax merge", description=DESCRIPTION + "; see "
                                   "docs/merge.md for the definitions")
  add_arguments(parser)
  args = parser.parse_args(argv)
  try:
    summary = run(args)
  except (FileNotFoundError, KeyError, NotImplementedError) as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.MissingError(str(e).strip("'\"")) from e
  print(json.dumps(summary))
