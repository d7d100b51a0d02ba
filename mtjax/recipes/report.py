"""The ablation's results: per task and mixture, mean ± std over seeds, as CSV, Markdown and PNG.

Rows come from the members' `ablate_result.json` files. The std is the sample standard deviation
(ddof=1) over seeds, empty with one seed. Besides the eval metrics, each variant gets its
configured weight per task and the share of training examples actually drawn (`sampled_share`,
and `sampled_token_share` for target tokens, from the replayed batches; see
`mtjax.recipes.sampling`).

Files: `results.csv` (long format: variant, task, metric, mean, std, n, values), `results.md`,
`metrics.png` (per-task metric per mixture, error bars = std) and `mixture_weights.png`
(configured vs sampled shares). The folder may be a URL (`gs://...`): every file is made in
memory and written whole through `mtjax.fs`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from mtjax import fs

WEIGHT_METRICS = ("configured_weight", "sampled_share", "sampled_token_share")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (ddof=1; NaN with fewer than two values)."""
  values = [float(v) for v in values]
  if not values:
    return math.nan, math.nan
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, math.nan
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def average_label(num_tasks: int) -> str:
  """The task cell of an average row: it names how many tasks it pools, so averages over
  different sets of tasks (a metric only some tasks report) are never read as one."""
  return f"average ({num_tasks} tasks)"


def _member_values(result: Mapping) -> dict[tuple[str, str], float]:
  """(task, metric) -> value for one member, plus each metric's unweighted average over the
  tasks that report it. Only a metric with itself: never accuracy with exact match; nor
  per-template metrics (`rank_accuracy/template_<id>`: ids number each task's own templates)."""
  out = {}
  per_metric: dict[str, list[float]] = {}
  zero_shot = [r for r in result.get("eval", []) if "k" not in r]
  for r in zero_shot:
    for metric, value in r["metrics"].items():
      out[(r["task"], metric)] = float(value)
      if "/" not in metric:
        per_metric.setdefault(metric, []).append(float(value))
  for metric, values in per_metric.items():
    if len(values) > 1:  # an average of one task would repeat its row
      out[(average_label(len(values)), metric)] = sum(values) / len(values)
  sampled = result.get("sampled") or {}
  for task, rate in (result.get("rates") or {}).items():
    out[(task, "configured_weight")] = float(rate)
  for key, metric in (("examples", "sampled_share"), ("tokens", "sampled_token_share")):
    total = sum(s[key] for s in sampled.values())
    for task in (result.get("rates") or {}) if total else ():
      out[(task, metric)] = sampled.get(task, {key: 0})[key] / total
  return out


def rows(members: Sequence, results: Mapping[str, Mapping | None]) -> list[dict]:
  """Long-format rows, one per (variant, task, metric), in sweep / mixture order.

  `members` are the planned `sweep.Member`s, `results` maps a member name to its result (None:
  not finished; such members are left out of the means and counted in `missing`).
  """
  grouped: dict[tuple[str, str, str], list[float]] = {}
  order_tasks: list[str] = []
  for m in members:
    for task in m.rates:
      if task not in order_tasks:
        order_tasks.append(task)
  for m in members:
    result = results.get(m.name)
    if result is None:
      continue
    for (task, metric), value in _member_values(result).items():
      grouped.setdefault((m.variant.name, task, metric), []).append(value)
  variants = list(dict.fromkeys(m.variant.name for m in members))
  task_rank = {t: i for i, t in enumerate(order_tasks)}
  rank = lambda task: task_rank.get(task, len(task_rank) + (not task.startswith("average")))
  out = []
  for (variant, task, metric), values in sorted(
      grouped.items(), key=lambda kv: (variants.index(kv[0][0]), kv[0][2] in WEIGHT_METRICS,
                                       rank(kv[0][1]), kv[0][1], kv[0][2])):
    mean, std = mean_std(values)
    out.append({"variant": variant, "task": task, "metric": metric, "mean": mean, "std": std,
                "n": len(values), "values": values})
  return out


def csv_text(table: Sequence[dict]) -> str:
  """The long-format table as CSV text (what `results.csv` holds)."""
  f = io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow(["variant", "task", "metric", "mean", "std", "n", "values"])
  for r in table:
    w.writerow([r["variant"], r["task"], r["metric"], f"{r['mean']:.6g}",
                "" if math.isnan(r["std"]) else f"{r['std']:.6g}", r["n"],
                ";".join(f"{v:.6g}" for v in r["values"])])
  return f.getvalue()


def write_csv(table: Sequence[dict], path: str) -> None:
  fs.write_text(path, csv_text(table))


def _cell(r: dict | None, digits: int) -> str:
  if r is None:
    return "–"
  if math.isnan(r["std"]):
    return f"{r['mean']:.{digits}f}"
  return f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"


