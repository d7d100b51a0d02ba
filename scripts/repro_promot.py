"""ProMoT at small scale, from scratch, on a CPU: does plain finetuning specialise its output
format, and does ProMoT avoid it? (issue 17; the design and its rationale are in
docs/results/promot_repro.md, "Design").

1. `pretrain(args)`: a small decoder (`decoder_small`, prefix-LM, byte vocabulary) learns k-shot
   in-context learning from scratch on `fmt_pretrain` (mtjax.mixtures.synthetic_format): 1-3-shot
   episodes of four families (letters copy/reverse, pick first/last letter, numbers
   larger/smaller, order true/false) that all use the layout "Q: <x>\\nA:" and are only
   knowable from their demonstrations. One pretraining, shared by every seed.
2. Per seed (`run_seed`): `mtjax.recipes.promot` on that model with the zero-shot yes/no target
   `fmt_vowel` (same layout, same alphabet): plain finetuning (F model-tuning steps), prompt
   tuning alone (F prompt steps), ProMoT (F prompt steps, then F model-tuning steps: equal
   model-tuning steps) and ProMoT at equal total steps (F/2 + F/2). A seed sets `train.seed`
   (prompt init, dropout) and `data.seed` (the order of the target's training examples).
3. Each method is measured on the target (its prompt attached) and, prompt removed, 0- and 2-shot
   on the eight in-context tasks, with the format-specialisation rate (share of "yes"/"no"
   outputs) per family. `write_results` writes the table (mean +- sd over seeds), the criteria of
   issue 17 with their verdicts, and the plot (target accuracy vs in-context retention, one point
   per method and seed) to `docs/results/promot_repro.{md,png}`.

  python scripts/repro_promot.py                       # the study (see the md for its time)
  python scripts/repro_promot.py --seeds=0 --pretrain_steps=300 --model_steps=100  # a smoke run

Rerunning resumes every stage (all are ordinary mtjax run dirs under --workdir). Another study
can reuse the pretraining: `from scripts.repro_promot import pretrain, parser, FAMILIES`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # data.modules are imported from the repository root

from mtjax.config import schema  # pylint: disable=wrong-import-position
from mtjax.mixtures import synthetic_format as suite  # pylint: disable=wrong-import-position

MODULES = ("mtjax.mixtures.synthetic_format",)
FAMILIES = suite.family_tasks()  # family -> its in-context tasks
TARGET = suite.TARGET
LABEL_SET = suite.LABEL_SET
SHOTS = 2  # the k of the k-shot in-context evaluation (and of every criterion)
# method -> (label, the recipe run it comes from, the recipe method)
METHODS = {
    "pretrained": ("pretrained", "main", "pretrained"),
    "finetune": ("finetune", "main", "finetune"),
    "prompt_tuning": ("prompt tuning", "main", "prompt_tuning"),
    "promot": ("ProMoT (equal model steps)", "main", "promot"),
    "promot_equal_total": ("ProMoT (equal total steps)", "equal_total", "promot"),
}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/repro_promot_fmt")
  p.add_argument("--cache_dir", default=".cache/mtjax")
  p.add_argument("--preset", default="decoder_small")
  p.add_argument("--pretrain_steps", type=int, default=2000)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--prompt_length", type=int, default=20)
  p.add_argument("--model_steps", type=int, default=300,
                 help="F: finetuning steps = ProMoT stage-2 steps = prompt-tuning steps")
  p.add_argument("--eval_every", type=int, default=75)
  p.add_argument("--eval_examples", type=int, default=100)
  p.add_argument("--out", default="docs/results/promot_repro.md")
  return p


# --- pretraining (shared by every seed, and by other studies on the same suite) ----------------

def pretrain_config(args) -> schema.RunConfig:
  return schema.RunConfig(
      run_dir=os.path.join(args.workdir, "pretrain"),
      data=schema.DataConfig(mixture=suite.PRETRAIN_MIXTURE, modules=MODULES,
                             cache_dir=args.cache_dir, inputs_length=72, targets_length=8,
                             batch_size=32, feature_converter="prefix_lm"),
      model=schema.ModelConfig(preset=args.preset),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="cosine",
                                       warmup_steps=100),
      train=schema.TrainConfig(steps=args.pretrain_steps, log_every=100,
                               checkpoint_every=500, keep_checkpoints=1),
      eval=schema.EvalConfig(at_end=False),
      mesh=schema.MeshConfig(data=1))


def pretrain(args) -> str:
  """Pretrains (or resumes, or finds finished) the in-context model; returns its run dir."""
  from mtjax.train import loop  # pylint: disable=g-import-not-at-top

  cfg = pretrain_config(args)
  loop.train(cfg, progress=False)
  return cfg.run_dir


def use_compilation_cache(workdir: str) -> None:
  """JAX's persistent compilation cache under the workdir: the seeds' stages share shapes, so
  each compiles once (a fresh workdir is a cold start, so timings stay honest)."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(workdir,
                                                                               "jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# --- the ProMoT recipe per seed ------------------------------------------------------------------

