#!/usr/bin/env bash
# The issue-8 measurements on one GPU, as run for docs/results/perf.md (results in $OUT or ./perf_out).
# Each bench_train.py call runs mtjax and transformers in child processes on the same device.
set -u
OUT=${OUT:-perf_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/cudnn_check.txt"
# The cuDNN flash path (unpacked causal batches) against XLA's kernel, same weights, bf16.
import dataclasses, jax, jax.numpy as jnp, numpy as np
from flax import nnx
from mtjax.models import registry
cfg = registry.config("decoder_test", dtype="bfloat16", head_dim=64)
toks = jnp.asarray(np.random.default_rng(0).integers(2, 384, (2, 256)), jnp.int32)
out = {}
for impl in ("xla", "cudnn"):
  m = registry.build(dataclasses.replace(cfg, attention=impl), rngs=nnx.Rngs(params=0))
  out[impl] = np.asarray(m({"decoder_input_tokens": toks}), np.float32)
print("jax", jax.__version__, "max |cudnn - xla| logits:", float(np.abs(out["cudnn"] - out["xla"]).max()),
      "max |logit|:", float(np.abs(out["xla"]).max()))
PY
python3 scripts/bench_train.py --preset=llama_270m --seq=2048 --batch=16 --policy=bf16 \
  --peer=hf --torch_compile --steps=5 --warmup=2 --child_timeout=200 \
  --variants='[{"scan_layers": true}, {"scan_layers": true, "logits_chunk": 1024}, {"scan_layers": false, "logits_chunk": 1024}]' \
  --json_out="$OUT/llama_270m.json" 2>"$OUT/llama_270m.err" | tee "$OUT/llama_270m.txt"
python3 scripts/bench_train.py --preset=t5_1_1_base --inputs_length=512 --targets_length=128 \
  --batch=64 --policy=bf16 --peer=hf --steps=5 --warmup=2 --child_timeout=150 \
  --variants='[{"scan_layers": true}]' \
  --json_out="$OUT/t5_1_1_base.json" 2>"$OUT/t5_1_1_base.err" | tee "$OUT/t5_1_1_base.txt"
