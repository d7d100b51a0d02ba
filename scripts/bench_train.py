"""Train-step throughput: mtjax vs Hugging Face `transformers` (torch), same shapes, same device.

    python scripts/bench_train.py --preset=llama_270m --seq=2048 --batch=16 --torch_compile
    python scripts/bench_train.py --preset=t5_1_1_base --inputs_length=512 --targets_length=128 \
        --batch=64 --peer=hf
    python scripts/bench_train.py            # tiny CPU defaults (t5_test), a smoke run

Each side runs in its own child process (torch and XLA both want the whole accelerator), in one
process tree, one after the other on the same device; this parent prints the table and writes JSON.

Precision policy (stated in the output): `--policy=bf16` keeps parameters, gradients and
optimizer moments in bfloat16 on both sides (what the issue's transformers numbers used);
`--policy=mixed` keeps float32 parameters and AdamW moments with bfloat16 compute (mtjax side;
the torch side then uses autocast). Logits and the cross-entropy are float32 on both sides.
Both sides use AdamW (torch: `fused=True`), the same random token batches, and no dropout.

Model FLOPs per step (what MFU divides; remat recomputation is not counted, as usual):
  6 * (matmul parameters applied per token, summed over tokens)      (weights, fwd + bwd)
  + 12 * heads * head_dim * (query, key) pairs per layer, summed        (attention scores + values)
where "(query, key) pairs" counts the full square for causal attention too (PaLM's convention).
MFU = model FLOP/s / the bf16 matmul FLOP/s measured in the same run (an 8192^3 product on GPU).

Packed rows from the cache (`--data=cache`, issue 16): the real training input, not random rows.
The parent reads the first `warmup + rounds * steps` batches of the cached, window-packed mixture
(`mtjax.data.pipeline`, exactly what `mtjax train` streams) into a temporary .npz; the mtjax
child streams the same batches live from a fresh pipeline (prefetch thread, as in training) into
the train step, alternating rounds with the same batches held in memory, so one run gives
throughput and the input stall share (1 - in-memory time / pipeline time, median of paired
rounds). The transformers child trains the same examples in its best packed setup: decoders
padding-free (`DataCollatorWithFlattening`, one `[1, tokens]` row with position ids restarting
per example) under flash_attention_2 (when `flash_attn` is installed) or flex_attention (GPU),
or the same packed rows with restarting position ids under sdpa (transformers then builds the
per-example block mask); T5 has no packed path in transformers, so its examples are padded per
batch to the batch's longest (dynamic padding). Each row says which attention and layout ran.
Tokens are real (non-padding) tokens; FLOPs count each example on its own (the attention square
per example, not per row), the same numerator for both sides:

    python scripts/bench_train.py --build_cache --mixture=bench_long        # needs seqio + TF
    python scripts/bench_train.py --data=cache --mixture=bench_long --preset=llama_270m \
        --inputs_length=1024 --targets_length=1024 --batch=16 --hf_attn=flash_attention_2,sdpa

Bigger models (`--batch_candidates=32,16,8`): the mtjax child compiles each candidate batch
(largest first) and times the first whose compiled footprint (XLA memory analysis) fits in 90%
of the device's memory (`--mem_limit_gb` where the device reports none); `--hf_fit` halves the
transformers batch after an out-of-memory error, and `--match_peer_batch` re-times mtjax at the
peer's batch when that is smaller, so peak memory is also compared at one batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The SeqIO module registering each benchmark mixture (only `--build_cache` imports it).
MIXTURE_MODULES = {"synthetic": "mtjax.mixtures.synthetic",
                   "bench_long": "mtjax.mixtures.bench_long"}
IGNORE = -100  # torch's cross-entropy ignore index: positions without a loss


# ---------------------------------------------------------------------------------------------
# Shapes and FLOPs (pure Python: both children and the parent use them).

def shape_of(preset: str) -> dict:
  """The architecture numbers of an mtjax preset, as a plain dict both peers build from."""
  import dataclasses
  sys.path.insert(0, ROOT)
  from mtjax.models import registry, t5  # noqa: E402  (the preset table lives in the library)
  cfg = registry.config(preset)
  d = dataclasses.asdict(cfg)
  if isinstance(cfg, t5.T5Config):
    return dict(family="t5", vocab_size=cfg.vocab_size, d_model=cfg.d_model, head_dim=cfg.d_kv,
                d_ff=cfg.d_ff, num_heads=cfg.num_heads,
                num_encoder_layers=cfg.num_encoder_layers,
                num_decoder_layers=cfg.num_decoder_layers,
                gated=cfg.feed_forward == "gated-gelu", tied=cfg.tie_word_embeddings, config=d)
  return dict(family="decoder", vocab_size=cfg.vocab_size, d_model=cfg.d_model,
              head_dim=cfg.head_dim, d_ff=cfg.d_ff, num_heads=cfg.num_heads,
              num_kv_heads=cfg.num_kv_heads, num_layers=cfg.num_layers, gated=True,
              tied=cfg.tie_word_embeddings, rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps,
              config=d)


def example_flops(shape: dict, le, ld):
  """Training FLOPs of sequences of `le` encoder and `ld` decoder tokens (numbers or numpy
  arrays; decoder family: `ld` is the whole sequence), by the module docstring's formula."""
  h_dh = shape["num_heads"] * shape["head_dim"]
  d, f, v = shape["d_model"], shape["d_ff"], shape["vocab_size"]
  ff_mats = 3 if shape["gated"] else 2
  if shape["family"] == "decoder":
    kv = shape["num_kv_heads"] * shape["head_dim"]
    per_layer = d * h_dh * 2 + d * kv * 2 + ff_mats * d * f  # q, o, k, v, mlp
    matmul = shape["num_layers"] * per_layer + d * v  # + lm head
    return 6 * matmul * ld + 12 * h_dh * shape["num_layers"] * ld * ld
  enc = shape["num_encoder_layers"] * (4 * d * h_dh + ff_mats * d * f) * le
  dec_q = shape["num_decoder_layers"] * (4 * d * h_dh + 2 * d * h_dh + ff_mats * d * f) * ld
  dec_kv = shape["num_decoder_layers"] * 2 * d * h_dh * le  # cross-attention keys/values
  head = d * v * ld
  attn = (shape["num_encoder_layers"] * le * le
          + shape["num_decoder_layers"] * (ld * ld + ld * le))
  return 6 * (enc + dec_q + dec_kv + head) + 12 * h_dh * attn


