"""Forgetting vs target accuracy, method by method, on the small in-context suite (issue 19,
capability 3). Writes docs/results/forgetting.{md,png}.

The pretrained model is scripts/repro_promot.py's (`pretrain(args)`: `decoder_small` taught
1-3-shot in-context learning from scratch on `fmt_pretrain`; an existing, finished
`runs/repro_promot_fmt/pretrain` is reused). Per seed, from that model:

  finetune            all parameters on the yes/no target `fmt_vowel`, F steps (ProMoT's
                      model-tuning recipe: Adafactor 1e-3, dropout 0.1, label smoothing 0.1)
  ProMoT              repro_promot's per-seed result (F prompt steps + F model steps) when its
                      workdir has it, else the same recipe run here
  LoRA                adapters only (rank 8, alpha 16, on all seven projections), F steps, AdamW
                      1e-3 constant (Adafactor's parameter scaling cannot move a zero-started B);
                      added after the first results: the same at AdamW 1e-4 (`lora_low`)
  HFT                 `train.trainable=hft` (half of each layer's matrices, drawn from the seed), F
  LiNeS(finetune)     `mtjax merge --method lines`, base = pretrained, the finetuned model; two
                      fixed settings: gamma = 0.5 (alpha 0.5, beta 0.5) and gamma = 0 (alpha 0,
                      beta 1); the last layer keeps its whole update
  finetune (greater)  all parameters on the second yes/no target `fmt_greater`
                      (mtjax.mixtures.synthetic_forgetting: "Q: 23 41\\nA:" -> yes/no), F steps
  task arithmetic     `mtjax merge` of the two finetuned models, lambda 0.5 (their average) and 1
                      (their sum)
  TIES                density 0.2, lambda 1 (the merge defaults)
  multi-task          all parameters on `fmt_two_targets` (both targets, equal rates), 2F steps:
                      each target gets as many examples as its single-task finetuning

A seed sets `train.seed` (dropout, LoRA's A init, HFT's draw) and `data.seed` (the order of the
training examples) of every run of that seed; pretraining, evaluation examples and their
demonstrations are the same for every seed. Every trained run keeps its best checkpoint on its
target(s), evaluated every `--eval_every` steps (as repro_promot); merges use those checkpoints.

Measures (repro_promot's `measures`): target accuracy (and the second target's), in-context
exact match 0- and 2-shot per family with no prompt, the share of yes/no outputs per family
(format rate), and retention = 2-shot in-context accuracy as % of the pretrained model's.

  python scripts/repro_forgetting.py                  # the study (time: see the md)
  python scripts/repro_forgetting.py --seeds=0 --model_steps=100   # a smoke run

Every stage is an ordinary mtjax run dir (or merge dir) under --workdir; rerunning resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

from scripts import repro_promot as rp  # pylint: disable=wrong-import-position

from mtjax.mixtures import synthetic_forgetting as two  # pylint: disable=wrong-import-position

MODULES = ("mtjax.mixtures.synthetic_forgetting",)
TARGET, SECOND = two.TARGETS
MIXTURE = two.TWO_TARGETS_MIXTURE
SHOTS = rp.SHOTS
LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")
MARKER = "<!-- everything below this line is written by hand; the script keeps it -->"

# method -> (label in the table, kind). Order = the table's rows.
METHODS = {
    "pretrained": ("pretrained", "base"),
    "finetune": ("finetune", "train"),
    "promot": ("ProMoT (F prompt + F model steps)", "promot"),
    "lora": ("LoRA (r 8, all projections)", "train"),
    "lora_low": ("LoRA, lr 1e-4 (added after the first results)", "train"),
    "hft": ("HFT (half of each layer)", "train"),
    "lines_g0.5": ("LiNeS(finetune), gamma 0.5", "merge"),
    "lines_g0": ("LiNeS(finetune), gamma 0", "merge"),
    "finetune_greater": ("finetune on fmt_greater", "train"),
    "ta_0.5": ("task arithmetic of the two, lambda 0.5", "merge"),
    "ta_1": ("task arithmetic of the two, lambda 1", "merge"),
    "ties": ("TIES of the two (density 0.2, lambda 1)", "merge"),
    "multitask": ("multi-task finetune on both (2F steps)", "train"),
}
# merge -> (its finetuned runs, mtjax merge options)
MERGES = {
    "lines_g0.5": (("finetune",), ["--method", "lines", "--lines_alpha", "0.5",
                                   "--lines_beta", "0.5"]),
    "lines_g0": (("finetune",), ["--method", "lines", "--lines_alpha", "0", "--lines_beta", "1"]),
    "ta_0.5": (("finetune", "finetune_greater"), ["--method", "task_arithmetic", "--lam", "0.5"]),
    "ta_1": (("finetune", "finetune_greater"), ["--method", "task_arithmetic", "--lam", "1"]),
    "ties": (("finetune", "finetune_greater"), ["--method", "ties", "--density", "0.2",
                                                "--lam", "1"]),
}
COLORS = {"pretrained": "black", "finetune": "tab:red", "promot": "tab:green", "lora": "tab:blue",
          "lora_low": "navy",
          "hft": "tab:orange", "lines_g0.5": "tab:purple", "lines_g0": "violet",
          "finetune_greater": "tab:brown", "ta_0.5": "tab:olive", "ta_1": "gold",
          "ties": "tab:cyan", "multitask": "tab:gray"}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  defaults = rp.parser().parse_args([])
  p.add_argument("--pretrain_workdir", default=defaults.workdir,
                 help="repro_promot's workdir: its pretrain/ is reused, its seeds' ProMoT too")
  p.add_argument("--workdir", default="runs/repro_forgetting")
  p.add_argument("--cache_dir", default=defaults.cache_dir)
  p.add_argument("--preset", default=defaults.preset)
  p.add_argument("--pretrain_steps", type=int, default=defaults.pretrain_steps)
  p.add_argument("--seeds", default=defaults.seeds)
  p.add_argument("--prompt_length", type=int, default=defaults.prompt_length)
  p.add_argument("--model_steps", type=int, default=defaults.model_steps, help="F")
  p.add_argument("--eval_every", type=int, default=defaults.eval_every)
  p.add_argument("--eval_examples", type=int, default=defaults.eval_examples)
  p.add_argument("--lora_rank", type=int, default=8)
  p.add_argument("--lora_alpha", type=float, default=16.0)
  p.add_argument("--lora_lr", type=float, default=1e-3)
  p.add_argument("--lora_lr_low", type=float, default=1e-4,
                 help="a second LoRA row (added after the first results: is LoRA's forgetting "
                      "its update size?)")
  p.add_argument("--promot_wait", type=float, default=30.0,
                 help="minutes to wait for repro_promot's ProMoT results while it runs")
  p.add_argument("--out", default="docs/results/forgetting.md")
  return p


def promot_args(args) -> argparse.Namespace:
  """repro_promot's arguments for the same pretraining and per-seed recipe."""
  return rp.parser().parse_args([
      f"--workdir={args.pretrain_workdir}", f"--cache_dir={args.cache_dir}",
      f"--preset={args.preset}", f"--pretrain_steps={args.pretrain_steps}",
      f"--seeds={args.seeds}", f"--prompt_length={args.prompt_length}",
      f"--model_steps={args.model_steps}", f"--eval_every={args.eval_every}",
      f"--eval_examples={args.eval_examples}"])


