"""Reproduces ProMoT's qualitative finding at small scale, from scratch, on a CPU.

1. Pretrain a small decoder (`decoder_small`, prefix-LM, byte vocabulary) on `icl_pretrain`
   (mtjax.mixtures.synthetic_icl): 1-, 2- and 3-shot episodes of tasks that are only knowable from
   their demonstrations, in two families with different output formats (letters: copy or
   reverse; numbers: the larger or the smaller of two). The model learns k-shot in-context
   learning.
2. `mtjax.recipes.promot` on that model with the zero-shot yes/no task `synthetic_compare` as the
   target: the pretrained model, (a) plain finetuning, prompt tuning alone and (b) ProMoT, each
   measured on the target and, prompt removed, 2-shot on the four in-context tasks, with the
   format-specialisation rate (share of "yes"/"no" outputs).
3. Writes the table and the issue's success criteria, checked, to
   `docs/results/promot_repro.md` (and `<workdir>/promot/report.{json,md}`).

  python scripts/repro_promot.py                       # 15-20 min on a (shared) 2-core CPU
  python scripts/repro_promot.py --pretrain_steps=200  # a quicker, weaker run

Rerunning resumes every stage (all are ordinary mtjax run dirs under --workdir).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # data.modules are imported from the repository root

from mtjax.config import schema  # pylint: disable=wrong-import-position

FAMILIES = {"letters": ("icl_copy", "icl_reverse"), "numbers": ("icl_larger", "icl_smaller")}
TARGET = "synthetic_compare"
SHOTS = 2


def pretrain_config(args) -> schema.RunConfig:
  return schema.RunConfig(
      run_dir=os.path.join(args.workdir, "pretrain"),
      data=schema.DataConfig(mixture="icl_pretrain", modules=("mtjax.mixtures.synthetic_icl",),
                             cache_dir=args.cache_dir, inputs_length=64, targets_length=8,
                             batch_size=32, feature_converter="prefix_lm"),
      model=schema.ModelConfig(preset=args.preset),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="cosine",
                                       warmup_steps=100),
      train=schema.TrainConfig(steps=args.pretrain_steps, log_every=100,
                               checkpoint_every=500, keep_checkpoints=1),
      eval=schema.EvalConfig(at_end=False),
      mesh=schema.MeshConfig(data=1))


def promot_config(args) -> schema.RunConfig:
  tasks = tuple(t for family in FAMILIES.values() for t in family)
  return schema.RunConfig(
      run_dir=os.path.join(args.workdir, "promot"),
      data=schema.DataConfig(mixture=TARGET, modules=("mtjax.mixtures.synthetic_icl",),
                             cache_dir=args.cache_dir, inputs_length=56, targets_length=8,
                             batch_size=32, feature_converter="prefix_lm"),
      model=schema.ModelConfig(preset=args.preset),
      train=schema.TrainConfig(init_from=os.path.join(args.workdir, "pretrain"), log_every=50),
      eval=schema.EvalConfig(max_examples=args.eval_examples, batch_size=100,
                             few_shot=(SHOTS,), other_tasks=tasks, label_set=("yes", "no")),
      mesh=schema.MeshConfig(data=1),
      promot=schema.PromotConfig(
          methods=("pretrained", "finetune", "prompt_tuning", "promot"),
          prompt_length=args.prompt_length, prompt_steps=args.prompt_steps,
          model_steps=args.model_steps, eval_every=args.eval_every))


def families(ev: dict, k: int) -> dict[str, dict[str, float]]:
  """Per family: mean exact match and mean format rate of its tasks at k shots."""
  out = {}
  for family, tasks in FAMILIES.items():
    rows = [ev["other"][t][str(k)] for t in tasks]
    out[family] = {"accuracy": sum(r["exact_match"] for r in rows) / len(rows),
                   "format_rate": sum(r["format_rate"] for r in rows) / len(rows)}
  return out


def criteria(report: dict) -> list[tuple[str, bool, str]]:
  """The issue's success criteria, each with the numbers it was decided on."""
  m = report["methods"]
  fam = {method: families(m[method], SHOTS) for method in ("pretrained", "finetune", "promot")}
  icl = {method: sum(f["accuracy"] for f in fam[method].values()) / len(FAMILIES)
         for method in fam}
  target = {method: m[method]["target"][TARGET]["accuracy"] for method in fam}
  ft_rate = max(f["format_rate"] for f in fam["finetune"].values())
  pm_rate = max(f["format_rate"] for f in fam["promot"].values())
  return [
      ("plain finetuning specialises: format rate > 50% on some family",
       ft_rate > 50, f"max family rate {ft_rate:.1f}%"),
      ("plain finetuning loses in-context accuracy", icl["finetune"] < icl["pretrained"],
       f"{icl['finetune']:.1f} vs pretrained {icl['pretrained']:.1f}"),
      ("ProMoT keeps the format rate under 20% on every family", pm_rate < 20,
       f"max family rate {pm_rate:.1f}%"),
      ("ProMoT keeps >= 80% of the pretrained in-context accuracy",
       icl["promot"] >= 0.8 * icl["pretrained"],
       f"{icl['promot']:.1f} vs 0.8 x {icl['pretrained']:.1f} = {0.8 * icl['pretrained']:.1f}"),
      ("ProMoT within 2 points of plain finetuning on the target",
       target["promot"] >= target["finetune"] - 2,
       f"{target['promot']:.1f} vs {target['finetune']:.1f}"),
  ]


