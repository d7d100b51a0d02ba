#!/usr/bin/env bash
# Run one mtjax command on every worker of a TPU VM (a pod slice: the same command on all hosts).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b scripts/launch_tpu_vm.sh [--dry_run] [--install] \
#       -- train --config=experiments/t0 --set run_dir=gs://bucket/runs/t0 \
#          data.cache_dir=gs://bucket/cache
#
# Each worker runs `mtjax <args>` in REPO_DIR (its copy of the repository, or any folder when
# INSTALL names a published package or a wheel). No coordinator address is
# needed: on a multi-worker slice jax.distributed.initialize() finds the other workers by itself
# (mtjax/parallel/distributed.py sees TPU_WORKER_HOSTNAMES). Every host must see the same run_dir
# and data.cache_dir (a GCS bucket or a shared disk), or build the same cache itself.
#
# Environment:
#   TPU_NAME   (required) the TPU VM's name          ZONE     (required) its zone
#   PROJECT    GCP project (default: gcloud's)        REPO_DIR repository on the workers (~/mtjax)
#   VENV       virtualenv on the workers, relative to REPO_DIR or absolute (default .venv)
#   GCLOUD     the gcloud binary (default gcloud)     DRY_RUN=1 same as --dry_run
#   PYTHON     the workers' Python 3.11 or 3.12, for --install's venv (default python3)
#   INSTALL    what --install pip-installs (default '.[tpu]': the checkout in REPO_DIR, editable,
#              with jax's TPU build; a requirement such as 'mtjax[tpu]' or a wheel path also works)
# Options:
#   --dry_run  print the gcloud command instead of running it
#   --install  first `$PYTHON -m venv $VENV` + `pip install $INSTALL` in REPO_DIR on every worker
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

dry_run="${DRY_RUN:-0}"
install=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run|--dry-run) dry_run=1; shift ;;
    --install) install=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "error: give the mtjax command after --, e.g. -- train --config=configs/quickstart.py" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REPO_DIR="${REPO_DIR:-~/mtjax}"
VENV="${VENV:-.venv}"
GCLOUD="${GCLOUD:-gcloud}"
PYTHON="${PYTHON:-python3}"
INSTALL="${INSTALL:-.[tpu]}"

# The remote command, quoted so each argument arrives as given.
mtjax_args=$(printf ' %q' "$@")
remote="cd ${REPO_DIR} && "
if [[ "$install" == 1 ]]; then
  # A local path (the checkout) installs editable; anything else as the requirement it is.
  if [[ "$INSTALL" == .* || "$INSTALL" == /* ]] && [[ "$INSTALL" != *.whl ]]; then
    pip_args="-e $(printf '%q' "$INSTALL")"
  else
    pip_args=$(printf '%q' "$INSTALL")
  fi
  remote+="$(printf '%q' "$PYTHON") -m venv ${VENV} && ${VENV}/bin/pip install -q ${pip_args} && "
fi
remote+="${VENV}/bin/mtjax${mtjax_args}"

cmd=("$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "--zone=$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  cmd+=("--project=$PROJECT")
fi
cmd+=("--command=$remote")

if [[ "$dry_run" == 1 ]]; then  # readable, and pasteable into a shell
  for arg in "${cmd[@]}"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
      printf '%s ' "$arg"
    else
      q=${arg//\'/\'\\\'\'}
      printf "'%s' " "$q"
    fi
  done
  echo
  exit 0
fi
exec "${cmd[@]}"