def other_tasks() -> tuple[str, ...]:
  return tuple(t for tasks in FAMILIES.values() for t in tasks)


def promot_config(args, seed: int, run: str) -> schema.RunConfig:
  """`run`: "main" (finetune, prompt tuning, ProMoT with F + F steps) or "equal_total"
  (ProMoT with F/2 + F/2 steps)."""
  f = args.model_steps
  steps = (f, f) if run == "main" else (f // 2, f - f // 2)
  methods = (("pretrained", "finetune", "prompt_tuning", "promot") if run == "main" else
             ("promot",))
  return schema.RunConfig(
      run_dir=os.path.join(args.workdir, f"seed{seed}", run),
      data=schema.DataConfig(mixture=TARGET, modules=MODULES, cache_dir=args.cache_dir,
                             inputs_length=24, targets_length=8, batch_size=32,
                             feature_converter="prefix_lm", seed=seed),
      model=schema.ModelConfig(preset=args.preset),
      train=schema.TrainConfig(init_from=os.path.join(args.workdir, "pretrain"), log_every=50,
                               seed=seed),
      eval=schema.EvalConfig(max_examples=args.eval_examples, batch_size=100,
                             few_shot=(SHOTS,), other_tasks=other_tasks(),
                             label_set=LABEL_SET),
      mesh=schema.MeshConfig(data=1),
      promot=schema.PromotConfig(methods=methods, prompt_length=args.prompt_length,
                                 prompt_steps=steps[0], model_steps=steps[1],
                                 eval_every=args.eval_every))


def _share_pretrained_eval(args, seed: int, seeds: list[int]) -> None:
  """The pretrained model's evaluation does not depend on the seed (greedy decoding of the same
  checkpoint on the same examples): the first seed's is copied to the others' run dirs, where
  the recipe finds it (its key, the evaluation settings, matches) instead of decoding again."""
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  first = os.path.join(args.workdir, f"seed{seeds[0]}", "main", "pretrained", promot.EVAL_FILE)
  mine = os.path.join(args.workdir, f"seed{seed}", "main", "pretrained", promot.EVAL_FILE)
  if seed != seeds[0] and os.path.exists(first) and not os.path.exists(mine):
    os.makedirs(os.path.dirname(mine), exist_ok=True)
    shutil.copyfile(first, mine)


def run_seed(args, seed: int, seeds: list[int]) -> dict[str, dict]:
  """Every method's evaluation (the recipe's per-method dict) for one seed."""
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  _share_pretrained_eval(args, seed, seeds)
  reports = {run: promot.run(promot_config(args, seed, run), progress=False)
             for run in ("main", "equal_total")}
  return {m: reports[run]["methods"][method] for m, (_, run, method) in METHODS.items()}


# --- measures --------------------------------------------------------------------------------

def family_metrics(ev: dict, k: int) -> dict[str, dict[str, float]]:
  """Per family: mean exact match and mean format rate of its tasks at k shots."""
  out = {}
  for family, tasks in FAMILIES.items():
    rows = [ev["other"][t][str(k)] for t in tasks]
    out[family] = {"accuracy": sum(r["exact_match"] for r in rows) / len(rows),
                   "format_rate": sum(r["format_rate"] for r in rows) / len(rows)}
  return out


def measures(ev: dict, pretrained: dict) -> dict[str, float]:
  """One method and seed, flat: target accuracy, in-context accuracy (mean over families) at 0
  and k shots, k-shot retention (% of the pretrained model's), per-family accuracy and format
  rate at 0 and k shots."""
  out = {"target": ev["target"][TARGET]["accuracy"]}
  for k in (0, SHOTS):
    fam = family_metrics(ev, k)
    out[f"icl{k}"] = statistics.mean(f["accuracy"] for f in fam.values())
    for family, f in fam.items():
      out[f"{family}/acc{k}"] = f["accuracy"]
      out[f"{family}/format{k}"] = f["format_rate"]
    out[f"format{k}_max"] = max(f["format_rate"] for f in fam.values())
  base = statistics.mean(f["accuracy"] for f in family_metrics(pretrained, SHOTS).values())
  out["retention"] = 100.0 * out[f"icl{SHOTS}"] / base if base else float("nan")
  return out


def mean_sd(values: list[float]) -> tuple[float, float]:
  return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 1) -> str:
  m, s = mean_sd(values)
  return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


