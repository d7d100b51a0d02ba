"""Train-step throughput: mtjax vs Hugging Face `transformers` (torch), same shapes, same device.

    python scripts/bench_train.py --preset=llama_270m --seq=2048 --batch=16 --peer=hf --torch_compile
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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def model_flops_per_step(shape: dict, batch: int, seq: int, inputs_length: int,
                         targets_length: int) -> float:
  """Training FLOPs of one step by the formula in the module docstring."""
  h_dh = shape["num_heads"] * shape["head_dim"]
  d, f, v = shape["d_model"], shape["d_ff"], shape["vocab_size"]
  ff_mats = 3 if shape["gated"] else 2
  if shape["family"] == "decoder":
    kv = shape["num_kv_heads"] * shape["head_dim"]
    per_layer = d * h_dh * 2 + d * kv * 2 + ff_mats * d * f  # q, o, k, v, mlp
    matmul = shape["num_layers"] * per_layer + d * v  # + lm head
    return batch * (6 * matmul * seq + 12 * h_dh * shape["num_layers"] * seq * seq)
  le, ld = inputs_length, targets_length
  enc = shape["num_encoder_layers"] * (4 * d * h_dh + ff_mats * d * f) * le
  dec_q = shape["num_decoder_layers"] * (4 * d * h_dh + 2 * d * h_dh + ff_mats * d * f) * ld
  dec_kv = shape["num_decoder_layers"] * 2 * d * h_dh * le  # cross-attention keys/values
  head = d * v * ld
  attn = (shape["num_encoder_layers"] * le * le
          + shape["num_decoder_layers"] * (ld * ld + ld * le))
  return batch * (6 * (enc + dec_q + dec_kv + head) + 12 * h_dh * attn)


def tokens_per_step(shape: dict, batch: int, seq: int, inputs_length: int,
                    targets_length: int) -> int:
  if shape["family"] == "decoder":
    return batch * seq
  return batch * (inputs_length + targets_length)


# ---------------------------------------------------------------------------------------------
# Children.

def _random_batch(shape: dict, args, rng):
  import numpy as np
  v = shape["vocab_size"]
  if shape["family"] == "decoder":
    toks = rng.integers(1, v, size=(args.batch, args.seq + 1), dtype=np.int64)
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:]}
  return {"inputs": rng.integers(1, v, size=(args.batch, args.inputs_length), dtype=np.int64),
          "targets": rng.integers(1, v, size=(args.batch, args.targets_length), dtype=np.int64)}


def _mtjax_batch(shape: dict, args):
  import jax.numpy as jnp
  import numpy as np
  raw = _random_batch(shape, args, np.random.default_rng(0))
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


def run_mtjax_variant(args, variant: dict) -> dict:
  """One mtjax configuration: `variant` = model config overrides + `logits_chunk`."""
  import gc

  import jax
  import numpy as np
  import optax
  from flax import nnx

  sys.path.insert(0, ROOT)
  from mtjax.models import registry
  from mtjax.train import step as step_lib

  variant = dict(variant)
  logits_chunk = int(variant.pop("logits_chunk", 0))
  shape = shape_of(args.preset)
  overrides = {"dtype": "float32" if args.policy == "fp32" else "bfloat16",
               "param_dtype": "bfloat16" if args.policy == "bf16" else "float32", **variant}
  model = registry.build(registry.config(args.preset, **overrides), rngs=nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  del model, state
  tx = optax.adamw(1e-4, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0)
  opt_state = jax.jit(tx.init)(params)
  step_fn = step_lib.make_train_step(
      graphdef, tx, num_tasks=1, loss_options=step_lib.LossOptions(logits_chunk=logits_chunk))
  batch = _mtjax_batch(shape, args)
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
  return {"variant": dict(variant, logits_chunk=logits_chunk), "step_s": step_s,
          "compile_s": compile_s, "loss": loss, "num_params": n,
          "peak_mem_gb": stats.get("peak_bytes_in_use", 0) / 2**30 or None}


def run_mtjax(args) -> dict:
  """Every `--variants` configuration in this process, then the bf16 matmul peak."""
  import jax
  out = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "variants": []}
  for variant in json.loads(args.variants):
    try:
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


def run_hf(args, compile_: bool) -> dict:
  import numpy as np
  import torch
  import transformers

  shape = shape_of(args.preset)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  sys.path.insert(0, ROOT)
  from mtjax.models import hf, registry  # noqa: E402  (the same architecture, as an HF config)
  hf_cfg = dict(hf.config_to_hf(registry.config(args.preset)))
  model_type = hf_cfg.pop("model_type")
  for key in ("architectures", "torch_dtype", "dtype"):
    hf_cfg.pop(key, None)
  if shape["family"] == "decoder":
    hf_cfg["max_position_embeddings"] = max(args.seq, hf_cfg.get("max_position_embeddings", 0))
  auto = (transformers.AutoModelForCausalLM if shape["family"] == "decoder"
          else transformers.AutoModelForSeq2SeqLM)
  try:  # SDPA (flash / memory-efficient kernels) where the architecture has it
    model = auto.from_config(transformers.AutoConfig.for_model(model_type, **hf_cfg),
                             attn_implementation="sdpa")
    attn = "sdpa"
  except (ValueError, ImportError):
    model = auto.from_config(transformers.AutoConfig.for_model(model_type, **hf_cfg))
    attn = "eager"
  bf16 = args.policy == "bf16"
  model = model.to(dev, dtype=torch.bfloat16 if bf16 else torch.float32).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-8,
                          weight_decay=0.0, fused=dev == "cuda")
  raw = _random_batch(shape, args, np.random.default_rng(0))
  inputs = torch.as_tensor(raw["inputs"], device=dev)
  targets = torch.as_tensor(raw["targets"], device=dev)
  decoder_inputs = torch.nn.functional.pad(targets[:, :-1], (1, 0))  # BOS = 0, as mtjax
  autocast = args.policy == "mixed"

  def step():
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
      if shape["family"] == "decoder":
        logits = model(input_ids=inputs).logits
      else:
        logits = model(input_ids=inputs, decoder_input_ids=decoder_inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  if compile_:
    model.forward = torch.compile(model.forward)  # the model; fused AdamW stays as it is
  fn = step
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  fn()
  sync()
  compile_s = time.perf_counter() - t0
  for _ in range(max(args.warmup - 1, 0)):
    fn()
  sync()
  if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  for _ in range(args.steps):
    loss = fn()
  sync()
  step_s = (time.perf_counter() - t0) / args.steps
  peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
  return {"step_s": step_s, "compile_s": compile_s, "loss": float(loss), "peak_mem_gb": peak,
          "attention": attn, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
          "torch": torch.__version__, "transformers": transformers.__version__,
          "num_params": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------------------------------
# Parent.

def _child(args, role: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--_role={role}"] + [
      a for a in sys.argv[1:] if not a.startswith("--_role")]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
  if out.returncode != 0:
    return {"error": (out.stderr or out.stdout)[-2000:]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="decoder_test")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=128, help="decoder sequence length")
  p.add_argument("--inputs_length", type=int, default=64)
  p.add_argument("--targets_length", type=int, default=16)
  p.add_argument("--policy", choices=("bf16", "mixed", "fp32"), default="bf16")
  p.add_argument("--peer", choices=("hf", "none"), default="hf")
  p.add_argument("--torch_compile", action="store_true")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--matmul_size", type=int, default=0, help="0: 8192 on GPU/TPU, 1024 on CPU")
  p.add_argument("--variants", default='[{"scan_layers": true}]',
                 help="JSON list of mtjax configurations: model config overrides (scan_layers, "
                      "remat, attention) and logits_chunk; each is timed in the mtjax process")
  p.add_argument("--child_timeout", type=int, default=1200)
  p.add_argument("--json_out", default="")
  p.add_argument("--_role", default="")
  args = p.parse_args(argv)
  if not args.matmul_size:
    args.matmul_size = 1024
    if args._role == "mtjax":
      import jax
      if jax.default_backend() != "cpu":
        args.matmul_size = 8192
  if args._role == "mtjax":
    print(json.dumps(run_mtjax(args)))
    return 0
  if args._role in ("hf", "hf_compile"):
    print(json.dumps(run_hf(args, compile_=args._role == "hf_compile")))
    return 0

  shape = shape_of(args.preset)
  flops = model_flops_per_step(shape, args.batch, args.seq, args.inputs_length,
                               args.targets_length)
  tokens = tokens_per_step(shape, args.batch, args.seq, args.inputs_length, args.targets_length)
  report = {"args": vars(args), "model_flops_per_step": flops, "tokens_per_step": tokens,
            "date": time.strftime("%Y-%m-%d"), "results": {}}

  def save():
    if args.json_out:
      with open(args.json_out, "w") as f:
        json.dump(report, f, indent=1)

  ours = _child(args, "mtjax")
  report["results"]["mtjax"] = ours
  save()
  rows = [(f"mtjax {json.dumps(v.get('variant'), separators=(',', ':'))}", v)
          for v in ours.get("variants", [])]
  if "error" in ours:
    rows.append(("mtjax", ours))
  if args.peer == "hf":
    for role, name in (("hf", "hf_eager"), ("hf_compile", "hf_compile")):
      if role == "hf_compile" and not args.torch_compile:
        continue
      report["results"][name] = _child(args, role)
      rows.append((name, report["results"][name]))
      save()
  peak = ours.get("matmul_tflops")
  print(f"preset={args.preset} batch={args.batch} "
        + (f"seq={args.seq}" if shape["family"] == "decoder"
           else f"inputs={args.inputs_length} targets={args.targets_length}")
        + f" policy={args.policy} device={ours.get('device')}"
        + (f" bf16 matmul peak {peak:.0f} TFLOP/s" if peak else ""))
  print(f"{'side':<58}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'step ms':>9}{'compile s':>10}"
        f"{'peak GB':>8}{'loss':>7}")
  for name, r in rows:
    if "error" in r:
      print(f"{name:<58} FAILED: {r['error'].strip().splitlines()[-1] if r['error'] else '?'}")
      continue
    r["tokens_per_s"] = tokens / r["step_s"]
    r["model_tflops"] = flops / r["step_s"] / 1e12
    r["mfu"] = r["model_tflops"] / peak if peak else None
    mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else "-"
    print(f"{name[:57]:<58}{r['tokens_per_s']:>11.0f}{r['model_tflops']:>9.1f}"
          f"{(r['mfu'] or 0) * 100:>6.1f}%{r['step_s'] * 1e3:>9.1f}{r['compile_s']:>10.1f}"
          f"{mem:>8}{r['loss']:>7.3f}")
  best = max((r for _, r in rows[:len(ours.get("variants", []))] if "tokens_per_s" in r),
             key=lambda r: r["tokens_per_s"], default=None)
  report["best_mtjax"] = best
  for side in ("hf_eager", "hf_compile"):
    peer = report["results"].get(side, {})
    if best and peer.get("tokens_per_s"):
      report[f"ratio_over_{side}"] = best["tokens_per_s"] / peer["tokens_per_s"]
      print(f"ratio best mtjax / {side}: {report[f'ratio_over_{side}']:.2f}x")
  save()
  return 0 if all("error" not in r for _, r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