def model_flops_per_step(shape: dict, batch: int, seq: int, inputs_length: int,
                         targets_length: int) -> float:
  """Training FLOPs of one step of full (unpacked) rows."""
  if shape["family"] == "decoder":
    return batch * example_flops(shape, 0, seq)
  return batch * example_flops(shape, inputs_length, targets_length)


def tokens_per_step(shape: dict, batch: int, seq: int, inputs_length: int,
                    targets_length: int) -> int:
  if shape["family"] == "decoder":
    return batch * seq
  return batch * (inputs_length + targets_length)


def example_lengths(batch: dict, family: str):
  """(encoder, decoder) lengths of every example packed into a batch, from its segment ids
  (segment s of a row is one example; 0 is padding). Decoder family: encoder lengths are 0."""
  import numpy as np
  dec = np.asarray(batch["decoder_segment_ids"])
  enc = np.asarray(batch["encoder_segment_ids"]) if family == "t5" else np.zeros_like(dec)
  le, ld = [], []
  for e_row, d_row in zip(enc, dec):
    n = int(max(e_row.max(), d_row.max())) + 1
    ce, cd = np.bincount(e_row, minlength=n)[1:], np.bincount(d_row, minlength=n)[1:]
    keep = (ce > 0) | (cd > 0)
    le.append(ce[keep])
    ld.append(cd[keep])
  return np.concatenate(le).astype(np.float64), np.concatenate(ld).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Packed batches from the cache.

def pipeline_options(args, family: str, prefetch: int):
  """The pipeline options `mtjax train` would use for these lengths (one host, one thread)."""
  sys.path.insert(0, ROOT)
  from mtjax.data import pipeline  # noqa: E402  (imports Grain: only in cache mode)
  return pipeline.PipelineOptions(
      lengths={"inputs": args.inputs_length, "targets": args.targets_length},
      batch_size=args.batch, pack=True, packer="window", seed=args.data_seed, prefetch=prefetch,
      feature_converter="decoder_only" if family == "decoder" else "enc_dec")


def read_spec(args):
  sys.path.insert(0, ROOT)
  from mtjax.data import mixing  # noqa: E402
  spec = mixing.read_spec(args.mixture, args.cache_dir)
  if spec is None:
    raise SystemExit(f"mixture {args.mixture!r} is not cached under {args.cache_dir}: run "
                     f"`python scripts/bench_train.py --build_cache --mixture={args.mixture} "
                     f"--cache_dir={args.cache_dir}` where seqio and TensorFlow are installed")
  return spec


def build_cache(args) -> int:
  """Caches the mixture's train split (SeqIO + TF, CPU); `--carry_dir`: a copy of what the
  training stream reads (manifests, token arrays; not the ArrayRecord shards, which only
  evaluation reads) small enough to travel to a machine without SeqIO."""
  import importlib
  import shutil
  sys.path.insert(0, ROOT)
  from mtjax.data import cache, mixing  # noqa: E402
  importlib.import_module(MIXTURE_MODULES.get(args.mixture, args.mixture_module))
  spec = cache.ensure_cached(args.mixture, args.cache_dir, splits=("train",))
  print(f"cached {args.mixture}: {', '.join(spec.task_names)} in {args.cache_dir}")
  if args.carry_dir:
    for task in spec.task_names:
      src = cache.split_dir(args.cache_dir, task, "train")
      dst = cache.split_dir(args.carry_dir, task, "train")
      shutil.rmtree(dst, ignore_errors=True)
      shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.array_record*"))
    mixing.write_spec(spec, args.carry_dir)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.carry_dir)
               for f in fs)
    print(f"copied the token arrays to {args.carry_dir} ({size / 2**20:.1f} MiB in all)")
  return 0


def save_batches(batches: list[dict], path: str) -> None:
  import numpy as np
  np.savez(path, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})


def load_batches(path: str) -> list[dict]:
  import numpy as np
  raw = np.load(path)
  out: dict[int, dict] = {}
  for key in raw.files:
    i, name = key.split("/", 1)
    out.setdefault(int(i), {})[name] = raw[key]
  return [out[i] for i in sorted(out)]


# ---------------------------------------------------------------------------------------------
# Children.