# --- pretraining (repro_promot's) ----------------------------------------------------------------

def pretrained_done(run_dir: str, steps: int) -> bool:
  return os.path.isdir(os.path.join(run_dir, "checkpoints", str(steps)))


def pretrain(args) -> str:
  """repro_promot's pretraining: reused when finished (not even locked: the other study may be
  using it), else trained or resumed through `rp.pretrain`; waits while another process holds
  the run dir."""
  pargs = promot_args(args)
  run_dir = os.path.join(pargs.workdir, "pretrain")
  while not pretrained_done(run_dir, pargs.pretrain_steps):
    if _locked(run_dir):
      logging.info("pretraining %s is locked by another process: waiting", run_dir)
      time.sleep(30)
      continue
    try:
      return rp.pretrain(pargs)
    except Exception as e:  # pylint: disable=broad-except
      if "lock" not in str(e).lower():
        raise
      logging.info("pretraining %s: %s; retrying in 30 s", run_dir, e)
      time.sleep(30)
  logging.info("reusing the finished pretraining %s", run_dir)
  return run_dir


def _locked(run_dir: str) -> bool:
  path = os.path.join(run_dir, "run.lock")
  if not os.path.exists(path):
    return False
  with open(path, "a") as fh:
    try:
      fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      return True
    fcntl.flock(fh, fcntl.LOCK_UN)
  return False


