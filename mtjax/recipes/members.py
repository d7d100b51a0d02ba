"""Running one sweep member: an ordinary resumable run, then a result file that marks it done.

`<run_dir>/member.json` holds the member's full config (written before it starts, so a worker
process or another machine can run it); `<run_dir>/ablate_result.json` is written atomically
after training *and* evaluation finished, with the fingerprint of that config, the per-task
metrics and the sampled mixture. A rerun skips members whose result matches their config; an
interrupted member resumes from its newest checkpoint like any `mtjax train`.

    python -m mtjax.recipes.members <run_dir>     # what `mtjax ablate --parallel N` starts
"""

from __future__ import annotations

import logging
import os
import sys
import time

from mtjax import fs
from mtjax.config import schema

MEMBER_FILE = "member.json"
RESULT_FILE = "ablate_result.json"
DEFAULT_SAMPLE_BATCHES = 1000

log = logging.getLogger(__name__)


def write_json(path: str, payload) -> None:
  """Writes the whole file at once, so readers never see half of it (locally a temporary file
  and a rename; a URL is one object upload): `fs.write_json`."""
  fs.write_json(path, payload, indent=1)


def write_member(member, sample_batches: int = DEFAULT_SAMPLE_BATCHES) -> None:
  """The member's config and identity, for `run_member_dir` (idempotent)."""
  write_json(os.path.join(member.run_dir, MEMBER_FILE), {
      "variant": member.variant.name, "seed": member.seed, "fingerprint": member.fingerprint,
      "rates": dict(member.rates), "sample_batches": sample_batches,
      "config": schema.to_dict(member.config)})


def read_result(run_dir: str) -> dict | None:
  path = os.path.join(run_dir, RESULT_FILE)
  if not fs.exists(path):
    return None
  try:
    return fs.read_json(path)
  except (OSError, ValueError):
    return None  # unreadable: treated as not finished


def is_finished(member) -> bool:
  result = read_result(member.run_dir)
  return result is not None and result.get("fingerprint") == member.fingerprint


def run_member_dir(run_dir: str, progress: bool = False) -> dict | None:
  """Trains (or resumes) and evaluates the member in `run_dir`; returns its result, or None if
  the run was preempted (SIGTERM) before finishing."""
  from mtjax.data import cache, mixing  # pylint: disable=g-import-not-at-top
  from mtjax.recipes import sampling  # pylint: disable=g-import-not-at-top
  from mtjax.recipes import train as train_recipe  # pylint: disable=g-import-not-at-top

  member = fs.read_json(os.path.join(run_dir, MEMBER_FILE))
  cfg = schema.from_dict(member["config"])
  t0 = time.perf_counter()
  summary = train_recipe.run(cfg, progress=progress, command="mtjax ablate member")
  if summary.get("preempted"):
    return None
  seconds = time.perf_counter() - t0
  spec = (mixing.read_spec(cfg.data.mixture, cfg.data.cache_dir)  # written by the run
          or cache.ensure_cached(cfg.data.mixture, cfg.data.cache_dir,
                                 sequence_length=cfg.data.sequence_length))
  num_batches = min(cfg.train.steps, int(member.get("sample_batches", DEFAULT_SAMPLE_BATCHES)))
  result = {
      "variant": member["variant"], "seed": member["seed"], "fingerprint": member["fingerprint"],
      "steps": summary["steps"], "seconds": round(seconds, 1),
      "rates": member["rates"],
      "sampled": sampling.drawn(cfg, spec, num_batches), "sampled_batches": num_batches,
      "final_metrics": summary.get("final_metrics", {}),
      "eval": [{k: v for k, v in r.items() if k != "rows"} for r in summary.get("eval") or []],
  }
  write_json(os.path.join(run_dir, RESULT_FILE), result)
  return result


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    raise SystemExit("usage: python -m mtjax.recipes.members <member run_dir>")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("jax", "orbax", "tensorflow", "absl"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  result = run_member_dir(argv[0])
  if result is None:
    raise SystemExit(3)  # preempted: the sweep reruns it later


if __name__ == "__main__":
  main()
