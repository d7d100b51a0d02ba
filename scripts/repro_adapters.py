"""Multi-task adapters on the forgetting suite (issue 30, point 3): multi-task accuracy per task
and in-context retention for LoRA, Poly, MHR, MixLoRA, LoRAMoE, MTLoRA and full multi-task
finetuning, at equal steps and roughly equal trainable parameters, plus each one's time per
step. Writes docs/results/adapters.{md,png}.

Design (written before any run):

  pretrained    scripts/repro_promot.py's `decoder_small` taught 1-3-shot in-context learning on
                `fmt_pretrain` (`--pretrain_steps`; an existing finished pretraining in
                `--pretrain_workdir` is reused, as repro_forgetting does)
  suite         `fmt_two_targets` (mtjax.mixtures.synthetic_forgetting): the two yes/no targets
                `fmt_vowel` and `fmt_greater`, equal rates; every method trains on it for F
                steps (batch 32, prefix-LM, inputs 24 / targets 8: repro_promot's per-seed data),
                keeping its best checkpoint on the two targets' average (every --eval_every)
  multitask     all parameters, ProMoT's model-tuning recipe (Adafactor 1e-3, dropout 0.1, label
                smoothing 0.1): repro_forgetting's multi-task row, at F instead of 2F steps
  adapters      `train.trainable=lora`, AdamW 1e-3 constant (repro_forgetting's LoRA optimizer),
                alpha / r = 2, all seven projections; sizes chosen for ~equal trainable
                parameters (LoRA rank 8 = 8 rank units per projection):
                  lora      rank 8
                  poly      4 skills of rank 2, one routing table per task
                  mhr       4 skills of rank 2, 2 routing blocks
                  mtlora    rank 3: shared + 2 task pairs = 9 rank units
                  loramoe   4 experts of rank 2 + a router per projection
                  mixlora   4 feed-forward experts of rank 2, top 2; attention LoRA rank 2
                            (MixLoRA's attention adapters share the rank: fewer parameters)
                the balancing losses at their default weight (model.adapter_balance = 0.01);
                LoRAMoE names no "world knowledge" task (every task is downstream); the
                task-routed methods (poly, mhr, mtlora) evaluate the in-context tasks with the
                adapters of `fmt_vowel` (model.adapter_default_task), as LoRA applies its one
                update to every input
  seeds         a seed sets train.seed (adapter init, dropout) and data.seed (example order);
                the pretrained model and the evaluation examples are shared

Measures (repro_promot's): zero-shot accuracy on each target (100 validation examples); in-context
exact match 0- and 2-shot on the eight `fmt_*` tasks (four families, prompt-free), averaged per
family then over families; retention = 2-shot in-context accuracy as % of the pretrained model's;
trainable parameters (model_summary.json); time per training step: the jitted step on one fixed
batch, 20 steps after 3 of warm-up, median of 3 rounds interleaved across methods (seed 0's
configs), so every method is timed under the same load.

What this can show: on one small synthetic suite, whether a method keeps the pretrained model's
in-context ability while learning two tasks, next to LoRA and full finetuning. What it cannot:
anything about scale, real task collections, or tuned hyperparameters (one setting per method).

  python scripts/repro_adapters.py                               # the study
  python scripts/repro_adapters.py --seeds=0 --model_steps=60    # a smoke run

Every stage is an ordinary mtjax run dir under --workdir; rerunning resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

from scripts import repro_forgetting as rf  # pylint: disable=wrong-import-position
from scripts import repro_promot as rp  # pylint: disable=wrong-import-position

from mtjax.mixtures import synthetic_forgetting as two  # pylint: disable=wrong-import-position

TARGET, SECOND = two.TARGETS
MIXTURE = two.TWO_TARGETS_MIXTURE
SHOTS = rp.SHOTS
MARKER = rf.MARKER

# method -> (label, model fields (None: full finetuning)). Order = the table's rows.
METHODS = {
    "pretrained": ("pretrained", None),
    "multitask": ("multi-task finetune (all parameters)", None),
    "lora": ("LoRA (r 8)", dict(adapter="lora", lora_rank=8)),
    "poly": ("Poly (4 skills x r 2)", dict(adapter="poly", lora_rank=2, adapter_experts=4)),
    "mhr": ("MHR (4 skills x r 2, 2 blocks)", dict(adapter="mhr", lora_rank=2,
                                                   adapter_experts=4, adapter_heads=2)),
    "mtlora": ("MTLoRA (r 3 shared + r 3 per task)", dict(adapter="mtlora", lora_rank=3)),
    "loramoe": ("LoRAMoE (4 experts x r 2)", dict(adapter="loramoe", lora_rank=2,
                                                  adapter_experts=4)),
    "mixlora": ("MixLoRA (4 FFN experts x r 2, top 2)", dict(adapter="mixlora", lora_rank=2,
                                                            adapter_experts=4, adapter_top_k=2)),
    # added after the study (not in its design or default --methods): Polytropon's
    # relaxed-Bernoulli training routing (model.adapter_routing=gumbel), run on seed 0 only
    "poly_gumbel": ("Poly, Gumbel-sigmoid routing", dict(adapter="poly", lora_rank=2,
                                                         adapter_experts=4,
                                                         adapter_routing="gumbel")),
    "mhr_gumbel": ("MHR, Gumbel-sigmoid routing", dict(adapter="mhr", lora_rank=2,
                                                       adapter_experts=4, adapter_heads=2,
                                                       adapter_routing="gumbel")),
}
DESIGNED = ("pretrained", "multitask", "lora", "poly", "mhr", "mtlora", "loramoe", "mixlora")
TASK_ROUTED = ("poly", "mhr", "mtlora", "poly_gumbel", "mhr_gumbel")
COLORS = {"pretrained": "black", "multitask": "tab:gray", "lora": "tab:blue", "poly": "tab:green",
          "mhr": "tab:olive", "mtlora": "tab:purple", "loramoe": "tab:orange",
          "mixlora": "tab:red", "poly_gumbel": "tab:cyan", "mhr_gumbel": "tab:brown"}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  defaults = rf.parser().parse_args([])
  for name in ("pretrain_workdir", "cache_dir", "preset", "pretrain_steps", "seeds",
               "prompt_length", "model_steps", "eval_every", "eval_examples"):
    p.add_argument(f"--{name}", default=getattr(defaults, name),
                   type=type(getattr(defaults, name)))
  p.add_argument("--workdir", default="runs/repro_adapters")
  p.add_argument("--lr", type=float, default=1e-3, help="the adapters' AdamW learning rate")
  p.add_argument("--methods", default=",".join(DESIGNED),
                 help="the design's methods by default; also poly_gumbel, mhr_gumbel")
  p.add_argument("--timing_steps", type=int, default=20,
                 help="steps timed per method and round (0: no timing)")
  p.add_argument("--out", default="docs/results/adapters.md")
  return p


def forgetting_args(args) -> argparse.Namespace:
  """repro_forgetting's arguments for the same pretraining and per-seed base config."""
  return rf.parser().parse_args([
      f"--pretrain_workdir={args.pretrain_workdir}", f"--workdir={args.workdir}",
      f"--cache_dir={args.cache_dir}", f"--preset={args.preset}",
      f"--pretrain_steps={args.pretrain_steps}", f"--seeds={args.seeds}",
      f"--prompt_length={args.prompt_length}", f"--model_steps={args.model_steps}",
      f"--eval_every={args.eval_every}", f"--eval_examples={args.eval_examples}"])


