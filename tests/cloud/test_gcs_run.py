"""A whole run on gs:// against a real GCS API server on 127.0.0.1 (tests/gcs_emulator.py).

Run dir and data cache are both `gs://` URLs. The run is SIGKILLed after step 16 (checkpoints
every 5 steps), its newest committed checkpoint is then damaged (garbled metadata), and it is
resumed: the damaged step is set aside in the bucket (copied to `<step>.corrupt-<time>`, then
deleted) and the run continues from the one before; its losses and final parameters must be
bit-identical to the same run, uninterrupted, on local disk. Then `mtjax eval` and `mtjax export` read the gs:// run, the
TensorBoard event files are read back from the bucket, and bad buckets fail with one line before
any model is built. Nothing here touches a local path that stands in for GCS: every gs:// file
is listed and read through the GCS API.
"""

import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 20


def _env(jax_cache):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS=("--xla_force_host_platform_device_count=2"
                        " --xla_backend_optimization_level=0"),
             JAX_COMPILATION_CACHE_DIR=jax_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _mtjax(*args, env, fault=None):
  # A fault (STEP:KIND) is injected by a loop hook of the tests' worker (tests/train/fault_worker).
  entry = ["tests.train.fault_worker", fault] if fault else ["mtjax.cli"]
  return subprocess.Popen([sys.executable, "-m", *entry, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train(run_dir, cache_dir, env, fault=None):
  return _mtjax(
      "train", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--no_progress",
      "--set", f"run_dir={run_dir}", f"data.cache_dir={cache_dir}", "model.preset=t5_test",
      "data.batch_size=4", "data.inputs_length=32", "data.targets_length=8",
      f"train.steps={STEPS}", "train.log_every=1", "train.checkpoint_every=5",
      "train.keep_checkpoints=3", "eval.at_end=False", env=env, fault=fault)


def _finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out + err


def _losses(text):
  rows = [json.loads(line) for line in text.splitlines() if line.strip()]
  return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _params(step_dir):
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  tree = ocp.StandardCheckpointer().restore(os.path.join(step_dir, "params"))
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _events(data: bytes) -> dict[str, list[tuple[int, float]]]:
  """Scalars of a TensorBoard event file: TFRecord framing parsed by hand, Event protos by
  tensorboardX's generated classes."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  out, i = {}, 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i:i + 8])
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
    i += 12 + length + 4
    for v in event.summary.value:
      out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def _damage_newest(gs_run) -> int:
  """Garbles the run-metadata item of the newest committed checkpoint in the bucket; its step."""
  import gcsfs  # pylint: disable=g-import-not-at-top

  gcs = gcsfs.GCSFileSystem()
  gcs.invalidate_cache()
  ckpts = gs_run[len("gs://"):] + "/checkpoints"
  steps = sorted(int(p.rsplit("/", 2)[-2]) for p in gcs.find(ckpts)
                 if p.endswith("/commit_success.txt") and p.rsplit("/", 2)[-2].isdigit())
  gcs.pipe(f"{ckpts}/{steps[-1]}/meta/metadata", b"{garbled")
  return steps[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gcs_server, synthetic_cache):
  """(bucket, gs:// run dir, local run dir, outputs): a local reference run and a gs:// run
  killed after step 11 and resumed; then eval and export of the gs:// run."""
  from tests import gcs_emulator

  base = tmp_path_factory.mktemp("gcs_run")
  bucket = f"gs://{gcs_emulator.new_bucket()}"
  jax_cache = str(base / "jax_cache")
  local_run, local_cache = str(base / "local_run"), synthetic_cache
  gs_run, gs_cache = f"{bucket}/runs/t0", f"{bucket}/cache"
  out = {}
  procs = {"local": _train(local_run, local_cache, _env(jax_cache)),
           "killed": _train(gs_run, gs_cache, _env(jax_cache), fault="16:SIGKILL")}
  out.update({name: _finish(p) for name, p in procs.items()})
  out["damaged"] = _damage_newest(gs_run)
  out["resumed"] = _finish(_train(gs_run, gs_cache, _env(jax_cache)))
  evals = {"eval_gs": _mtjax("eval", "--run_dir", gs_run, "--max_examples", "8",
                             "--mixture_or_task", "synthetic_copy", env=_env(jax_cache)),
           "export_gs": _mtjax("export", "--checkpoint", gs_run, "--out", f"{bucket}/hf",
                               env=_env(jax_cache))}
  out.update({name: _finish(p) for name, p in evals.items()})
  return bucket, gs_run, local_run, out


def test_run_on_gcs_resumes_bit_identical_to_a_local_run(runs):
  import gcsfs  # pylint: disable=g-import-not-at-top

  bucket, gs_run, local_run, out = runs
  assert out["local"][0] == 0, out["local"][1][-3000:]
  assert out["killed"][0] == -9, out["killed"][1][-3000:]  # SIGKILL
  assert out["resumed"][0] == 0, out["resumed"][1][-8000:]
  # Step 15 (or 10 when the kill came before step 15's asynchronous upload committed: a step
  # without commit_success.txt is not a checkpoint) was damaged: set aside, resumed before it.
  damaged = out["damaged"]
  assert damaged in (10, 15)
  assert f"moved it aside to {gs_run}/checkpoints/{damaged}.corrupt-" in out["resumed"][1]
  resumed_from = re.search(r"resumed \S+ from step (\d+)", out["resumed"][1])
  assert resumed_from and int(resumed_from.group(1)) == damaged - 5, out["resumed"][1][-3000:]
  assert "Traceback" not in out["resumed"][1]
  gcs = gcsfs.GCSFileSystem()
  gcs.invalidate_cache()
  root = gs_run[len("gs://"):]
  names = {p[len(root) + 1:] for p in gcs.find(root)}
  aside = {n.split("/")[1] for n in names if ".corrupt-" in n}
  assert len(aside) == 1 and f"checkpoints/{aside.pop()}/meta/metadata" in names  # kept
  assert {"config.json", "model_summary.json", "metrics.jsonl"} <= names
  assert {f"checkpoints/{s}/commit_success.txt" for s in (10, 15, 20)} <= names
  assert not os.path.exists(os.path.join(ROOT, "gs:")), "a local folder named gs: was created"
  # Every step logged once, with the local run's losses exactly.
  gs_losses = _losses(gcs.cat(f"{root}/metrics.jsonl").decode())
  with open(os.path.join(local_run, "metrics.jsonl")) as f:
    local_losses = _losses(f.read())
  assert [s for s, _ in gs_losses] == list(range(1, STEPS + 1))
  assert gs_losses == local_losses
  # Final parameters bit-identical (Orbax reads the gs:// checkpoint through TensorStore).
  for a, b in zip(_params(f"{gs_run}/checkpoints/{STEPS}"),
                  _params(os.path.join(local_run, "checkpoints", str(STEPS))), strict=True):
    np.testing.assert_array_equal(a, b)


def test_cache_is_built_on_and_read_from_gcs(runs):
  import gcsfs  # pylint: disable=g-import-not-at-top

  bucket, _, _, out = runs
  assert out["resumed"][0] == 0, out["resumed"][1][-8000:]
  gcs = gcsfs.GCSFileSystem()
  manifests = [p for p in gcs.find(f"{bucket[5:]}/cache") if p.endswith("/manifest.json")]
  tasks = {p.split("/")[-3] for p in manifests}
  assert {"synthetic_add", "synthetic_copy", "synthetic_sort"} <= tasks, manifests
  assert gcs.exists(f"{bucket[5:]}/cache/mixtures/synthetic.json")


def test_tensorboard_events_read_back_from_gcs(runs):
  import gcsfs  # pylint: disable=g-import-not-at-top

  _, gs_run, _, out = runs
  gcs = gcsfs.GCSFileSystem()
  files = gcs.find(f"{gs_run[5:]}/tensorboard")
  assert files and all("events.out.tfevents" in f for f in files)
  scalars = {}
  for f in files:
    for tag, points in _events(gcs.cat(f)).items():
      scalars.setdefault(tag, []).extend(points)
  losses = dict(_losses(gcs.cat(f"{gs_run[5:]}/metrics.jsonl").decode()))
  # The killed run's event file holds steps up to its last sync; the resumed run's the rest.
  steps = {s for s, _ in scalars["loss"]}
  assert set(range(11, STEPS + 1)) <= steps and max(steps) == STEPS
  for step, value in scalars["loss"]:
    assert value == pytest.approx(losses[step], rel=1e-6)


def test_eval_and_export_read_the_gcs_run(runs):
  import gcsfs  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load as load_safetensors  # pylint: disable=g-import-not-at-top

  bucket, gs_run, local_run, out = runs
  for name in ("eval_gs", "export_gs"):
    assert out[name][0] == 0, (name, out[name][1][-3000:])
  gcs = gcsfs.GCSFileSystem()
  results = json.loads(gcs.cat(f"{gs_run[5:]}/eval_results.json"))
  assert [r["task"] for r in results] == ["synthetic_copy"]
  assert set(results[0]["metrics"]) == {"exact_match"}
  predictions = gcs.cat(f"{gs_run[5:]}/predictions/synthetic_copy-{STEPS}.jsonl").decode()
  assert len(predictions.splitlines()) == 8
  assert gcs.exists(f"{gs_run[5:]}/eval_metrics.jsonl")
  # The HF export in the bucket holds the run's final weights.
  tensors = load_safetensors(gcs.cat(f"{bucket[5:]}/hf/model.safetensors"))
  config = json.loads(gcs.cat(f"{bucket[5:]}/hf/config.json"))
  assert config["model_type"] == "t5"
  shared = tensors["shared.weight"]
  local = _params(os.path.join(local_run, "checkpoints", str(STEPS)))
  assert any(x.shape == shared.shape and np.array_equal(x, shared) for x in local)


@pytest.mark.parametrize("key", ["run_dir", "data.cache_dir", "train.init_from"])
def test_a_bad_bucket_is_one_line_before_the_model_is_built(gcs_bucket, tmp_path, key):
  env = _env(str(tmp_path / "jax_cache"))
  value = "gs://no-such-bucket-x1/path"
  sets = {"run_dir": f"{gcs_bucket}/run", key: value}
  proc = _mtjax("train", "--config", os.path.join(ROOT, "configs", "quickstart.py"),
                "--no_progress", "--set", *[f"{k}={v}" for k, v in sets.items()], env=env)
  code, text = _finish(proc, timeout=300)
  assert code == 2  # a user error (mtjax.cli)
  last = text.strip().splitlines()[-1]
  assert last == (f"error: {key} {value}: bucket gs://no-such-bucket-x1 does not exist "
                  "(typo?)"), text[-2000:]
  assert "Traceback" not in text
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_an_unreachable_endpoint_is_one_line(tmp_path):
  import socket  # pylint: disable=g-import-not-at-top

  with socket.socket() as s:  # a port on 127.0.0.1 nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(_env(str(tmp_path / "jax_cache")), STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}",
             GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
  proc = _mtjax("train", "--config", os.path.join(ROOT, "configs", "quickstart.py"),
                "--no_progress", "--set", "run_dir=gs://bkt/run", env=env)
  code, text = _finish(proc, timeout=300)
  assert code == 2  # a user error (mtjax.cli)
  last = text.strip().splitlines()[-1]
  assert last.startswith("error: run_dir gs://bkt/run: cannot reach gs://bkt"), text[-2000:]