def _random_batch(shape: dict, args, rng, batch: int | None = None):
  import numpy as np
  v, b = shape["vocab_size"], batch or args.batch
  if shape["family"] == "decoder":
    toks = rng.integers(1, v, size=(b, args.seq + 1), dtype=np.int64)
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:]}
  return {"inputs": rng.integers(1, v, size=(b, args.inputs_length), dtype=np.int64),
          "targets": rng.integers(1, v, size=(b, args.targets_length), dtype=np.int64)}


def _mtjax_batch(shape: dict, args, batch: int | None = None):
  import jax.numpy as jnp
  import numpy as np
  raw = _random_batch(shape, args, np.random.default_rng(0), batch)
  if shape["family"] == "decoder":
    # Unpacked full rows: no segment ids, so attention is plain causal (cuDNN flash on GPU).
    batch = {"decoder_input_tokens": raw["inputs"], "decoder_target_tokens": raw["targets"],
             "decoder_loss_weights": np.ones(raw["targets"].shape)}
  else:
    t = raw["targets"]
    batch = {"encoder_input_tokens": raw["inputs"], "decoder_target_tokens": t,
             "decoder_input_tokens": np.concatenate([np.zeros_like(t[:, :1]), t[:, :-1]], 1),
             "decoder_loss_weights": np.ones(t.shape)}
  return {k: jnp.asarray(v, jnp.float32 if k.endswith("weights") else jnp.int32)
          for k, v in batch.items()}


def _mtjax_state(args, variant: dict, num_tasks: int = 1):
  """Parameters, optimizer state and the jitted step of one mtjax configuration (`variant` =
  model config overrides + `logits_chunk`), under `--policy`."""
  import jax
  import optax
  from flax import nnx

  sys.path.insert(0, ROOT)
  from mtjax.models import registry
  from mtjax.train import step as step_lib

  variant = dict(variant)
  logits_chunk = int(variant.pop("logits_chunk", 0))
  # bf16: parameters, gradients and AdamW moments in bfloat16 (optax keeps moments in the
  # parameters' dtype); mixed: float32 master weights and moments, bfloat16 compute.
  overrides = {"dtype": "float32" if args.policy == "fp32" else "bfloat16",
               "param_dtype": "bfloat16" if args.policy == "bf16" else "float32", **variant}
  model = registry.build(registry.config(args.preset, **overrides), rngs=nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  del model, state
  tx = optax.adamw(1e-4, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0)
  opt_state = jax.jit(tx.init)(params)
  step_fn = step_lib.make_train_step(
      graphdef, tx, num_tasks=num_tasks,
      loss_options=step_lib.LossOptions(logits_chunk=logits_chunk))
  return params, opt_state, step_fn, dict(variant, logits_chunk=logits_chunk)


def _device_limit_bytes(args) -> float | None:
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return float(stats["bytes_limit"])
  return args.mem_limit_gb * 2**30 if args.mem_limit_gb else None


def _fit_batch(args, shape, step_fn, params, opt_state) -> tuple[int, list]:
  """The largest `--batch_candidates` batch whose compiled step fits in 90% of the device's
  memory, by XLA's memory analysis (nothing runs, so a too-large try leaves no allocation
  behind to spoil the peak-memory reading). Returns (batch, [(batch, GiB needed)])."""
  import jax
  limit = _device_limit_bytes(args)
  tried = []
  candidates = sorted({int(b) for b in args.batch_candidates.split(",")}, reverse=True)
  for b in candidates:
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        _mtjax_batch(shape, args, b))
    try:
      mem = step_fn.lower(params, opt_state, spec, 0).compile().memory_analysis()
      need = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes)
    except Exception as e:  # noqa: BLE001  (a compile-time OOM: too large)
      tried.append((b, f"{type(e).__name__}"))
      continue
    tried.append((b, round(need / 2**30, 2)))
    if limit is None or need <= 0.9 * limit:
      return b, tried
  return candidates[-1], tried


def run_mtjax_variant(args, variant: dict) -> dict:
  """One mtjax configuration on random full rows."""
  import gc

  import jax
  import numpy as np

  shape = shape_of(args.preset)
  params, opt_state, step_fn, variant = _mtjax_state(args, variant)
  batch_size, tried = args.batch, None
  search_s = 0.0
  if args.batch_candidates:
    t0 = time.perf_counter()
    batch_size, tried = _fit_batch(args, shape, step_fn, params, opt_state)
    search_s = time.perf_counter() - t0  # its compile of the chosen batch is reused below
  batch = _mtjax_batch(shape, args, batch_size)
  t0 = time.perf_counter()
  compiled = step_fn.lower(params, opt_state, batch, 0).compile()
  compile_s = time.perf_counter() - t0
  for i in range(args.warmup):
    params, opt_state, metrics = compiled(params, opt_state, batch, i)
  jax.block_until_ready(metrics["loss"])
  t0 = time.perf_counter()
  for i in range(args.steps):
    params, opt_state, metrics = compiled(params, opt_state, batch, args.warmup + i)
  loss = float(jax.block_until_ready(metrics["loss"]))
  step_s = (time.perf_counter() - t0) / args.steps
  stats = jax.devices()[0].memory_stats() or {}
  n = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
  del params, opt_state, compiled, step_fn
  gc.collect()
  # With a batch search the chosen batch compiled during it: count the whole search.
  out = {"variant": variant, "batch": batch_size, "step_s": step_s,
         "compile_s": compile_s + search_s,
         "loss": loss, "num_params": n,
         "peak_mem_gb": stats.get("peak_bytes_in_use", 0) / 2**30 or None}
  if tried is not None:
    out.update(batch_search_gib=tried, batch_search_s=search_s)
  return out


