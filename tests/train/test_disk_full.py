"""A full disk: one `DiskFullError` naming the directory and the free space, earlier checkpoints
intact, no half-written step.

Three levels: the free-space check before a save (free space reported small), an ENOSPC raised
inside Orbax (its save made to fail with errno ENOSPC), and a real full file system — a 2 MiB
tmpfs mounted in a private mount namespace (`unshare -rm`, no root needed where user namespaces
are allowed; skipped where they are not) — both for the checkpointer alone (free-space check
off, so TensorStore itself hits ENOSPC) and for `mtjax train` end to end.
"""

import errno
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from mtjax import errors
from mtjax.parallel import mesh as mesh_lib
from mtjax.train import checkpoint as ckpt_lib
from tests.train.test_checkpoint import _ckpt, _iter, _params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _restorable(path, step):
  ckpt = _ckpt(path)
  try:
    got, _, _, meta = ckpt.restore_latest(_params(mesh_lib.make_mesh(), seed=9), {}, _iter())
  finally:
    ckpt.close()
  return got == step and meta["step"] == step


def test_too_little_free_space_is_one_error_before_writing(tmp_path, monkeypatch):
  mesh = mesh_lib.make_mesh()
  ckpt = _ckpt(tmp_path)
  ckpt.save(1, _params(mesh, seed=1), {}, _iter(), {"step": 1})
  ckpt.wait()
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(ckpt_lib.shutil, "disk_usage",
                      lambda p: usage._replace(free=4096))
  with pytest.raises(errors.DiskFullError) as e:
    ckpt.save(2, _params(mesh, seed=2), {}, _iter(), {"step": 2})
  ckpt.close()
  message = str(e.value)
  assert str(tmp_path) in message and "4.0 KiB free" in message and "step 2" in message
  assert "\n" not in message
  assert sorted(os.listdir(tmp_path)) == ["1"]  # nothing of step 2, not even a temp folder
  monkeypatch.undo()
  assert _restorable(tmp_path, 1)


def test_an_enospc_inside_orbax_becomes_one_error(tmp_path, monkeypatch):
  mesh = mesh_lib.make_mesh()
  ckpt = _ckpt(tmp_path)

  def full(*args, **kwargs):
    raise RuntimeError("while saving") from OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ckpt.manager, "save", full)
  with pytest.raises(errors.DiskFullError, match="no space left on the device writing "
                                                 "checkpoint step 1"):
    ckpt.save(1, _params(mesh), {}, _iter(), {"step": 1})
  monkeypatch.undo()
  ckpt.close()


def test_other_errors_are_not_called_disk_full(tmp_path, monkeypatch):
  ckpt = _ckpt(tmp_path)
  monkeypatch.setattr(ckpt.manager, "save",
                      lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EACCES, "denied")))
  with pytest.raises(PermissionError):
    ckpt.save(1, _params(mesh_lib.make_mesh()), {}, _iter(), {"step": 1})
  monkeypatch.undo()
  ckpt.close()


def _can_mount_tmpfs() -> bool:
  if not shutil.which("unshare"):
    return False
  probe = subprocess.run(
      ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"],
      capture_output=True, check=False)
  return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(),
                                 reason="no user namespaces here: cannot mount a small tmpfs")


def _in_tmpfs(tmp_path, size, command):
  """Runs `command` (a shell string; $FULL is the tmpfs mount point) with a tmpfs of `size`."""
  mount = tmp_path / "full"
  mount.mkdir()
  script = f"mount -t tmpfs -o size={size} tmpfs {mount} && FULL={mount} && {command}"
  return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                        timeout=600, check=False, cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))


@needs_tmpfs
def test_a_real_enospc_from_tensorstore_keeps_earlier_checkpoints(tmp_path):
  """The checkpointer alone, its free-space check off: TensorStore itself runs out of space."""
  script = tmp_path / "fill.py"
  script.write_text(textwrap.dedent(f"""
      import os, sys
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
      sys.path.insert(0, {ROOT!r})
      import numpy as np, jax
      from mtjax import errors
      from mtjax.parallel import mesh as mesh_lib
      from mtjax.train import checkpoint as ckpt_lib
      from tests.train.test_checkpoint import _iter

      mesh = mesh_lib.make_mesh()
      big = lambda seed: {{"w": jax.device_put(
          np.random.default_rng(seed).normal(size=(256, 256)).astype(np.float32))}}
      directory = sys.argv[1]
      ckpt = ckpt_lib.Checkpointer(directory, save_every=1, keep=100)
      ckpt._check_space = lambda step, trees: None  # let TensorStore hit ENOSPC itself
      try:
        for step in range(1, 100):
          ckpt.save(step, big(step), {{}}, _iter(), {{"step": step}})
          ckpt.wait()
      except errors.DiskFullError as e:
        print("DISKFULL", e)
      try:
        ckpt.close()
      except errors.DiskFullError:
        pass
      ckpt = ckpt_lib.Checkpointer(directory, save_every=1, keep=100)
      step, params, _, meta = ckpt.restore_latest(big(0), {{}}, _iter())
      np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(big(step)["w"]))
      print("RESTORED", step)
      """))
  out = _in_tmpfs(tmp_path, "1m", f"{sys.executable} {script} $FULL/ckpt")
  log = out.stdout + out.stderr
  assert out.returncode == 0, log[-3000:]
  lines = [line for line in out.stdout.splitlines() if line.startswith("DISKFULL")]
  assert len(lines) == 1 and "no space left on the device" in lines[0], log[-3000:]
  assert "RESTORED" in out.stdout


@needs_tmpfs
def test_mtjax_train_on_a_full_disk_prints_one_line(tmp_path, synthetic_cache):
  """A run dir on a 2 MiB tmpfs: the step-5 checkpoint (~0.9 MB) fits, step 10 does not."""
  run = "$FULL/run"
  args = ["--config", os.path.join(ROOT, "configs", "quickstart.py"), "--no_progress", "--set",
          f"run_dir={run}", f"data.cache_dir={synthetic_cache}", "model.preset=t5_test",
          "data.batch_size=4", "data.inputs_length=32", "data.targets_length=8",
          "train.steps=10", "train.log_every=5", "train.checkpoint_every=5",
          "train.keep_checkpoints=5", "eval.at_end=False"]
  flags = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
  command = (f"XLA_FLAGS='{flags}' {sys.executable} -m mtjax.cli train {' '.join(args)}; "
             f"echo RC=$?; ls $FULL/run/checkpoints; "
             f"{sys.executable} -c \"import orbax.checkpoint as o; "
             f"o.StandardCheckpointer().restore('$FULL/run/checkpoints/5/params'); print('OK5')\"")
  out = _in_tmpfs(tmp_path, "2m", command)
  log = out.stdout + out.stderr
  assert "RC=2" in out.stdout, log[-3000:]
  errors_ = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors_) == 1 and "no space left" in errors_[0] and "free" in errors_[0], log[-3000:]
  assert "/run/checkpoints" in errors_[0]
  assert "Traceback" not in log
  assert len(out.stderr.splitlines()) < 40, out.stderr[-3000:]  # not thousands of lines
  assert "OK5" in out.stdout  # the earlier checkpoint still restores