def base_config(args, seed: int):
  """repro_forgetting's per-seed base config, its `train.init_from` pinned to the pretraining's
  step `--pretrain_steps` (a step dir, not the run dir). The first study named the run dir, whose
  latest step another process continuing that pretraining moved from 1000 towards 2000 while seed
  0 ran: seed 0's methods started from three different pretrained checkpoints and seeds 1 and 2
  from a fourth (docs/results/adapters.md). A step dir that is gone fails loudly instead."""
  base = rf.base_config(forgetting_args(args), seed)
  step_dir = os.path.join(base.train.init_from, "checkpoints", str(args.pretrain_steps))
  return dataclasses.replace(base, train=dataclasses.replace(base.train, init_from=step_dir))


def stages(args, seed: int) -> dict:
  """The trained methods' stages (mtjax.recipes.promot.Stage), by method."""
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  base = base_config(args, seed)
  out = {}
  for method, (_, fields) in METHODS.items():
    if method == "pretrained" or method not in args.methods.split(","):
      continue
    trainable = ("all",) if fields is None else ("lora",)
    cfg = promot.model_stage(base, method, MIXTURE, two.TARGETS, base.data.inputs_length,
                             prompt=False, trainable=trainable)
    if fields is not None:
      extra = dict(lora_alpha=2.0 * fields["lora_rank"], lora_targets=rf.LORA_TARGETS,
                   **fields)
      if method in TASK_ROUTED:
        extra["adapter_default_task"] = TARGET
      cfg = dataclasses.replace(
          cfg, model=dataclasses.replace(cfg.model, **extra),
          optimizer=dataclasses.replace(cfg.optimizer, name="adamw", learning_rate=args.lr,
                                        schedule="constant", warmup_steps=0, weight_decay=0.0))
    out[method] = promot.Stage(method, cfg, two.TARGETS)
  return out