# --- criteria --------------------------------------------------------------------------------

def criteria(per_seed: dict[str, list[dict]]) -> list[tuple[str, bool, str]]:
  """Issue 17's criteria, each decided on the mean over seeds, with the seed spread (and how
  many seeds pass on their own) in its detail."""
  k = SHOTS
  n = len(per_seed["finetune"])
  pre = per_seed["pretrained"][0]
  out = []

  def col(method, key):
    return [m[key] for m in per_seed[method]]

  def seeds_ok(method, test):
    return f"{sum(bool(test(m)) for m in per_seed[method])}/{n} seeds"

  # finetune specialises: the family with the highest mean format rate
  fam = max(FAMILIES, key=lambda f: statistics.mean(col("finetune", f"{f}/format{k}")))
  rate = col("finetune", f"{fam}/format{k}")
  out.append((f"finetune: format rate > 50% on at least one in-context family ({k}-shot)",
              statistics.mean(rate) > 50,
              f"highest: {fam} {fmt(rate)}% (pretrained {pre[f'{fam}/format{k}']:.1f}%); "
              f"{seeds_ok('finetune', lambda m: m[f'format{k}_max'] > 50)} have a family > 50%"))
  drop = [pre[f"icl{k}"] - m[f"icl{k}"] for m in per_seed["finetune"]]
  out.append((f"finetune: in-context accuracy drops ({k}-shot, mean over families)",
              statistics.mean(drop) > 0,
              f"{fmt(col('finetune', f'icl{k}'))} vs pretrained {pre[f'icl{k}']:.1f}: "
              f"drop {fmt(drop)} points"))
  for method in ("promot", "promot_equal_total"):
    label = METHODS[method][0]
    rates = {f: col(method, f"{f}/format{k}") for f in FAMILIES}
    worst = max(rates, key=lambda f: statistics.mean(rates[f]))
    out.append((f"{label}: format rate < 20% on every family ({k}-shot)",
                all(statistics.mean(r) < 20 for r in rates.values()),
                f"highest: {worst} {fmt(rates[worst])}%; "
                f"{seeds_ok(method, lambda m: m[f'format{k}_max'] < 20)} pass"))
    ret = col(method, "retention")
    out.append((f"{label}: >= 80% of the pretrained in-context accuracy ({k}-shot)",
                statistics.mean(ret) >= 80,
                f"{fmt(col(method, f'icl{k}'))} vs pretrained {pre[f'icl{k}']:.1f}: "
                f"{fmt(ret)}% (finetune {fmt(col('finetune', 'retention'))}%); "
                f"{seeds_ok(method, lambda m: m['retention'] >= 80)} pass"))
  diff = [p["target"] - f["target"] for p, f in zip(per_seed["promot"], per_seed["finetune"])]
  out.append(("ProMoT's target accuracy within 2 points of finetuning at equal model-tuning "
              "steps", statistics.mean(diff) >= -2,
              f"{fmt(col('promot', 'target'))} vs {fmt(col('finetune', 'target'))}: "
              f"difference {fmt(diff)} (paired by seed)"))
  diff_eq = [p["target"] - f["target"]
             for p, f in zip(per_seed["promot_equal_total"], per_seed["finetune"])]
  out.append(("(also) ProMoT at equal total steps: target within 2 points of finetuning",
              statistics.mean(diff_eq) >= -2,
              f"{fmt(col('promot_equal_total', 'target'))} vs "
              f"{fmt(col('finetune', 'target'))}: difference {fmt(diff_eq)}"))
  return out


