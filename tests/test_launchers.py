"""scripts/launch_tpu_vm.sh and scripts/launch_slurm_gpu.sh: syntax, the dry-run command, and the
command each worker really runs (with stand-ins for gcloud, scontrol, srun and mtjax)."""

import os
import shlex
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "scripts", "launch_tpu_vm.sh")
SLURM = os.path.join(ROOT, "scripts", "launch_slurm_gpu.sh")
ARGS = ["train", "--config=configs/quickstart.py", "--set", "run_dir=/shared/it's here",
        "train.steps=10"]


def _run(script, args, **env):
  return subprocess.run(["bash", script, *args], capture_output=True, text=True, check=False,
                        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"),
                             **env}, timeout=60)


def _exe(path, body):
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return str(path)


@pytest.mark.parametrize("script", [TPU, SLURM])
def test_syntax(script):
  subprocess.run(["bash", "-n", script], check=True)


def test_tpu_dry_run_prints_the_gcloud_command():
  out = _run(TPU, ["--dry_run", "--", *ARGS], TPU_NAME="v4-32", ZONE="us-central2-b",
             PROJECT="proj", REPO_DIR="/srv/mtjax")
  assert out.returncode == 0, out.stderr
  argv = shlex.split(out.stdout)
  assert argv[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v4-32",
                      "--zone=us-central2-b", "--worker=all"]
  assert "--project=proj" in argv
  remote = next(a for a in argv if a.startswith("--command="))[len("--command="):]
  assert shlex.split(remote) == ["cd", "/srv/mtjax", "&&", ".venv/bin/mtjax", *ARGS]


def test_tpu_runs_the_command_on_every_worker(tmp_path):
  mtjax = _exe(tmp_path / "mtjax", 'printf "[%s]\\n" "$@"\n')
  # gcloud stand-in: runs the --command as a worker's shell would.
  gcloud = _exe(tmp_path / "gcloud", 'for a in "$@"; do case "$a" in --command=*) '
                'bash -c "${a#--command=}";; esac; done\n')
  venv = tmp_path / "venv" / "bin"
  venv.mkdir(parents=True)
  os.symlink(mtjax, venv / "mtjax")
  out = _run(TPU, ["--", *ARGS], TPU_NAME="t", ZONE="z", GCLOUD=gcloud, REPO_DIR=str(tmp_path),
             VENV=str(tmp_path / "venv"))
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [f"[{a}]" for a in ARGS]


def test_tpu_install_brings_the_tpu_extra(tmp_path):
  out = _run(TPU, ["--dry_run", "--install", "--", *ARGS], TPU_NAME="t", ZONE="z",
             REPO_DIR="/srv/mtjax")
  assert out.returncode == 0, out.stderr
  remote = next(a for a in shlex.split(out.stdout) if a.startswith("--command="))
  assert shlex.split(remote[len("--command="):]) == [
      "cd", "/srv/mtjax", "&&", "python3", "-m", "venv", ".venv", "&&",
      ".venv/bin/pip", "install", "-q", "-e", ".[tpu]", "&&", ".venv/bin/mtjax", *ARGS]

  # What a worker runs, with stand-ins: PYTHON makes a venv whose pip and mtjax print their args.
  python = _exe(tmp_path / "python3.11", (
      'venv="$3"; mkdir -p "$venv/bin"\n'
      'printf \'#!/usr/bin/env bash\\nprintf "pip[%%s]\\\\n" "$@"\\n\' > "$venv/bin/pip"\n'
      'printf \'#!/usr/bin/env bash\\nprintf "[%%s]\\\\n" "$@"\\n\' > "$venv/bin/mtjax"\n'
      'chmod +x "$venv/bin/pip" "$venv/bin/mtjax"\n'))
  gcloud = _exe(tmp_path / "gcloud", 'for a in "$@"; do case "$a" in --command=*) '
                'bash -c "${a#--command=}";; esac; done\n')
  out = _run(TPU, ["--install", "--", *ARGS], TPU_NAME="t", ZONE="z", GCLOUD=gcloud,
             REPO_DIR=str(tmp_path), VENV=str(tmp_path / "venv"), PYTHON=python,
             INSTALL="mtjax[tpu]")
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == ["pip[install]", "pip[-q]", "pip[mtjax[tpu]]",
                                     *[f"[{a}]" for a in ARGS]]


def test_tpu_errors_name_the_missing_setting():
  out = _run(TPU, ["--dry_run", "--", *ARGS], ZONE="z")
  assert out.returncode != 0 and "TPU_NAME" in out.stderr
  out = _run(TPU, ["--dry_run"], TPU_NAME="t", ZONE="z")
  assert out.returncode == 2 and "give the mtjax command" in out.stderr


def _job_script(stdout: str) -> str:
  return stdout.split("# job script (submitted on stdin):\n")[1].split("# command:\n")[0]


def test_slurm_dry_run_prints_the_job(tmp_path):
  out = _run(SLURM, ["--dry_run", "--", *ARGS], NODES="4", GPUS_PER_NODE="8", PARTITION="gpu",
             REPO_DIR="/srv/mtjax", COORDINATOR_PORT="2222")
  assert out.returncode == 0, out.stderr
  job = _job_script(out.stdout)
  sbatch = [line for line in job.splitlines() if line.startswith("#SBATCH")]
  for want in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu"):
    assert f"#SBATCH {want}" in sbatch
  assert not any("--account" in line for line in sbatch)  # unset: no line
  assert 'JAX_COORDINATOR_ADDRESS="$coordinator:2222"' in job
  assert out.stdout.rstrip().endswith("sbatch")
  bad = _run(SLURM, ["--dry_run", "--", *ARGS], NODES="0")
  assert bad.returncode == 2 and "NODES" in bad.stderr


def test_slurm_job_gives_each_process_its_id(tmp_path):
  """The job script itself, run with stand-ins: srun starts task 1 of 2 on node b."""
  out = _run(SLURM, ["--dry_run", "--", *ARGS], NODES="2", VENV=str(tmp_path / "venv"),
             REPO_DIR=str(tmp_path))
  job = tmp_path / "job.sh"
  job.write_text(_job_script(out.stdout))
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _exe(bin_dir / "scontrol", 'printf "node-a\\nnode-b\\n"\n')
  _exe(bin_dir / "srun", 'while [[ "$1" == --* ]]; do shift; done\nSLURM_PROCID=1 exec "$@"\n')
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  _exe(tmp_path / "venv" / "bin" / "mtjax",
       'echo "$JAX_COORDINATOR_ADDRESS $JAX_NUM_PROCESSES $JAX_PROCESS_ID"\n'
       'printf "[%s]\\n" "$@"\n')
  ran = subprocess.run(["bash", str(job)], capture_output=True, text=True, check=False,
                       env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NTASKS": "2",
                            "SLURM_JOB_NODELIST": "node-[a-b]"}, timeout=60)
  assert ran.returncode == 0, ran.stderr
  lines = ran.stdout.splitlines()
  assert lines[0] == "node-a:12345 2 1"
  assert lines[1:] == [f"[{a}]" for a in ARGS]