def trainable_params(run_dir: str) -> int:
  with open(os.path.join(run_dir, "model_summary.json")) as fh:
    return json.load(fh)["num_trainable"]


def step_times(stage_by_method: dict, steps: int, rounds: int = 3) -> dict[str, float]:
  """Seconds per training step of each method: its jitted step on one fixed batch of its own
  pipeline, `steps` steps after 3 of warm-up, median over `rounds` interleaved rounds."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mtjax.parallel import arrays  # pylint: disable=g-import-not-at-top
  from mtjax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from mtjax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  runners = {}
  for method, stage in stage_by_method.items():
    cfg = dataclasses.replace(stage.cfg, run_dir=stage.cfg.run_dir + "_timing")
    setup = setup_lib.build(cfg)
    batch = setup_lib.local_batch(setup, next(setup_lib.data_iterator(setup)))
    step = step_lib.make_train_step(
        setup.graphdef, setup.tx, num_tasks=len(setup.spec.task_names), trainable=setup.trainable,
        donate=False, loss_options=step_lib.LossOptions(
            label_smoothing=cfg.train.label_smoothing),
        dropout_seed=cfg.train.seed)
    batch = arrays.global_batch(batch, setup.mesh, setup.rules)
    state = [setup.params, setup.opt_state]

    def run(n, step=step, batch=batch, state=state, mesh=setup.mesh):
      with jax.set_mesh(mesh):
        t = time.perf_counter()
        for i in range(n):
          state[0], state[1], m = step(state[0], state[1], batch, i)
        jax.block_until_ready(m["loss"])
        return (time.perf_counter() - t) / n

    run(3)
    runners[method] = run
  times = {m: [] for m in runners}
  for _ in range(rounds):
    for method, run in runners.items():
      times[method].append(run(steps))
  return {m: float(np.median(v)) for m, v in times.items()}


def run_seed(args, seed: int, timed) -> tuple[dict, dict]:
  """Every method's evaluation and trainable-parameter count for one seed."""
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  st = stages(args, seed)
  base = base_config(args, seed)
  evals, sizes = {}, {}
  first = os.path.join(args.workdir, "pretrained_eval")  # seed-independent: evaluated once
  any_stage = next(iter(st.values()))
  evals["pretrained"] = timed(f"seed {seed} pretrained eval", promot.evaluate_method,
                              "pretrained", rf.eval_stage(any_stage), None,
                              dataclasses.replace(base, run_dir=first), rp.LABEL_SET)
  for name, stage in st.items():
    best = timed(f"seed {seed} {name} train", promot.run_stage, stage, progress=False)
    evals[name] = timed(f"seed {seed} {name} eval", promot.evaluate_method, name,
                        rf.eval_stage(stage), best, base, rp.LABEL_SET)
    sizes[name] = trainable_params(stage.cfg.run_dir)
  return evals, sizes


def measures(ev: dict, pretrained: dict) -> dict:
  out = rf.measures(ev, pretrained)
  out["mean_target"] = (out["target"] + out["target2"]) / 2 if out["target2"] is not None \
      else None
  return out


def fmt(values, digits: int = 1) -> str:
  return rf.fmt(values, digits)