# --- the report --------------------------------------------------------------------------------

def plot(per_seed: dict[str, list[dict]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  markers = {"pretrained": "*", "finetune": "o", "prompt_tuning": "s", "promot": "^",
             "promot_equal_total": "v"}
  for method, rows in per_seed.items():
    if method == "pretrained":
      rows = rows[:1]
    ax.scatter([m["retention"] for m in rows], [m["target"] for m in rows],
               marker=markers[method], s=90 if method == "pretrained" else 45, alpha=0.8,
               label=METHODS[method][0])
  ax.axvline(80, color="grey", lw=0.8, ls="--")
  ax.set_xlabel(f"in-context accuracy, {SHOTS}-shot, prompt removed (% of pretrained)")
  ax.set_ylabel(f"target accuracy ({TARGET}, %)")
  ax.set_title("Target accuracy vs in-context retention (one point per method and seed)",
               fontsize=9)
  ax.legend(fontsize=8, loc="best")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_results(args, per_seed: dict[str, list[dict]], seeds: list[int],
                  seconds: dict, load: list[float] = ()) -> str:
  """Writes the generated part of `args.out` (kept: a `## Design` section before it and a
  `## Notes` section after it, both written by hand) and the plot beside it."""
  command = " ".join(["python scripts/repro_promot.py", *sys.argv[1:]])
  f = args.model_steps
  png = os.path.splitext(args.out)[0] + ".png"
  steps = {"pretrained": ("-", "-"), "finetune": (f"0 + {f}", f"{f}"),
           "prompt_tuning": (f"{f} + 0", f"{f}"), "promot": (f"{f} + {f}", f"{2 * f}"),
           "promot_equal_total": (f"{f // 2} + {f - f // 2}", f"{f}")}
  k = SHOTS
  lines = [
      "## Results", "",
      f"Produced by `{command}` ({len(seeds)} seeds: {', '.join(map(str, seeds))}); the run "
      f"took {sum(seconds.values()) / 60:.1f} min (" +
      ", ".join(f"{name} {v / 60:.1f} min" for name, v in seconds.items()) +
      f") on {os.cpu_count()} CPU cores" +
      (f", 15-minute load average {min(load):.1f}-{max(load):.1f} at the end of each part"
       if load else "") +
      ". Mean ± standard deviation over seeds; the pretrained model is one checkpoint. "
      f"In-context columns: the eight `fmt_*` tasks with the prompt removed, {args.eval_examples} "
      "validation examples each, exact match averaged over the tasks of a family and then over "
      f"the four families; retention = {k}-shot in-context accuracy as % of the pretrained "
      "model's; format rate = % of outputs that are exactly \"yes\" or \"no\". Target: "
      f"`{TARGET}` zero-shot accuracy on {args.eval_examples} validation examples (the recipe "
      "keeps each stage's best checkpoint on them, every "
      f"{args.eval_every} steps, for every method alike).", "",
      f"| method | steps (prompt + model) | target acc. | in-context 0-shot | in-context "
      f"{k}-shot | retention | max family format rate {k}-shot | max family format rate "
      "0-shot |",
      "|---|---|---|---|---|---|---|---|"]
  for method, rows in per_seed.items():
    rows = rows[:1] if method == "pretrained" else rows
    col = lambda key, rows=rows: [m[key] for m in rows]
    lines.append(f"| {METHODS[method][0]} | {steps[method][0]} | {fmt(col('target'))} | "
                 f"{fmt(col('icl0'))} | {fmt(col(f'icl{k}'))} | {fmt(col('retention'))}% | "
                 f"{fmt(col(f'format{k}_max'))} | {fmt(col('format0_max'))} |")
  lines += ["", f"Per family: exact match 0-shot / {k}-shot, and format rate 0-shot / "
            f"{k}-shot (% yes/no).", "",
            "| method | " + " | ".join(f"{fam} EM | {fam} format" for fam in FAMILIES) + " |",
            "|---|" + "---|---|" * len(FAMILIES)]
  for method, rows in per_seed.items():
    rows = rows[:1] if method == "pretrained" else rows
    cells = []
    for fam in FAMILIES:
      col = lambda key, rows=rows: [m[key] for m in rows]
      cells.append(f"{fmt(col(f'{fam}/acc0'))} / {fmt(col(f'{fam}/acc{k}'))}")
      cells.append(f"{fmt(col(f'{fam}/format0'))} / {fmt(col(f'{fam}/format{k}'))}")
    lines.append(f"| {METHODS[method][0]} | " + " | ".join(cells) + " |")
  lines += ["", f"![target accuracy vs in-context retention]({os.path.basename(png)})", "",
            "Criteria of issue 17 (decided on the mean over seeds; the detail gives the spread "
            "and the seeds that pass alone):", ""]
  for name, ok, detail in criteria(per_seed):
    lines.append(f"- [{'x' if ok else ' '}] {'PASS' if ok else 'FAIL'}: {name} ({detail})")
  lines += ["", "Per seed and per task: `" + os.path.join(args.workdir, "seed<N>", "main",
                                                          "report.md") + "` (and `equal_total/`)."
            f" Per-seed numbers: `{os.path.join(args.workdir, 'per_seed.json')}`.", ""]
  body = "\n".join(lines) + "\n"
  head = ("# ProMoT reproduction: format specialisation (small scale, from scratch, CPU)\n\n"
          "## Design\n\n(to be written by hand)\n\n")
  notes = ""
  if os.path.exists(args.out):
    with open(args.out) as fh:
      old = fh.read()
    if "\n## Results" in old:
      head = old[:old.index("\n## Results") + 1]
    if "\n## Notes" in old:
      notes = old[old.index("\n## Notes"):]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as fh:
    fh.write(head + body + notes)
  plot(per_seed, png)
  return body


def quiet_logging() -> None:
  """INFO logs from the scripts, errors only from JAX / Orbax / TensorFlow / absl."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("jax", "orbax", "tensorflow", "absl"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None) -> None:
  args = parser().parse_args(argv)
  quiet_logging()
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.workdir, exist_ok=True)
  use_compilation_cache(args.workdir)

  # Timings are those of the first run of each part (kept in <workdir>/timings.json); a resumed
  # run reuses them.
  timings_path = os.path.join(args.workdir, "timings.json")
  timings = {}
  if os.path.exists(timings_path):
    with open(timings_path) as fh:
      timings = json.load(fh)

  def timed(name, fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    timings.setdefault(name, time.perf_counter() - t)
    timings.setdefault("load", {}).setdefault(name, os.getloadavg()[2])  # machine share
    with open(timings_path, "w") as fh:
      json.dump(timings, fh, indent=1)
    return out

  timed("pretraining", pretrain, args)
  per_seed = {m: [] for m in METHODS}
  for seed in seeds:
    evals = timed(f"seed {seed}", run_seed, args, seed, seeds)
    for method, ev in evals.items():
      per_seed[method].append(dict(measures(ev, evals["pretrained"]), seed=seed))
  with open(os.path.join(args.workdir, "per_seed.json"), "w") as fh:
    json.dump(per_seed, fh, indent=1)
  names = ["pretraining", *(f"seed {s}" for s in seeds)]
  seconds = {name: timings[name] for name in names}
  load = [timings.get("load", {}).get(name) for name in names]
  print(write_results(args, per_seed, seeds, seconds,
                      load=[x for x in load if x is not None]))
  for name, ok, detail in criteria(per_seed):
    print(f"{'PASS' if ok else 'FAIL'}: {name} ({detail})")


if __name__ == "__main__":
  main()
