#!/usr/bin/env bash
# Issue 16's measurements on one GPU in one call (issue 8's random-row runs are the `issue8`
# section). Two steps, because the GPU machine has no SeqIO / TensorFlow (caching needs them)
# and no Grain / ArrayRecord / gin (the training stream and configs need those):
#
#   bash scripts/perf_gpu.sh prepare   # here, on a CPU machine with the venv: builds the caches
#                                      # (.cache/perf_gpu/cache: token arrays only, ~19 MiB) and
#                                      # downloads cp312 wheels (.cache/perf_gpu/whl, ~5 MiB)
#   # then one device call, carrying both folders:
#   #   run(command="bash scripts/perf_gpu.sh", carry=[".cache/perf_gpu/cache",
#   #       ".cache/perf_gpu/whl"], timeout_s=600)
#
# On the device it installs the wheels, then runs the sections in priority order, each under
# `timeout`, skipping any whose estimate no longer fits in PERF_BUDGET_S (default 540 s of the
# call's 600). Raw JSON go to $OUT (the device tool's output folder; at most 8 files come
# back: one .json per section, tables and stderr all in perf_gpu.log) or ./perf_out; copy them
# to docs/results/perf/. PERF_SECTIONS picks sections (default: all in
# this order): dec_long t5_long b1_bf16 b1_mixed dec_syn stall issue8.
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
CARRY=.cache/perf_gpu
PY=${PYTHON:-python3}

if [ "${1:-}" = "prepare" ]; then
  PY=${PYTHON:-.venv/bin/python}
  set -e
  for m in synthetic bench_long; do
    "$PY" scripts/bench_train.py --build_cache --mixture=$m --cache_dir=$CARRY/full \
      --carry_dir=$CARRY/cache
  done
  mkdir -p $CARRY/whl
  # Versions of this venv (what the tests pass with); the GPU image has the rest (KINDS.md).
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d $CARRY/whl \
    grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 gin-config==0.5.0
  du -sh $CARRY/cache $CARRY/whl
  exit 0
fi

# PERF_SMOKE=1: the same flow at toy size on this CPU machine (bench_train --smoke, a tiny
# bench_input_stall, the venv's packages, no wheels): checks the script, measures nothing.
SMOKE=${PERF_SMOKE:-0}
OUT=${OUT:-perf_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/perf_gpu.log"
START=$(date +%s)
BUDGET=${PERF_BUDGET_S:-540}
SECTIONS=${PERF_SECTIONS:-dec_long t5_long b1_bf16 b1_mixed dec_syn stall issue8}
CACHE=$CARRY/cache
if [ "$SMOKE" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
else
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site $CARRY/whl/*.whl && echo "wheels installed"
  } 2>&1 | tee -a "$LOG"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import grain, array_record, jax, torch, transformers as t; print('jax', jax.__version__,
  'torch', torch.__version__, 'transformers', t.__version__, jax.devices()[0].device_kind)" \
  2>&1 | tee -a "$LOG"

# section NAME ESTIMATE_S COMMAND...: runs it under `timeout` if the estimate fits the budget.
section() {
  local name=$1 est=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  case " $SECTIONS " in *" $name "*) ;; *) return ;; esac
  if [ "$left" -lt "$est" ]; then
    echo "== $name SKIPPED: ${left}s left, estimate ${est}s" | tee -a "$LOG"; return
  fi
  echo "== $name (estimate ${est}s, ${left}s left) $(date +%T)" | tee -a "$LOG"
  timeout "$left" "$@" 2>>"$LOG" | tee -a "$LOG"
  echo "== $name done after $(( $(date +%s) - START ))s" | tee -a "$LOG"
}
PACKED="--data=cache --cache_dir=$CACHE --steps=5 --warmup=2 --rounds=2 --policy=bf16"
BT="$PY scripts/bench_train.py"
TINY=""  # bench_input_stall at toy size under PERF_SMOKE
if [ "$SMOKE" = 1 ]; then
  BT="$BT --smoke"; BUDGET=${PERF_BUDGET_S:-3600}
  TINY="model.preset=decoder_test data.inputs_length=128 data.targets_length=64
    data.batch_size=2 --rounds 1 --steps 2"
fi

# Goal 1: packed llama_270m from the cache (realistic lengths), >= 1.5x transformers' best.
# Variants: attention auto (the fastest kernel for packed rows) and the XLA reference.
section dec_long 150 $BT $PACKED --mixture=bench_long --preset=llama_270m --batch=16 \
  --inputs_length=1024 --targets_length=1024 --child_timeout=200 \
  --variants='[{"logits_chunk": 1024}, {"logits_chunk": 1024, "attention": "xla"}]' \
  --hf_attn=flash_attention_2,flex_attention,sdpa --json_out="$OUT/dec_long.json"
# Goal 2: T5 v1.1-base packed, inputs 512 / targets 128, >= 2x transformers eager.
section t5_long 130 $BT $PACKED --mixture=bench_long --preset=t5_1_1_base --batch=64 \
  --inputs_length=512 --targets_length=128 --child_timeout=200 \
  --variants='[{}]' --hf_attn=sdpa,eager --json_out="$OUT/t5_long.json"
# Goal 3: 1B decoder, remat, batch as large as fits; both precision policies.
B1="--preset=llama3_1b --seq=2048 --batch_candidates=32,16,8 --hf_fit --hf_remat
  --match_peer_batch --steps=4 --warmup=2 --child_timeout=240"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92  # as much of the card as torch may take
section b1_bf16 200 $BT $B1 --policy=bf16 --torch_compile \
  --variants='[{"remat": "full", "logits_chunk": 1024}]' --json_out="$OUT/b1_bf16.json"
section b1_mixed 120 $BT $B1 --policy=mixed \
  --variants='[{"remat": "full", "logits_chunk": 1024}]' --json_out="$OUT/b1_mixed.json"
unset XLA_PYTHON_CLIENT_MEM_FRACTION
# Goal 1 on issue 8's synthetic mixture (~18-token examples: the input pipeline's worst case).
section dec_syn 100 $BT $PACKED --mixture=synthetic --preset=llama_270m --batch=16 \
  --inputs_length=1024 --targets_length=1024 --child_timeout=150 \
  --variants='[{"logits_chunk": 1024}]' --hf_attn=flex_attention,sdpa \
  --json_out="$OUT/dec_syn.json"
# bench_input_stall on the GPU (the trainer's own setup: setup.build + data_iterator).
section stall 70 $PY scripts/bench_input_stall.py --rounds 4 --steps 10 --warmup 2 \
  --input_batches 50 --cache_dir=$CACHE --set 'data.modules=()' data.mixture=bench_long \
  model.preset=llama_270m data.feature_converter=decoder_only data.inputs_length=1024 \
  data.targets_length=1024 data.batch_size=16 model.dtype=bfloat16 $TINY
# Issue 8's random-row comparison, for continuity (only if time is left).
section issue8 90 $BT --preset=llama_270m --seq=2048 --batch=16 --policy=bf16 --steps=5 \
  --warmup=2 --child_timeout=120 --variants='[{"logits_chunk": 1024}]' \
  --json_out="$OUT/issue8.json"
echo "total $(( $(date +%s) - START ))s" | tee -a "$LOG"