def _run_packed_variant(args, variant: dict, spec, held: list[dict]) -> dict:
  """One mtjax configuration fed by a fresh pipeline over the cache, in rounds alternating with
  the same batches held in memory (both moved to the device each step, as training does)."""
  import gc

  import jax
  import numpy as np

  sys.path.insert(0, ROOT)
  from mtjax.data import pipeline

  shape = shape_of(args.preset)
  params, opt_state, step_fn, variant = _mtjax_state(args, variant, len(spec.task_names))
  stream = iter(pipeline.train_batches(spec, args.cache_dir,
                                       pipeline_options(args, shape["family"], prefetch=2)))
  t0 = time.perf_counter()
  compiled = step_fn.lower(params, opt_state, jax.device_put(held[0]), 0).compile()
  compile_s = time.perf_counter() - t0
  step, times = 0, {"pipeline": [], "in_memory": []}
  for i in range(args.warmup):
    b = next(stream)
    if i == 0 and any(not np.array_equal(b[k], held[0][k]) for k in held[0]):
      raise RuntimeError("the pipeline's first batch differs from the parent's: not one stream")
    params, opt_state, m = compiled(params, opt_state, jax.device_put(b), step)
    step += 1
  jax.block_until_ready(m["loss"])
  for r in range(args.rounds):
    for source in ("pipeline", "in_memory"):
      t0 = time.perf_counter()
      for j in range(args.steps):
        b = next(stream) if source == "pipeline" else held[args.warmup + r * args.steps + j]
        params, opt_state, m = compiled(params, opt_state, jax.device_put(b), step)
        step += 1
      loss = float(jax.block_until_ready(m["loss"]))
      times[source].append(time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  n = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
  del params, opt_state, compiled, step_fn, stream
  gc.collect()
  timed = args.rounds * args.steps
  paired = [m / p for p, m in zip(times["pipeline"], times["in_memory"])]
  return {"variant": variant, "batch": args.batch, "step_s": sum(times["pipeline"]) / timed,
          "step_s_in_memory": sum(times["in_memory"]) / timed,
          "input_stall_share": max(0.0, 1.0 - float(np.median(paired))),
          "rounds_s": times, "compile_s": compile_s, "loss": loss, "num_params": n,
          "peak_mem_gb": stats.get("peak_bytes_in_use", 0) / 2**30 or None}


def run_mtjax(args) -> dict:
  """Every `--variants` configuration in this process, then the bf16 matmul peak."""
  import jax
  out = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "variants": []}
  if args.data == "cache":
    spec, held = read_spec(args), load_batches(args._batches)
  for variant in json.loads(args.variants):
    try:
      if args.data == "cache":
        out["variants"].append(_run_packed_variant(args, variant, spec, held))
      else:
        out["variants"].append(run_mtjax_variant(args, variant))
    except Exception as e:  # noqa: BLE001  (an OOM variant is a result, not a crash)
      out["variants"].append({"variant": variant, "error": f"{type(e).__name__}: {e}"[:600]})
    print(json.dumps(out["variants"][-1]), file=sys.stderr, flush=True)
  out["matmul_tflops"] = _jax_matmul_tflops(args)
  return out


def _jax_matmul_tflops(args) -> float:
  import jax
  import jax.numpy as jnp
  n = args.matmul_size
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: x @ y)
  for _ in range(3):
    f(a, b).block_until_ready()
  reps = 10
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def _hf_model(args, shape: dict, attn: str, dev: str):
  """The preset as a transformers model with attention `attn` (ValueError/ImportError when
  the architecture or the installation lacks it)."""
  import torch
  import transformers

  sys.path.insert(0, ROOT)
  from mtjax.models import hf, registry  # noqa: E402  (the same architecture, as an HF config)
  hf_cfg = dict(hf.config_to_hf(registry.config(args.preset)))
  model_type = hf_cfg.pop("model_type")
  for key in ("architectures", "torch_dtype", "dtype"):
    hf_cfg.pop(key, None)
  if shape["family"] == "decoder":
    longest = max(args.seq, args.inputs_length + args.targets_length)
    hf_cfg["max_position_embeddings"] = max(longest, hf_cfg.get("max_position_embeddings", 0))
  auto = (transformers.AutoModelForCausalLM if shape["family"] == "decoder"
          else transformers.AutoModelForSeq2SeqLM)
  bf16 = args.policy == "bf16"
  model = auto.from_config(transformers.AutoConfig.for_model(model_type, **hf_cfg),
                           attn_implementation=attn,
                           dtype=torch.bfloat16 if bf16 or attn == "flash_attention_2"
                           else torch.float32)
  model = model.to(dev, dtype=torch.bfloat16 if bf16 else torch.float32).train()
  if args.hf_remat:
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
  return model