def plot(per_seed: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 5))
  for method, rows in per_seed.items():
    rows = [m for m in rows if m.get("mean_target") is not None]
    if not rows:
      continue
    ax.scatter([m["retention"] for m in rows], [m["mean_target"] for m in rows],
               marker="*" if method == "pretrained" else "o",
               s=160 if method == "pretrained" else 40, alpha=0.85, color=COLORS[method],
               label=METHODS[method][0])
  ax.set_xlabel(f"in-context accuracy, {SHOTS}-shot, no prompt (% of pretrained)")
  ax.set_ylabel(f"mean of {TARGET} and {SECOND} accuracy (%)")
  ax.set_title("one point per method and seed", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_results(args, per_seed, seeds, sizes, times, seconds, wall) -> str:
  command = " ".join(["python scripts/repro_adapters.py", *sys.argv[1:]])
  png = os.path.splitext(args.out)[0] + ".png"
  k, f = SHOTS, args.model_steps
  total = sum(seconds.values())
  lines = [
      "# Multi-task adapters: per-task accuracy and in-context retention",
      "",
      f"Generated by `{command}` (`scripts/repro_adapters.py`; its docstring is the design, "
      f"written before the runs). {len(seeds)} seeds ({', '.join(map(str, seeds))}); the "
      f"pretrained model (`{os.path.join(args.pretrain_workdir, 'pretrain')}`, "
      f"{args.pretrain_steps} steps of scripts/repro_promot.py's pretraining) and the evaluation "
      f"examples are shared. F = {f} steps for every method. "
      + (f"Time: {wall / 60:.1f} min wall clock for the seeds; the parts add up to "
         f"{total / 60:.1f} min ({', '.join(f'{n} {v / 60:.1f}' for n, v in seconds.items())} "
         "min), on 2 CPU cores." if seconds.get("training", 0) > 60 else
         "Every run and evaluation was reused from earlier processes of this script (one per "
         "seed, in parallel): their times are in the hand-written part below."),
      "",
      f"Mean ± sd over seeds. Targets: zero-shot accuracy on {args.eval_examples} validation "
      f"examples of `{TARGET}` and `{SECOND}` (both trained, one mixture). In-context: the eight "
      f"`fmt_*` tasks, no prompt, {args.eval_examples} examples each, exact match averaged per "
      f"family then over families; retention = {k}-shot in-context accuracy as % of the "
      "pretrained model's. Time per step: the jitted train step on one batch of 32 rows "
      "(see the design), median of 3 rounds.",
      "",
      f"| method | trainable parameters | {TARGET} acc. | {SECOND} acc. | mean | "
      f"in-context 0-shot | in-context {k}-shot | retention ({k}-shot) | "
      f"max family format rate {k}-shot | ms / step |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for method, rows in per_seed.items():
    col = lambda key, rows=rows: [m[key] for m in rows]
    size = f"{sizes[method]:,}" if method in sizes else "-"
    ms = f"{1000 * times[method]:.1f}" if method in times else "-"
    lines.append(f"| {METHODS[method][0]} | {size} | {fmt(col('target'))} | "
                 f"{fmt(col('target2'))} | {fmt(col('mean_target'))} | {fmt(col('icl0'))} | "
                 f"{fmt(col(f'icl{k}'))} | {fmt(col('retention'))}% | "
                 f"{fmt(col(f'format{k}_max'))} | {ms} |")
  lines += ["", f"Per family: exact match 0-shot / {k}-shot, format rate 0-shot / {k}-shot.", "",
            "| method | " + " | ".join(f"{fam} EM | {fam} format" for fam in rp.FAMILIES) + " |",
            "|---|" + "---|---|" * len(rp.FAMILIES)]
  for method, rows in per_seed.items():
    col = lambda key, rows=rows: [m[key] for m in rows]
    cells = []
    for fam in rp.FAMILIES:
      cells.append(f"{fmt(col(f'{fam}/acc0'))} / {fmt(col(f'{fam}/acc{k}'))}")
      cells.append(f"{fmt(col(f'{fam}/format0'))} / {fmt(col(f'{fam}/format{k}'))}")
    lines.append(f"| {METHODS[method][0]} | " + " | ".join(cells) + " |")
  lines += ["", f"![mean target accuracy vs in-context retention]({os.path.basename(png)})", "",
            "Per seed: `" + os.path.join(args.workdir, "per_seed.json") + "`.", "", MARKER, ""]
  body = "\n".join(lines)
  rf.write_report(args.out, body)
  plot(per_seed, png)
  return body


def main(argv=None) -> None:
  args = parser().parse_args(argv)
  rp.quiet_logging()
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.workdir, exist_ok=True)
  rp.use_compilation_cache(args.workdir)
  seconds: dict[str, float] = {}

  def timed(name, fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    kind = name.split(" ", 2)[2]
    kind = ("training" if kind.endswith(" train") else "evaluation" if kind.endswith(" eval")
            else kind)
    seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - t
    return out

  rf.pretrain(forgetting_args(args))
  start = time.time()
  per_seed = {m: [] for m in METHODS if m == "pretrained" or m in args.methods.split(",")}
  sizes = {}
  for seed in seeds:
    evals, sizes = run_seed(args, seed, timed)
    for method in per_seed:
      per_seed[method].append(dict(measures(evals[method], evals["pretrained"]), seed=seed))
  wall = time.time() - start
  times = {}
  if args.timing_steps > 0:  # (0: no timing, e.g. for one seed's process of a parallel run)
    t = time.perf_counter()
    times = step_times(stages(args, seeds[0]), args.timing_steps)
    seconds["step timing"] = time.perf_counter() - t
  with open(os.path.join(args.workdir, "per_seed.json"), "w") as fh:
    json.dump({"per_seed": per_seed, "trainable": sizes, "seconds_per_step": times}, fh,
              indent=1)
  print(write_results(args, per_seed, seeds, sizes, times, seconds, wall))


if __name__ == "__main__":
  main()