# --- the runs of one seed --------------------------------------------------------------------

def base_config(args, seed: int):
  """repro_promot's per-seed config (same data, recipe, evaluation), in this study's workdir."""
  cfg = rp.promot_config(promot_args(args), seed, "main")
  return dataclasses.replace(
      cfg, run_dir=os.path.join(args.workdir, f"seed{seed}"),
      data=dataclasses.replace(cfg.data, modules=MODULES))


def train_stages(args, seed: int) -> dict:
  """The trained methods' stages (mtjax.recipes.promot.Stage), by method."""
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  base = base_config(args, seed)
  length = base.data.inputs_length

  def stage(name, mixture, tasks, trainable=("all",), steps=None):
    cfg = promot.model_stage(base, name, mixture, tasks, length, prompt=False,
                             trainable=trainable)
    if steps is not None:
      cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
    return promot.Stage(name, cfg, tasks)

  out = {
      "finetune": stage("finetune", TARGET, (TARGET,)),
      "finetune_greater": stage("finetune_greater", SECOND, (SECOND,)),
      "hft": stage("hft", TARGET, (TARGET,), trainable=("hft",)),
      "multitask": stage("multitask", MIXTURE, two.TARGETS, steps=2 * args.model_steps),
  }
  for name, lr in (("lora", args.lora_lr), ("lora_low", args.lora_lr_low)):
    st = stage(name, TARGET, (TARGET,), trainable=("lora",))
    cfg = dataclasses.replace(
        st.cfg, model=dataclasses.replace(st.cfg.model, lora_rank=args.lora_rank,
                                          lora_alpha=args.lora_alpha, lora_targets=LORA_TARGETS),
        optimizer=dataclasses.replace(st.cfg.optimizer, name="adamw", learning_rate=lr,
                                      schedule="constant", warmup_steps=0, weight_decay=0.0))
    out[name] = promot.Stage(name, cfg, st.tasks)
  return out


def eval_stage(stage, run_dir: str | None = None):
  """The stage's config evaluated on both targets (a merge: in its own run dir, no LoRA)."""
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  cfg = dataclasses.replace(stage.cfg, data=dataclasses.replace(stage.cfg.data, mixture=MIXTURE))
  if run_dir is not None:
    cfg = dataclasses.replace(cfg, run_dir=run_dir,
                              model=dataclasses.replace(cfg.model, lora_rank=0))
  return promot.Stage(stage.name, cfg, two.TARGETS)


def merge(args, name: str, sources: list[str], out: str) -> str:
  """`mtjax merge` (its Python entry) of `sources` into `out`; kept once written."""
  from mtjax.merge import command  # pylint: disable=g-import-not-at-top

  if os.path.exists(os.path.join(out, command.RECIPE)):
    return out
  tmp = out + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  p = argparse.ArgumentParser()
  command.add_arguments(p)
  pretrained = os.path.join(args.pretrain_workdir, "pretrain")
  command.run(p.parse_args(["--base", pretrained, "--models", *sources, "--out", tmp,
                            *MERGES[name][1]]))
  shutil.rmtree(out, ignore_errors=True)
  os.rename(tmp, out)
  # config.json and merge.json name the temporary dir; the checkpoint is where it is read
  return out


def promot_result(args, seed: int, seeds: list[int]) -> tuple[dict, str]:
  """ProMoT's evaluation for this seed: repro_promot's when it has it (same seed and config;
  its evaluation settings checked), waiting while that study is running (one of its seed dirs
  locked, up to --promot_wait minutes); else the same recipe run here."""
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  theirs = os.path.join(args.pretrain_workdir, f"seed{seed}", "main", promot.REPORT_JSON)
  deadline = time.time() + 60 * args.promot_wait
  while not os.path.exists(theirs) and time.time() < deadline and any(
      _locked(os.path.join(args.pretrain_workdir, f"seed{s}", run))
      for s in seeds for run in ("main", "equal_total")):
    logging.info("waiting for repro_promot's %s (its study is running)", theirs)
    time.sleep(30)
  base = base_config(args, seed)
  if os.path.exists(theirs):
    with open(theirs) as fh:
      report = json.load(fh)
    ev = report["methods"].get("promot")
    # pylint: disable-next=protected-access
    want = promot._eval_key(base, ev and ev["step"], rp.LABEL_SET)
    if ev is not None and ev["key"] == want:
      return ev, theirs
    logging.warning("%s: its ProMoT evaluation settings differ (%s vs %s): running ProMoT here",
                    theirs, ev and ev["key"], want)
  cfg = dataclasses.replace(rp.promot_config(promot_args(args), seed, "main"),
                            run_dir=os.path.join(args.workdir, f"seed{seed}", "promot"))
  cfg = dataclasses.replace(cfg, promot=dataclasses.replace(cfg.promot, methods=("promot",)))
  report = promot.run(cfg, progress=False)
  return report["methods"]["promot"], os.path.join(cfg.run_dir, promot.REPORT_JSON)