def write_results(args, report: dict, seconds: dict) -> str:
  """Writes the generated part of `args.out`; a `## Notes` section already there is kept."""
  command = " ".join(["python scripts/repro_promot.py", *sys.argv[1:]])
  lines = [
      "# ProMoT reproduction (small scale, from scratch, CPU)", "",
      f"Produced by `{command}`; a fresh run took {sum(seconds.values()) / 60:.1f} min on this "
      "project's shared 2-core CPU machine (" +
      ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()) + ").", "",
      "Setup: a `" + args.preset + "` decoder (prefix-LM, byte vocabulary) pretrained from "
      f"scratch for {args.pretrain_steps} steps on `icl_pretrain` (1-3-shot episodes of four "
      "tasks only knowable from their demonstrations: letters copy/reverse, numbers "
      f"larger/smaller). Target: `{TARGET}` zero-shot (yes/no). ProMoT: prompt of "
      f"{args.prompt_length} vectors, {args.prompt_steps} prompt-tuning steps (Adafactor 0.3, "
      f"no parameter scaling), {args.model_steps} model-tuning steps (Adafactor 1e-3, dropout "
      "0.1, label smoothing 0.1), best checkpoint by target accuracy every "
      f"{args.eval_every} steps; plain finetuning uses the same model-tuning recipe. "
      f"In-context tasks are evaluated {SHOTS}-shot with the prompt removed on "
      f"{args.eval_examples} validation examples each; format rate = % of outputs that are "
      "\"yes\" or \"no\".", "",
      (f"| model | target accuracy | letters EM 0-shot / {SHOTS}-shot | letters format rate "
       f"{SHOTS}-shot | numbers EM 0-shot / {SHOTS}-shot | numbers format rate {SHOTS}-shot |"),
      "|---|---|---|---|---|---|"]
  for method in report["methods"]:
    ev = report["methods"][method]
    fam, zero = families(ev, SHOTS), families(ev, 0)
    lines.append(f"| {method} | {ev['target'][TARGET]['accuracy']:.1f} | "
                 f"{zero['letters']['accuracy']:.1f} / {fam['letters']['accuracy']:.1f} | "
                 f"{fam['letters']['format_rate']:.1f} | "
                 f"{zero['numbers']['accuracy']:.1f} / {fam['numbers']['accuracy']:.1f} | "
                 f"{fam['numbers']['format_rate']:.1f} |")
  lines += ["", "Success criteria of issue 7:", ""]
  for name, ok, detail in criteria(report):
    lines.append(f"- [{'x' if ok else ' '}] {name} ({detail})")
  lines += ["", "Zero-shot and per-task numbers: `" + os.path.join(args.workdir, "promot",
                                                                   "report.md") + "`.", ""]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  body = "\n".join(lines) + "\n"
  notes = ""
  if os.path.exists(args.out):
    with open(args.out) as f:
      old = f.read()
    if "\n## Notes" in old:
      notes = old[old.index("\n## Notes"):]
  with open(args.out, "w") as f:
    f.write(body + notes)
  return body


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/repro_promot")
  parser.add_argument("--cache_dir", default=".cache/mtjax")
  parser.add_argument("--preset", default="decoder_small")
  parser.add_argument("--pretrain_steps", type=int, default=1200)
  parser.add_argument("--prompt_length", type=int, default=20)
  parser.add_argument("--prompt_steps", type=int, default=300)
  parser.add_argument("--model_steps", type=int, default=300)
  parser.add_argument("--eval_every", type=int, default=100)
  parser.add_argument("--eval_examples", type=int, default=100)
  parser.add_argument("--out", default="docs/results/promot_repro.md")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("jax", "orbax", "tensorflow", "absl"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top
  from mtjax.train import loop  # pylint: disable=g-import-not-at-top

  # Timings are those of a fresh run (kept in <workdir>/timings.json); a resumed run reuses them.
  timings = os.path.join(args.workdir, "timings.json")
  fresh = not os.path.exists(os.path.join(args.workdir, "pretrain", "checkpoints"))
  seconds = {}
  t = time.perf_counter()
  loop.train(pretrain_config(args), progress=False)
  seconds["pretraining"] = time.perf_counter() - t
  t = time.perf_counter()
  report = promot.run(promot_config(args), progress=False)
  seconds["ProMoT stages and evaluation"] = time.perf_counter() - t
  if fresh or not os.path.exists(timings):
    with open(timings, "w") as f:
      json.dump(seconds, f)
  with open(timings) as f:
    seconds = json.load(f)
  print(write_results(args, report, seconds))
  print(json.dumps({name: ok for name, ok, _ in criteria(report)}, indent=1))


if __name__ == "__main__":
  main()