def _hf_timed(args, dev: str, model, inputs: list[dict], targets: list, compile_: bool = False):
  """Times AdamW steps over `inputs` (the first `warmup` untimed); float32 cross-entropy."""
  import torch

  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-8,
                          weight_decay=0.0, fused=dev == "cuda")
  autocast = args.policy == "mixed"

  def step(kw, tgt):
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
      logits = model(**kw).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(),
                                             ignore_index=IGNORE)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  if compile_:
    model.forward = torch.compile(model.forward)  # the model; fused AdamW stays as it is
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  step(inputs[0], targets[0])
  sync()
  compile_s = time.perf_counter() - t0
  for i in range(1, args.warmup):
    step(inputs[i % len(inputs)], targets[i % len(inputs)])
  sync()
  if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
  timed = list(range(args.warmup, len(inputs))) or [0]
  t0 = time.perf_counter()
  for i in timed:
    loss = step(inputs[i], targets[i])
  sync()
  step_s = (time.perf_counter() - t0) / len(timed)
  peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
  return {"step_s": step_s, "compile_s": compile_s, "loss": float(loss), "peak_mem_gb": peak}


def _hf_info(dev: str, model) -> dict:
  import torch
  import transformers
  return {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
          "torch": torch.__version__, "transformers": transformers.__version__,
          "num_params": sum(p.numel() for p in model.parameters())}


def _is_oom(e: Exception) -> bool:
  import torch
  return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def run_hf(args, compile_: bool) -> dict:
  """transformers on random full rows; `--hf_fit` halves the batch after an OOM error."""
  import gc

  import numpy as np
  import torch

  shape = shape_of(args.preset)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  try:  # SDPA (flash / memory-efficient kernels) where the architecture has it
    model = _hf_model(args, shape, "sdpa", dev)
    attn = "sdpa"
  except (ValueError, ImportError):
    model = _hf_model(args, shape, "eager", dev)
    attn = "eager"
  batch = args.batch
  while True:
    raw = _random_batch(shape, args, np.random.default_rng(0), batch)
    inputs = torch.as_tensor(raw["inputs"], device=dev)
    targets = torch.as_tensor(raw["targets"], device=dev)
    if shape["family"] == "decoder":
      kw = {"input_ids": inputs}
    else:  # BOS = 0, as mtjax
      kw = {"input_ids": inputs, "decoder_input_ids": torch.nn.functional.pad(targets[:, :-1],
                                                                              (1, 0))}
    try:
      out = _hf_timed(args, dev, model, [kw] * (args.warmup + args.steps),
                      [targets] * (args.warmup + args.steps), compile_)
      break
    except Exception as e:  # noqa: BLE001
      if not (args.hf_fit and _is_oom(e) and batch > 1):
        raise
      del inputs, targets, kw
      gc.collect()
      torch.cuda.empty_cache()
      batch //= 2
  return {**out, "batch": batch, "attention": attn, "layout": "rows", **_hf_info(dev, model)}