def their_finetune(args, seed: int) -> dict | None:
  """repro_promot's finetune evaluation of this seed (the same run config as ours: a
  determinism check), if it has one."""
  path = os.path.join(args.pretrain_workdir, f"seed{seed}", "main", "report.json")
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    return json.load(fh)["methods"].get("finetune")


def run_seed(args, seed: int, timed) -> tuple[dict[str, dict], dict]:
  """Every method's evaluation for one seed (the ProMoT recipe's per-method dict), and where
  each came from."""
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  stages = train_stages(args, seed)
  base = base_config(args, seed)
  evals, sources = {}, {}
  first = os.path.join(args.workdir, "pretrained_eval")  # seed-independent: evaluated once
  base0 = dataclasses.replace(base, run_dir=first)
  evals["pretrained"] = timed(f"seed {seed} pretrained eval", promot.evaluate_method,
                              "pretrained", eval_stage(stages["finetune"]), None, base0,
                              rp.LABEL_SET)
  best = {}
  for name in ("finetune", "lora", "hft", "finetune_greater", "multitask", "lora_low"):
    st = stages[name]
    best[name] = timed(f"seed {seed} {name} train", promot.run_stage, st, progress=False)
    evals[name] = timed(f"seed {seed} {name} eval", promot.evaluate_method, name, eval_stage(st),
                        best[name], base, rp.LABEL_SET)
    sources[name] = f"{st.cfg.run_dir} (step {best[name]})"
  for name, (runs, _) in MERGES.items():
    inputs = [os.path.join(stages[r].cfg.run_dir, "checkpoints", str(best[r])) for r in runs]
    out = timed(f"seed {seed} {name} merge", merge, args, name, inputs,
                os.path.join(base.run_dir, name))
    evals[name] = timed(f"seed {seed} {name} eval", promot.evaluate_method, name,
                        eval_stage(stages["finetune"], out), 0, base, rp.LABEL_SET)
    sources[name] = out
  return evals, sources


# --- measures ------------------------------------------------------------------------------

def measures(ev: dict, pretrained: dict) -> dict:
  out = rp.measures(ev, pretrained)
  second = ev["target"].get(SECOND)
  out["target2"] = second["accuracy"] if second else None
  return out


def fmt(values, digits: int = 1) -> str:
  values = [v for v in values if v is not None]
  return rp.fmt(values, digits) if values else "-"


# --- the report ------------------------------------------------------------------------------

