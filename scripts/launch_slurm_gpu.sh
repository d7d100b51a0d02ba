#!/usr/bin/env bash
# Submit one mtjax command as a multi-node GPU job to SLURM: one process per node, each using
# all of its node's GPUs, joined by jax.distributed.
#
#   NODES=4 GPUS_PER_NODE=8 PARTITION=gpu scripts/launch_slurm_gpu.sh [--dry_run] \
#       -- train --config=configs/experiments/flan_t5.py --set run_dir=/shared/runs/flan_t5
#
# The job script sets JAX_COORDINATOR_ADDRESS (the first node, COORDINATOR_PORT),
# JAX_NUM_PROCESSES (= SLURM_NTASKS) and JAX_PROCESS_ID (= SLURM_PROCID) for each process, which
# mtjax/parallel/distributed.py passes to jax.distributed.initialize(). run_dir and
# data.cache_dir must be on a filesystem every node sees.
#
# Environment:
#   NODES (1)   GPUS_PER_NODE (8)   CPUS_PER_TASK (16)   TIME (24:00:00)   JOB_NAME (mtjax)
#   PARTITION, ACCOUNT, QOS        passed to #SBATCH when set
#   REPO_DIR    the repository as the nodes see it (default: this checkout)
#   VENV        its virtualenv (default REPO_DIR/.venv)
#   LOG_DIR     where SLURM writes the job's output (default REPO_DIR/runs/slurm)
#   COORDINATOR_PORT (12345)   SBATCH (the sbatch binary)   DRY_RUN=1 same as --dry_run
# Options:
#   --dry_run   print the job script and the sbatch command instead of submitting
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

dry_run="${DRY_RUN:-0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run|--dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "error: give the mtjax command after --, e.g. -- train --config=configs/quickstart.py" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODES="${NODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
CPUS_PER_TASK="${CPUS_PER_TASK:-16}"
TIME="${TIME:-24:00:00}"
JOB_NAME="${JOB_NAME:-mtjax}"
REPO_DIR="${REPO_DIR:-$here}"
VENV="${VENV:-$REPO_DIR/.venv}"
LOG_DIR="${LOG_DIR:-$REPO_DIR/runs/slurm}"
COORDINATOR_PORT="${COORDINATOR_PORT:-12345}"
SBATCH="${SBATCH:-sbatch}"
for var in NODES GPUS_PER_NODE CPUS_PER_TASK COORDINATOR_PORT; do
  if ! [[ "${!var}" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: $var must be a positive integer, got '${!var}'" >&2
    exit 2
  fi
done

mtjax_args=$(printf ' %q' "$@")
job=$(cat <<EOF
#!/usr/bin/env bash
#SBATCH --job-name=${JOB_NAME}
#SBATCH --nodes=${NODES}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${GPUS_PER_NODE}
#SBATCH --cpus-per-task=${CPUS_PER_TASK}
#SBATCH --time=${TIME}
#SBATCH --output=${LOG_DIR}/%x-%j.out
${PARTITION:+#SBATCH --partition=${PARTITION}}
${ACCOUNT:+#SBATCH --account=${ACCOUNT}}
${QOS:+#SBATCH --qos=${QOS}}
set -euo pipefail
coordinator=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | sed -n 1p)  # not head: pipefail + SIGPIPE
export JAX_COORDINATOR_ADDRESS="\$coordinator:${COORDINATOR_PORT}"
export JAX_NUM_PROCESSES="\$SLURM_NTASKS"
cd $(printf '%q' "$REPO_DIR")
srun --kill-on-bad-exit=1 bash -c 'export JAX_PROCESS_ID=\$SLURM_PROCID; exec "\$@"' mtjax \\
  $(printf '%q' "$VENV/bin/mtjax")${mtjax_args}
EOF
)
job=$(printf '%s\n' "$job" | sed '/^$/d')

if [[ "$dry_run" == 1 ]]; then
  echo "# job script (submitted on stdin):"
  printf '%s\n' "$job"
  echo "# command:"
  echo "$SBATCH"
  exit 0
fi
mkdir -p "$LOG_DIR"
printf '%s\n' "$job" | "$SBATCH"