def _hf_decoder_packed(held: list[dict], layout: str, dev: str, flash_kwargs: bool):
  """The packed batches' examples as transformers inputs: `flat` = one padding-free row per
  batch (DataCollatorWithFlattening), `rows` = the same packed rows with position ids that
  restart per example (transformers derives the block mask from them). Targets are aligned
  with the inputs (mtjax's decoder targets; IGNORE where the loss weight is 0)."""
  import numpy as np
  import torch
  import transformers

  collator = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)
  inputs, targets = [], []
  for b in held:
    tgt = np.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], IGNORE)
    if layout == "rows":
      inputs.append({"input_ids": torch.as_tensor(b["decoder_input_tokens"], device=dev),
                     "position_ids": torch.as_tensor(b["decoder_positions"], device=dev)})
      targets.append(torch.as_tensor(tgt, dtype=torch.long, device=dev))
      continue
    features, flat_t = [], []
    for row in range(len(b["decoder_segment_ids"])):
      seg = b["decoder_segment_ids"][row]
      for s in np.unique(seg[seg > 0]):
        where = seg == s
        features.append({"input_ids": b["decoder_input_tokens"][row][where]})
        flat_t.append(tgt[row][where])
    kw = collator(features, return_tensors="pt")
    kw.pop("labels")
    inputs.append({k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    targets.append(torch.as_tensor(np.concatenate(flat_t)[None], dtype=torch.long, device=dev))
  return inputs, targets


def _hf_t5_padded(held: list[dict], dev: str):
  """The packed batches' examples, unpacked and padded to each batch's longest (transformers'
  T5 has no packed attention): encoder / decoder attention masks, IGNORE on padding."""
  import numpy as np
  import torch

  inputs, targets = [], []
  for b in held:
    ex = []
    for row in range(len(b["decoder_segment_ids"])):
      es, ds = b["encoder_segment_ids"][row], b["decoder_segment_ids"][row]
      for s in np.unique(ds[ds > 0]):
        ex.append((b["encoder_input_tokens"][row][es == s], b["decoder_input_tokens"][row][ds == s],
                   b["decoder_target_tokens"][row][ds == s]))
    le, ld = max(len(e[0]) for e in ex), max(len(e[1]) for e in ex)
    enc, enc_m = np.zeros((len(ex), le), np.int64), np.zeros((len(ex), le), np.int64)
    dec, dec_m = np.zeros((len(ex), ld), np.int64), np.zeros((len(ex), ld), np.int64)
    tgt = np.full((len(ex), ld), IGNORE, np.int64)
    for i, (e, d, t) in enumerate(ex):
      enc[i, :len(e)], enc_m[i, :len(e)] = e, 1
      dec[i, :len(d)], dec_m[i, :len(d)], tgt[i, :len(t)] = d, 1, t
    t = lambda x: torch.as_tensor(x, device=dev)  # noqa: E731
    inputs.append({"input_ids": t(enc), "attention_mask": t(enc_m), "decoder_input_ids": t(dec),
                   "decoder_attention_mask": t(dec_m)})
    targets.append(t(tgt))
  return inputs, targets


def run_hf_packed(args, attn: str) -> dict:
  """transformers on the parent's packed batches, with attention `attn` in its best layout."""
  import torch
  import transformers

  shape = shape_of(args.preset)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  if attn == "flash_attention_2" and not transformers.utils.is_flash_attn_2_available():
    return {"skipped": "flash_attn is not installed"}
  if attn == "flex_attention" and dev != "cuda":
    return {"skipped": "flex_attention is timed on GPU only (a CPU run would time compiles)"}
  if shape["family"] == "t5" and attn in ("flash_attention_2", "flex_attention"):
    return {"skipped": f"transformers' T5 has no packed path for {attn}: sdpa / eager only"}
  try:
    model = _hf_model(args, shape, attn, dev)
  except (ValueError, ImportError) as e:
    return {"skipped": f"{type(e).__name__}: {e}"[:300]}
  held = load_batches(args._batches)
  if shape["family"] == "t5":
    layout = "padded per batch"
    inputs, targets = _hf_t5_padded(held, dev)
  else:
    layout = args.hf_layout if args.hf_layout != "auto" else (
        "rows" if attn in ("sdpa", "eager") else "flat")
    inputs, targets = _hf_decoder_packed(held, layout, dev, attn == "flash_attention_2")
  out = _hf_timed(args, dev, model, inputs, targets)
  return {**out, "attention": attn, "layout": layout, **_hf_info(dev, model)}


# ---------------------------------------------------------------------------------------------
# Parent.

def _child(args, role: str, extra: tuple = ()) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--_role={role}", *extra] + [
      a for a in sys.argv[1:] if not a.startswith(("--_role", "--_attn", "--batch="))]
  if not any(e.startswith("--batch=") for e in extra):
    cmd.append(f"--batch={args.batch}")
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
  except subprocess.TimeoutExpired as e:
    return {"error": f"timed out after {args.child_timeout} s: {str(e.stderr or '')[-1000:]}"}
  if out.returncode != 0:
    return {"error": (out.stderr or out.stdout)[-2000:]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def _packed_batches(args, shape: dict, report: dict) -> str:
  """Reads the batches every side trains on; returns the .npz path. Fills the per-batch
  figures (real tokens, example FLOPs) of the timed batches into `report`."""
  import numpy as np
  sys.path.insert(0, ROOT)
  from mtjax.data import pipeline  # noqa: E402

  spec = read_spec(args)
  n = args.warmup + args.rounds * args.steps
  t0 = time.perf_counter()
  stream = iter(pipeline.train_batches(spec, args.cache_dir,
                                       pipeline_options(args, shape["family"], prefetch=0)))
  batches = [next(stream) for _ in range(n)]
  read_s = time.perf_counter() - t0
  path = os.path.join(tempfile.mkdtemp(prefix="bench_train_"), "batches.npz")
  save_batches(batches, path)
  timed = batches[args.warmup:]
  lengths = [example_lengths(b, shape["family"]) for b in timed]
  real = float(np.mean([le.sum() + ld.sum() for le, ld in lengths]))
  flops = float(np.mean([example_flops(shape, le, ld).sum() for le, ld in lengths]))
  rows = args.inputs_length + args.targets_length  # positions per packed row (both families)
  report.update({
      "mixture": spec.name, "tasks": list(spec.task_names),
      "real_tokens_per_step": real, "row_tokens_per_step": args.batch * rows,
      "packing_efficiency": real / (args.batch * rows),
      "examples_per_step": float(np.mean([len(le) for le, _ in lengths])),
      "mean_example_tokens": real / float(np.mean([len(le) for le, _ in lengths])),
      "model_flops_per_step": flops, "tokens_per_step": real,
      "pipeline_ms_per_batch_one_thread": read_s / n * 1e3})
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="decoder_test")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=128, help="decoder sequence length (random rows)")
  p.add_argument("--inputs_length", type=int, default=64,
                 help="T5 inputs; with --data=cache a decoder's inputs (its rows hold "
                      "inputs_length + targets_length tokens)")
  p.add_argument("--targets_length", type=int, default=16)
  p.add_argument("--policy", choices=("bf16", "mixed", "fp32"), default="bf16")
  p.add_argument("--peer", choices=("hf", "none"), default="hf")
  p.add_argument("--torch_compile", action="store_true")
  p.add_argument("--steps", type=int, default=10, help="timed steps (per round with the cache)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--matmul_size", type=int, default=0, help="0: 8192 on GPU/TPU, 1024 on CPU")
  p.add_argument("--variants", default='[{"scan_layers": true}]',
                 help="JSON list of mtjax configurations: model config overrides (scan_layers, "
                      "remat, attention) and logits_chunk; each is timed in the mtjax process")
  p.add_argument("--data", choices=("random", "cache"), default="random",
                 help="random full rows, or packed batches streamed from the cached mixture")
  p.add_argument("--mixture", default="synthetic", help="--data=cache: synthetic | bench_long")
  p.add_argument("--mixture_module", default="",
                 help="--build_cache: the module registering a mixture not in MIXTURE_MODULES")
  p.add_argument("--cache_dir", default=os.path.join(ROOT, ".cache", "perf_gpu", "cache"))
  p.add_argument("--data_seed", type=int, default=0)
  p.add_argument("--rounds", type=int, default=2,
                 help="--data=cache: alternating rounds of --steps pipeline / in-memory steps")
  p.add_argument("--build_cache", action="store_true",
                 help="cache --mixture's train split in --cache_dir (SeqIO + TF) and exit")
  p.add_argument("--carry_dir", default="",
                 help="--build_cache: also copy the token arrays here (no ArrayRecord shards)")
  p.add_argument("--hf_attn", default="flash_attention_2,flex_attention,sdpa",
                 help="--data=cache: transformers attentions to time (unavailable ones are "
                      "reported as skipped)")
  p.add_argument("--hf_layout", choices=("auto", "flat", "rows"), default="auto",
                 help="decoder packed peer: flat (DataCollatorWithFlattening) or packed rows; "
                      "auto: flat for flash/flex attention, rows for sdpa/eager")
  p.add_argument("--hf_remat", action="store_true",
                 help="transformers gradient checkpointing (compare with an mtjax remat variant)")
  p.add_argument("--hf_fit", action="store_true",
                 help="random rows: halve the transformers batch after an out-of-memory error")
  p.add_argument("--batch_candidates", default="",
                 help="random rows: e.g. 32,16,8: mtjax times the largest whose compiled step "
                      "fits in 90%% of device memory (per variant)")
  p.add_argument("--mem_limit_gb", type=float, default=0.0,
                 help="device memory for --batch_candidates where the device reports none (CPU)")
  p.add_argument("--match_peer_batch", action="store_true",
                 help="re-time mtjax at the transformers batch when --hf_fit made it smaller")
  p.add_argument("--smoke", action="store_true",
                 help="the chosen mode at toy size on CPU: test preset, short rows, few steps")
  p.add_argument("--child_timeout", type=int, default=1200)
  p.add_argument("--json_out", default="")
  p.add_argument("--_role", default="")
  p.add_argument("--_attn", default="")
  p.add_argument("--_batches", default="")
  args = p.parse_args(argv)
  if args.smoke and not args._role:
    _smoke_defaults(args)
  if not args.matmul_size:
    args.matmul_size = 1024
    if args._role == "mtjax":
      import jax
      if jax.default_backend() != "cpu":
        args.matmul_size = 8192
  if args.build_cache:
    return build_cache(args)
  if args._role == "mtjax":
    print(json.dumps(run_mtjax(args)))
    return 0
  if args._role in ("hf", "hf_compile"):
    print(json.dumps(run_hf(args, compile_=args._role == "hf_compile")))
    return 0
  if args._role == "hf_packed":
    print(json.dumps(run_hf_packed(args, args._attn)))
    return 0
  return parent(args)


