"""`mtjax ablate` and `mtjax promot` with their folders on gs:// (a real GCS JSON API server on
127.0.0.1, tests/gcs_emulator.py): each writes the same files into the bucket as the same run
writes locally, with the same content; sweep files are read from the bucket.

The runs happen in one fresh worker process (tests/recipes/sweep_worker.py: one CPU device, XLA's
LLVM optimisation off, a compilation cache shared by its phases), which reaches the emulator
through the environment the `gcs_bucket` fixture sets. The local twin of each run goes first
and fills the compilation cache, so the gs:// run compiles little.
"""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from mtjax import fs
from mtjax.recipes import ablate, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
TINY_SWEEP = ("name: tiny\nseeds: [0]\n"
              "variants:\n  - {name: all}\n  - {name: no_sort, exclude: [synthetic_sort]}\n")


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory) -> dict:
  """As tests/recipes/conftest.py's: one CPU device, no LLVM optimisation, a shared cache."""
  cache = tmp_path_factory.mktemp("jax_compilation_cache")
  return {"PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": "--xla_force_host_platform_device_count=1 "
                       "--xla_backend_optimization_level=0",
          "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}


def _phases(tmp_path, phases, worker_env) -> dict[str, str]:
  """Runs `mtjax` invocations (`[[label, argv], ...]`) in one worker process; each one's output.
  os.environ carries the emulator's address (set by the gcs_bucket fixture) to the worker."""
  path = tmp_path / "phases.json"
  path.write_text(json.dumps(phases))
  env = dict(os.environ, **worker_env)
  proc = subprocess.run([sys.executable, "-m", "tests.recipes.sweep_worker", str(path)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out, label = {}, None
  for line in proc.stdout.splitlines():
    if line.startswith("PHASE "):
      label = line[len("PHASE "):]
      out[label] = ""
    elif label is not None:
      out[label] += line + "\n"
  return out


def _trained(output: str) -> list[str]:
  return [line.split()[1] for line in output.splitlines() if line.startswith("TRAINED ")]


def _bucket_files(url: str) -> set[str]:
  """Every object under `url`, relative to it, listed by gcsfs itself (not through mtjax.fs)."""
  import gcsfs

  gcs = gcsfs.GCSFileSystem()
  gcs.invalidate_cache()
  root = url[len("gs://"):].rstrip("/")
  return {p[len(root) + 1:] for p in gcs.find(root)}


def _local_files(folder: str) -> set[str]:
  return {os.path.relpath(os.path.join(d, n), folder).replace(os.sep, "/")
          for d, _, names in os.walk(folder) for n in names}


def _csv_rows(text: str) -> dict:
  return {(r["variant"], r["task"], r["metric"]): r for r in csv.DictReader(io.StringIO(text))}


def _stable(names: set[str]) -> set[str]:
  """The names, with those that depend on the host, the clock or the bytes written reduced to
  their folder: TensorBoard event files, and the files inside a checkpoint's items (TensorStore
  names its data files by content hash; Orbax's layout differs between file systems)."""
  out = set()
  for n in names:
    parts = n.split("/")
    if "checkpoints" in parts:
      i = parts.index("checkpoints")
      n = "/".join(parts[:i + 3]) + "/*" if len(parts) > i + 3 else n
    elif "events.out.tfevents" in parts[-1]:
      n = "/".join(parts[:-1] + ["events.out.tfevents.*"])
    out.add(n)
  return out


def test_ablate_sweep_on_gcs_writes_what_a_local_sweep_writes(tmp_path, synthetic_cache,
                                                              gcs_bucket, worker_env):
  sweep_url = f"{gcs_bucket}/sweeps/tiny.yaml"
  fs.write_text(sweep_url, TINY_SWEEP)
  local_sweep = tmp_path / "tiny.yaml"
  local_sweep.write_text(TINY_SWEEP)
  local_out, gcs_out = str(tmp_path / "sweep"), f"{gcs_bucket}/ablate/tiny"
  common = ["--config", QUICKSTART, "--set", f"data.cache_dir={synthetic_cache}",
            "model.preset=t5_test", "data.batch_size=8", "data.inputs_length=32",
            "data.targets_length=8", "train.steps=2", "train.log_every=2",
            "train.checkpoint_every=2", "eval.max_examples=4", "eval.batch_size=8",
            "--compilation_cache_dir", worker_env["JAX_COMPILATION_CACHE_DIR"]]
  runs = _phases(tmp_path, [
      ["local", ["ablate", "--sweep", str(local_sweep), "--out", local_out] + common],
      # Members as worker processes (`--parallel`): each reads its member.json from the bucket;
      # their logs are written locally and appended to <member>/ablate.log when they exit.
      ["gcs", ["ablate", "--sweep", sweep_url, "--out", gcs_out, "--parallel", "2"] + common],
      # Rerun on gs://: the members' results in the bucket mark them finished.
      ["gcs again", ["ablate", "--sweep", sweep_url, "--out", gcs_out, "--no_plots"] + common],
  ], worker_env)
  assert _trained(runs["local"]) == ["all-seed0", "no_sort-seed0"]
  assert "finished all-seed0" in runs["gcs"] and "finished no_sort-seed0" in runs["gcs"]
  assert _trained(runs["gcs again"]) == []
  assert "2 member(s) already finished: skipped" in runs["gcs again"]

  # Nothing of the gs:// run landed in a local folder named after the URL.
  assert not os.path.exists(os.path.join(ROOT, "gs:")) and not os.path.exists("gs:")
  remote, local = _bucket_files(gcs_out), _local_files(local_out)
  for name in ("results.csv", "results.md", "metrics.png", "mixture_weights.png",
               "members/all-seed0/member.json", "members/no_sort-seed0/ablate_result.json",
               "members/all-seed0/eval_results.json"):
    assert name in remote, sorted(remote)
  assert {"members/all-seed0/ablate.log", "members/no_sort-seed0/ablate.log"} <= remote
  assert "INFO" in fs.read_text(f"{gcs_out}/members/all-seed0/ablate.log")
  remote -= {"members/all-seed0/ablate.log", "members/no_sort-seed0/ablate.log"}
  assert _stable(remote) == _stable(local), (sorted(_stable(remote) - _stable(local)),
                                            sorted(_stable(local) - _stable(remote)))

  # The same table: same rows, same numbers (same config, seeds and device count).
  rows_local = _csv_rows((tmp_path / "sweep" / "results.csv").read_text())
  rows_remote = _csv_rows(fs.read_text(f"{gcs_out}/results.csv"))
  assert rows_remote.keys() == rows_local.keys() and len(rows_local) > 10
  for key, row in rows_local.items():
    assert float(rows_remote[key]["mean"]) == pytest.approx(float(row["mean"]), abs=1e-4), key
  assert fs.read_text(f"{gcs_out}/results.md") == (tmp_path / "sweep" / "results.md").read_text()
  for member in ("all-seed0", "no_sort-seed0"):
    got = fs.read_json(f"{gcs_out}/members/{member}/ablate_result.json")
    with open(os.path.join(local_out, "members", member, "ablate_result.json")) as f:
      want = json.load(f)
    assert got.keys() == want.keys()
    assert got["sampled"] == want["sampled"] and got["rates"] == want["rates"]
  assert fs.read_bytes(f"{gcs_out}/metrics.png")[:8] == b"\x89PNG\r\n\x1a\n"


def _promot_args(run_dir: str, cache_dir: str) -> list[str]:
  return ["promot", "--config", QUICKSTART, "--no_progress", "--set", f"run_dir={run_dir}",
          f"data.cache_dir={cache_dir}", "data.mixture=synthetic_compare",
          "data.feature_converter=prefix_lm", "model.preset=decoder_test",
          "data.inputs_length=32", "data.targets_length=8", "data.batch_size=8",
          "train.log_every=2", "eval.max_examples=4", "eval.batch_size=8", "eval.few_shot=()",
          "eval.other_tasks=synthetic_copy", "promot.methods=prompt_tuning,promot",
          "promot.prompt_length=4", "promot.prompt_steps=2", "promot.model_steps=2",
          "promot.eval_every=2"]


def test_promot_on_gcs_writes_what_a_local_promot_writes(tmp_path, synthetic_cache, gcs_bucket,
                                                         worker_env):
  local_dir, gcs_dir = str(tmp_path / "promot"), f"{gcs_bucket}/runs/promot"
  runs = _phases(tmp_path, [
      ["local", _promot_args(local_dir, synthetic_cache)],
      ["gcs", _promot_args(gcs_dir, synthetic_cache)],
      ["gcs again", _promot_args(gcs_dir, synthetic_cache)],  # resumes: trains nothing
  ], worker_env)
  assert _trained(runs["local"]) == _trained(runs["gcs"]) == ["prompt_tuning", "promot"]
  assert _trained(runs["gcs again"]) == []

  remote, local = _bucket_files(gcs_dir), _local_files(local_dir)
  for name in ("report.json", "report.md", "prompt_tuning/config.json",
               "prompt_tuning/report_eval.json", "promot/report_eval.json"):
    assert name in remote, sorted(remote)
  assert any(n.startswith("prompt_tuning/best_prompt/") for n in remote), sorted(remote)
  assert any(n.startswith("promot/report/") for n in remote), sorted(remote)  # predictions
  assert _stable(remote) == _stable(local), (sorted(_stable(remote) - _stable(local)),
                                            sorted(_stable(local) - _stable(remote)))

  got = fs.read_json(f"{gcs_dir}/report.json")
  with open(os.path.join(local_dir, "report.json")) as f:
    want = json.load(f)
  assert got.keys() == want.keys() and got["methods"].keys() == want["methods"].keys()
  assert got["stages"]["promot"]["run_dir"] == f"{gcs_dir}/promot"
  assert {s: v["best_step"] for s, v in got["stages"].items()} == {
      s: v["best_step"] for s, v in want["stages"].items()}
  assert got["summary"].keys() == want["summary"].keys()
  for method, row in want["summary"].items():
    assert got["summary"][method] == pytest.approx(row, abs=1e-4), method
  assert fs.read_text(f"{gcs_dir}/report.md") == (tmp_path / "promot" / "report.md").read_text()
  # The same training: stage 2 started from the prompt exported into the bucket, so its losses
  # equal the local run's only if that prompt (and stage 1) came out the same.
  for stage in ("prompt_tuning", "promot"):
    losses = [[json.loads(line)["loss"] for line in text.splitlines()] for text in (
        fs.read_text(f"{gcs_dir}/{stage}/metrics.jsonl"),
        (tmp_path / "promot" / stage / "metrics.jsonl").read_text())]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0], stage


def test_sweep_files_are_read_from_the_bucket(tmp_path, gcs_bucket, monkeypatch):
  """YAML and Python sweep files at a URL parse like their local copies; a URL `--out` keeps
  the JAX compilation cache on this machine (`$XDG_CACHE_HOME/mtjax/jax_cache`)."""
  py = ("def get_sweep():\n"
        "  return {'name': 'rates', 'seeds': [0, 1],\n"
        "          'variants': [{'name': 'u', 'rate_fn': 'uniform'}, {'name': 'm'}]}\n")
  for name, text in (("tiny.yaml", TINY_SWEEP), ("rates.py", py)):
    (tmp_path / name).write_text(text)
    fs.write_text(f"{gcs_bucket}/sweeps/{name}", text)
    assert sweep.load(f"{gcs_bucket}/sweeps/{name}") == sweep.load(str(tmp_path / name))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sweep.load(f"{gcs_bucket}/sweeps/missing.yaml")
  fs.write_text(f"{gcs_bucket}/sweeps/bad.py", "x = 1\n")
  with pytest.raises(AttributeError, match="must define get_sweep"):
    sweep.load(f"{gcs_bucket}/sweeps/bad.py")

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert ablate.compilation_cache_dir(None, f"{gcs_bucket}/out") == str(
      tmp_path / "xdg" / "mtjax" / "jax_cache")
  assert ablate.compilation_cache_dir(None, "runs/x") == os.path.join("runs", "x", "jax_cache")
  assert ablate.compilation_cache_dir("None", f"{gcs_bucket}/out") is None
  with pytest.raises(ValueError, match="must be a local folder"):
    ablate.compilation_cache_dir(f"{gcs_bucket}/cc", "runs/x")


def test_a_step_without_orbax_commit_file_is_not_done(gcs_bucket):
  """In a bucket Orbax writes a step in place and marks it with commit_success.txt last: a step
  folder without it (a kill mid-upload) is not a finished stage."""
  from mtjax.recipes import promot

  run = f"{gcs_bucket}/runs/stage"
  assert promot.saved_steps(run) == []
  fs.write_text(f"{run}/checkpoints/2/params/manifest.ocdbt", "x")
  fs.write_text(f"{run}/checkpoints/2/commit_success.txt", "x")
  fs.write_text(f"{run}/checkpoints/4/params/manifest.ocdbt", "x")
  assert promot.saved_steps(run) == [2] and promot._steps_done(run) == 2  # pylint: disable=protected-access