def markdown(table: Sequence[dict], *, title: str, notes: Sequence[str] = ()) -> str:
  variants = list(dict.fromkeys(r["variant"] for r in table))
  index = {(r["variant"], r["task"], r["metric"]): r for r in table}
  metric_keys = list(dict.fromkeys((r["task"], r["metric"]) for r in table
                                   if r["metric"] not in WEIGHT_METRICS))
  weight_tasks = list(dict.fromkeys(r["task"] for r in table if r["metric"] in WEIGHT_METRICS))
  seeds = max((r["n"] for r in table), default=0)
  lines = [f"# {title}", ""] + [f"- {n}" for n in notes] + ([""] if notes else [])
  lines += [f"## Metrics (mean ± sample std over {seeds} seed(s))", "",
            "| task | metric | " + " | ".join(variants) + " |",
            "|---|---|" + "---|" * len(variants)]
  for task, metric in metric_keys:
    cells = [_cell(index.get((v, task, metric)), 1) for v in variants]
    lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
  lines += ["", ("## Mixture weights: configured → drawn (share of training examples; of "
                 "target tokens in brackets)"), "",
            "| task | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
  for task in weight_tasks:
    cells = []
    for v in variants:
      conf, samp, tok = (index.get((v, task, m)) for m in WEIGHT_METRICS)
      cells.append(f"{conf['mean']:.3f} → {samp['mean']:.3f} ({tok['mean']:.3f})"
                   if conf and samp and tok else (f"{conf['mean']:.3f} → –" if conf else "–"))
    lines.append(f"| {task} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(table: Sequence[dict], out_dir: str) -> list[str]:
  """`metrics.png` and `mixture_weights.png`; returns the paths written."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  variants = list(dict.fromkeys(r["variant"] for r in table))
  index = {(r["variant"], r["task"], r["metric"]): r for r in table}
  keys = list(dict.fromkeys((r["task"], r["metric"]) for r in table
                            if r["metric"] not in WEIGHT_METRICS))
  paths = []
  fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(keys) + 2), 4.2))
  width = 0.8 / max(len(variants), 1)
  x = np.arange(len(keys))
  for i, v in enumerate(variants):
    means = [index[(v, *k)]["mean"] if (v, *k) in index else np.nan for k in keys]
    stds = [index[(v, *k)]["std"] if (v, *k) in index else np.nan for k in keys]
    stds = [0.0 if math.isnan(s) else s for s in stds]
    ax.bar(x + (i - (len(variants) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
           label=v)
  ax.set_xticks(x, [f"{t if t.startswith('average') else t.split('_', 1)[-1]}\n({m})"
                    for t, m in keys],
                fontsize=8)
  ax.set_ylabel("metric (mean ± std over seeds)")
  ax.set_title("Per-task metric by mixture")
  ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "metrics.png"))
  _save_png(fig, paths[-1])
  plt.close(fig)

  tasks = list(dict.fromkeys(r["task"] for r in table if r["metric"] in WEIGHT_METRICS))
  fig, axes = plt.subplots(1, 3, figsize=(max(10.0, 2.4 * len(variants) + 3), 4.2),
                           sharey=True)
  titles = ("configured", "examples drawn", "target tokens drawn")
  for ax, metric, title in zip(axes, WEIGHT_METRICS, titles):
    bottom = np.zeros(len(variants))
    for task in tasks:
      share = np.array([index[(v, task, metric)]["mean"] if (v, task, metric) in index else 0.0
                        for v in variants])
      ax.bar(variants, share, bottom=bottom, label=task)
      bottom += share
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
  axes[0].set_ylabel("share of the mixture")
  axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  fig.suptitle("Mixture weights: configured vs drawn in training")
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "mixture_weights.png"))
  _save_png(fig, paths[-1])
  plt.close(fig)
  return paths


def _save_png(fig, path: str) -> None:
  """Renders in memory, then writes the file (local path or URL) in one go."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  with fs.open(path, "wb") as f:
    f.write(buf.getvalue())


def write(members: Sequence, results: Mapping[str, Mapping | None], out_dir: str, *,
          title: str, notes: Sequence[str] = (), plots: bool = True) -> dict[str, str]:
  """Writes results.csv / results.md (and the PNGs); returns {kind: path}."""
  fs.makedirs(out_dir)
  table = rows(members, results)
  paths = {"csv": os.path.join(out_dir, "results.csv"),
           "markdown": os.path.join(out_dir, "results.md")}
  write_csv(table, paths["csv"])
  fs.write_text(paths["markdown"], markdown(table, title=title, notes=notes))
  if plots and table:
    try:
      metrics_png, weights_png = plot(table, out_dir)
      paths.update(metrics_png=metrics_png, weights_png=weights_png)
    except ImportError:
      import logging  # pylint: disable=g-import-not-at-top

      logging.getLogger(__name__).warning(
          "matplotlib is not installed: no plots (pip install 'mtjax[recipes]')")
  return paths