def _smoke_defaults(args) -> None:
  """`--smoke`: the same code path at toy size for a CPU check: the family's test preset and
  tiny batch, lengths, steps and batch candidates, overriding the command line's (so a GPU
  command plus --smoke is its CPU smoke run). Children get the values on their command line."""
  tiny = {"--steps": 2, "--warmup": 1, "--rounds": 1, "--matmul_size": 256, "--batch": 2,
          "--seq": 64, "--child_timeout": 300,
          "--preset": "t5_test" if shape_of(args.preset)["family"] == "t5" else "decoder_test"}
  if args.data == "cache":
    decoder = tiny["--preset"] == "decoder_test"
    tiny.update({"--inputs_length": 128 if decoder else 96,
                 "--targets_length": 64 if decoder else 32})
  if args.batch_candidates:
    tiny.update({"--batch_candidates": "8,4,2", "--mem_limit_gb": 0.01})
  for flag, value in tiny.items():
    setattr(args, flag[2:], value)
  sys.argv += [f"{flag}={value}" for flag, value in tiny.items()]
  if args.variants:  # no logits chunk longer than the toy rows
    variants = [dict(v, logits_chunk=min(int(v.get("logits_chunk", 0)), 32))
                for v in json.loads(args.variants)]
    args.variants = json.dumps(variants)
    sys.argv.append(f"--variants={args.variants}")