def plot(per_seed: dict[str, list[dict]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
  for ax, key, target in ((axes[0], "target", TARGET), (axes[1], "target2", SECOND)):
    for method, rows in per_seed.items():
      rows = [m for m in (rows[:1] if method == "pretrained" else rows) if m[key] is not None]
      if not rows:
        continue
      ax.scatter([m["retention"] for m in rows], [m[key] for m in rows],
                 marker="*" if method == "pretrained" else "o",
                 s=160 if method == "pretrained" else 40, alpha=0.85,
                 color=COLORS[method], label=METHODS[method][0])
    ax.set_xlabel(f"in-context accuracy, {SHOTS}-shot, no prompt (% of pretrained)")
    ax.set_ylabel(f"{target} accuracy (%)")
    ax.set_title(f"{target}: one point per method and seed", fontsize=9)
    ax.grid(alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
  fig.tight_layout(rect=(0, 0.16, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_results(args, per_seed, seeds, seconds: dict, sources: dict, checks: dict,
                  wall: float) -> str:
  command = " ".join(["python scripts/repro_forgetting.py", *sys.argv[1:]])
  png = os.path.splitext(args.out)[0] + ".png"
  k, f = SHOTS, args.model_steps
  steps = {"pretrained": "-", "finetune": f"{f}", "promot": f"{f} + {f}", "lora": f"{f}",
           "lora_low": f"{f}",
           "hft": f"{f}", "lines_g0.5": f"{f} + merge", "lines_g0": f"{f} + merge",
           "finetune_greater": f"{f}", "ta_0.5": f"2 x {f} + merge",
           "ta_1": f"2 x {f} + merge", "ties": f"2 x {f} + merge", "multitask": f"{2 * f}"}
  waits = sum(v for n, v in seconds.items() if "waiting" in n)
  seconds = {n: v for n, v in seconds.items() if "waiting" not in n}
  total = sum(seconds.values())
  lines = [
      "# Forgetting vs target accuracy: finetune, ProMoT, LoRA, HFT, LiNeS, merging, multi-task",
      "",
      f"Generated by `{command}` (`scripts/repro_forgetting.py`; its docstring is the design). "
      f"{len(seeds)} seeds ({', '.join(map(str, seeds))}): a seed sets `train.seed` (dropout, "
      "LoRA's A init, HFT's draw) and `data.seed` (training-example order); the pretrained "
      f"model (`{os.path.join(args.pretrain_workdir, 'pretrain')}`, scripts/repro_promot.py) "
      "and the evaluation examples are shared. F = "
      f"{f}. Time of this script's first run, beyond the shared pretraining: "
      f"{wall / 60:.1f} min wall clock from the first seed's start to the last seed's end; "
      f"the parts add up to {total / 60:.1f} min "
      f"({', '.join(f'{n} {v / 60:.1f}' for n, v in seconds.items())} min"
      + (f"; plus {waits / 60:.1f} min waiting for repro_promot's ProMoT results" if waits else "")
      + ").",
      "",
      f"Mean ± sd over seeds. Targets: zero-shot accuracy on {args.eval_examples} validation "
      f"examples of `{TARGET}` and `{SECOND}` (yes/no). In-context: the eight `fmt_*` tasks "
      f"(four families), no prompt, {args.eval_examples} examples each, exact match averaged "
      f"per family then over families; retention = {k}-shot in-context accuracy as % of the "
      "pretrained model's; format rate = % of outputs exactly \"yes\" or \"no\" (max over "
      "families).", "",
      f"| method | model-tuning steps | {TARGET} acc. | {SECOND} acc. | in-context 0-shot | "
      f"in-context {k}-shot | retention ({k}-shot) | max family format rate 0-shot | "
      f"max family format rate {k}-shot |",
      "|---|---|---|---|---|---|---|---|---|"]
  for method, rows in per_seed.items():
    rows = rows[:1] if method == "pretrained" else rows
    col = lambda key, rows=rows: [m[key] for m in rows]
    lines.append(f"| {METHODS[method][0]} | {steps[method]} | {fmt(col('target'))} | "
                 f"{fmt(col('target2'))} | {fmt(col('icl0'))} | {fmt(col(f'icl{k}'))} | "
                 f"{fmt(col('retention'))}% | {fmt(col('format0_max'))} | "
                 f"{fmt(col(f'format{k}_max'))} |")
  lines += ["", f"Per family: exact match 0-shot / {k}-shot, format rate 0-shot / {k}-shot.", "",
            "| method | " + " | ".join(f"{fam} EM | {fam} format" for fam in rp.FAMILIES) + " |",
            "|---|" + "---|---|" * len(rp.FAMILIES)]
  for method, rows in per_seed.items():
    rows = rows[:1] if method == "pretrained" else rows
    col = lambda key, rows=rows: [m[key] for m in rows]
    cells = []
    for fam in rp.FAMILIES:
      cells.append(f"{fmt(col(f'{fam}/acc0'))} / {fmt(col(f'{fam}/acc{k}'))}")
      cells.append(f"{fmt(col(f'{fam}/format0'))} / {fmt(col(f'{fam}/format{k}'))}")
    lines.append(f"| {METHODS[method][0]} | " + " | ".join(cells) + " |")
  lines += ["", f"![target accuracy vs in-context retention]({os.path.basename(png)})", "",
            "Per seed: `" + os.path.join(args.workdir, "per_seed.json") + "` (also where each "
            "ProMoT result came from: " + "; ".join(
                f"seed {s}: `{sources[s]['promot']}`" for s in seeds) + ")."]
  if checks:
    same = all(a == b for c in checks.values() for a, b in c.values())
    lines += ["", "Determinism check: this study's finetune runs have repro_promot's finetune "
              "config; (target, 0-shot, 2-shot in-context) there vs here: " + "; ".join(
                  f"seed {s}: " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in c.values())
                  for s, c in checks.items()) + (" (identical)." if same else " (NOT identical)."
                                                 )]
  lines += ["", MARKER, ""]
  body = "\n".join(lines)
  write_report(args.out, body)
  plot(per_seed, png)
  return body


def write_report(out: str, body: str) -> None:
  """Writes the generated `body` to `out`, keeping what was written by hand below MARKER."""
  tail = "## Reading\n\n(written by hand after the run)\n"
  if os.path.exists(out):
    with open(out) as fh:
      old = fh.read()
    if MARKER in old:
      tail = old[old.index(MARKER) + len(MARKER):].lstrip("\n")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as fh:
    fh.write(body + "\n" + tail)


def main(argv=None) -> None:
  args = parser().parse_args(argv)
  rp.quiet_logging()
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.workdir, exist_ok=True)
  rp.use_compilation_cache(args.workdir)

  # Timings of each part's first run, per seed in <workdir>/seed<N>/timings.json (seeds may run
  # in parallel processes); a resumed run keeps them. "wall" holds the seed's first start and
  # last end (epoch seconds).
  timings = {}
  for seed in seeds:
    path = os.path.join(args.workdir, f"seed{seed}", "timings.json")
    timings[seed] = {"parts": {}, "wall": {}}
    if os.path.exists(path):
      with open(path) as fh:
        timings[seed] = json.load(fh)

  def record(seed, name, seconds, start, last=False):
    mine = timings[seed]
    mine["parts"].setdefault(name, seconds)
    mine["wall"].setdefault("start", start)
    if last:
      mine["wall"].setdefault("end", time.time())
    path = os.path.join(args.workdir, f"seed{seed}", "timings.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
      json.dump(mine, fh, indent=1)

  def timed(name, fn, *a, **kw):
    seed = int(name.split()[1])
    t, start = time.perf_counter(), time.time()
    out = fn(*a, **kw)
    record(seed, name, time.perf_counter() - t, start)
    return out

  pretrain(args)
  per_seed = {m: [] for m in METHODS}
  sources = {}
  evals = {}
  for seed in seeds:
    evals[seed], sources[seed] = run_seed(args, seed, timed)
  checks = {}
  for seed in seeds:  # ProMoT last: repro_promot's study may still be producing it
    t, start = time.perf_counter(), time.time()
    evals[seed]["promot"], sources[seed]["promot"] = promot_result(args, seed, seeds)
    reused = sources[seed]["promot"].startswith(args.pretrain_workdir)
    record(seed, f"seed {seed} promot" + (" (reused; waiting)" if reused else ""),
           time.perf_counter() - t, start, last=True)
    for method in METHODS:
      per_seed[method].append(dict(measures(evals[seed][method], evals[seed]["pretrained"]),
                                   seed=seed))
    theirs = their_finetune(args, seed)
    if theirs is not None:
      a = measures(theirs, evals[seed]["pretrained"])
      b = per_seed["finetune"][-1]
      checks[seed] = {k: (a[k], b[k]) for k in ("target", "icl0", f"icl{SHOTS}")}
  with open(os.path.join(args.workdir, "per_seed.json"), "w") as fh:
    json.dump({"per_seed": per_seed, "sources": sources, "finetune_vs_repro_promot": checks},
              fh, indent=1)
  # seconds per kind of part, over seeds (the promot entry is ~0 when repro_promot's is reused)
  seconds = {}
  for name, v in [kv for seed in seeds for kv in timings[seed]["parts"].items()]:
    kind = name.split(" ", 2)[2]
    kind = "promot (reused; waiting)" if "waiting" in kind else kind
    kind = ("training" if kind.endswith(" train") else "evaluation" if kind.endswith(" eval")
            else "merging" if kind.endswith(" merge") else kind)
    seconds[kind] = seconds.get(kind, 0.0) + v
  walls = [timings[s]["wall"] for s in seeds]
  wall = max(w["end"] for w in walls) - min(w["start"] for w in walls)
  print(write_results(args, per_seed, seeds, seconds, sources, checks, wall))


if __name__ == "__main__":
  main()