def parent(args) -> int:
  shape = shape_of(args.preset)
  report = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "results": {}}
  packed = args.data == "cache"
  if packed:
    args._batches = _packed_batches(args, shape, report)
  else:
    report["model_flops_per_step"] = model_flops_per_step(
        shape, args.batch, args.seq, args.inputs_length, args.targets_length)
    report["tokens_per_step"] = tokens_per_step(shape, args.batch, args.seq, args.inputs_length,
                                                args.targets_length)

  def save():
    if args.json_out:
      with open(args.json_out, "w") as f:
        json.dump(report, f, indent=1)

  extra = (f"--_batches={args._batches}",) if packed else ()
  ours = _child(args, "mtjax", extra)
  report["results"]["mtjax"] = ours
  save()
  rows = [(f"mtjax {json.dumps(v.get('variant'), separators=(',', ':'))}", v)
          for v in ours.get("variants", [])]
  if "error" in ours:
    rows.append(("mtjax", ours))
  n_ours = len(rows)
  peers = []
  if args.peer == "hf" and packed:
    for attn in [a for a in args.hf_attn.split(",") if a]:
      peers.append((f"hf_{attn}", "hf_packed", (*extra, f"--_attn={attn}")))
  elif args.peer == "hf":
    # After a batch search, transformers starts from the batch mtjax found (then --hf_fit).
    found = [v["batch"] for v in ours.get("variants", []) if "batch" in v and "error" not in v]
    at = (f"--batch={max(found)}",) if args.batch_candidates and found else ()
    peers.append(("hf_eager", "hf", at))
    if args.torch_compile:
      peers.append(("hf_compile", "hf_compile", at))
  for name, role, ex in peers:
    eager = report["results"].get("hf_eager", {})
    if role == "hf_compile" and args.hf_fit and eager.get("batch"):
      ex = (f"--batch={eager['batch']}",)  # no OOM retries (each a recompile) under compile
    report["results"][name] = _child(args, role, ex)
    rows.append((name, report["results"][name]))
    save()
  if args.match_peer_batch and not packed:
    hf_batches = [r.get("batch") for n, r in rows if n.startswith("hf") and r.get("batch")]
    our_batches = [r.get("batch") for _, r in rows[:n_ours] if r.get("batch")]
    if hf_batches and our_batches and min(hf_batches) < min(our_batches):
      b = min(hf_batches)
      same = _child(args, "mtjax", (f"--batch={b}", "--batch_candidates="))
      report["results"]["mtjax_at_peer_batch"] = same
      rows[n_ours:n_ours] = [(f"mtjax b={b} {json.dumps(v.get('variant'), separators=(',', ':'))}",
                              v)
                             for v in same.get("variants", [])]
      n_ours += len(same.get("variants", []))
  _print_table(args, shape, report, ours, rows, n_ours)
  save()
  return 0 if all("error" not in r for _, r in rows) else 1


def _print_table(args, shape, report, ours, rows, n_ours) -> None:
  peak = ours.get("matmul_tflops")
  packed = args.data == "cache"
  if packed:
    where = (f"mixture={report['mixture']} packed rows={args.batch}x"
             + (f"{args.inputs_length + args.targets_length}" if shape["family"] == "decoder"
                else f"({args.inputs_length},{args.targets_length})")
             + f" real tokens/step={report['real_tokens_per_step']:.0f}"
             f" ({report['packing_efficiency'] * 100:.0f}% of the rows,"
             f" {report['examples_per_step']:.1f} examples of {report['mean_example_tokens']:.0f}"
             " tokens)")
  else:
    where = f"batch={args.batch} " + (
        f"seq={args.seq}" if shape["family"] == "decoder"
        else f"inputs={args.inputs_length} targets={args.targets_length}")
  print(f"preset={args.preset} {where} policy={args.policy} device={ours.get('device')}"
        + (f" bf16 matmul peak {peak:.1f} TFLOP/s" if peak else ""))
  print(f"{'side':<52}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'step ms':>9}{'compile s':>10}"
        f"{'peak GB':>8}{'loss':>8}{'stall':>7}")
  for name, r in rows:
    if "error" in r or "skipped" in r:
      why = r.get("skipped") or (r["error"].strip().splitlines() or ["?"])[-1]
      print(f"{name[:51]:<52} {'SKIPPED' if 'skipped' in r else 'FAILED'}: {why[:200]}")
      continue
    if packed:
      tokens, flops = report["tokens_per_step"], report["model_flops_per_step"]
    else:
      b = r.get("batch", args.batch)
      tokens = tokens_per_step(shape, b, args.seq, args.inputs_length, args.targets_length)
      flops = model_flops_per_step(shape, b, args.seq, args.inputs_length, args.targets_length)
    r["tokens_per_s"] = tokens / r["step_s"]
    r["model_tflops"] = flops / r["step_s"] / 1e12
    r["mfu"] = r["model_tflops"] / peak if peak else None
    mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else "-"
    stall = (f"{r['input_stall_share'] * 100:.1f}%" if r.get("input_stall_share") is not None
             else "-")
    label = name + (f" [{r['attention']}, {r['layout']}]" if r.get("attention") else "")
    if not packed and "batch" in r and (args.batch_candidates or args.hf_fit):
      label += f" b={r['batch']}"
    print(f"{label[:51]:<52}{r['tokens_per_s']:>11.0f}{r['model_tflops']:>9.1f}"
          f"{(r['mfu'] or 0) * 100:>6.1f}%{r['step_s'] * 1e3:>9.1f}{r['compile_s']:>10.1f}"
          f"{mem:>8}{r['loss']:>8.3f}{stall:>7}")
  best = max((r for _, r in rows[:n_ours] if "tokens_per_s" in r),
             key=lambda r: r["tokens_per_s"], default=None)
  report["best_mtjax"] = best
  peers = [(n, r) for n, r in rows[n_ours:] if r.get("tokens_per_s")]
  for name, r in peers:
    if best:
      report[f"ratio_over_{name}"] = best["tokens_per_s"] / r["tokens_per_s"]
      print(f"ratio best mtjax / {name}: {report[f'ratio_over_{name}']:.2f}x"
            + (f" ({r['attention']}, {r['layout']})" if r.get("attention") else ""))
  if best and peers:
    name, r = max(peers, key=lambda x: x[1]["tokens_per_s"])
    report["best_peer"] = name
    report["ratio_over_best_peer"] = best["tokens_per_s"] / r["tokens_per_s"]
    print(f"ratio best mtjax / best transformers ({name}): {report['ratio_over_best_peer']:.2f}x")
  if best and packed:
    print(f"input stall share (pipeline vs in-memory, best mtjax): "
          f"{best['input_stall_share'] * 100:.1f}%")


if __name__ == "__main__":
  sys.exit(main())
