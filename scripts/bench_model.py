"""Forward+backward throughput of one model preset in mtjax and in `transformers` (torch).

Both sides get the same architecture (the preset exported as a HF config), the same batch shape
and the same loss (token cross-entropy summed over the batch); each is timed over `--steps`
steps after `--warmup` steps. Prints tokens/s for each and the ratio mtjax / torch.
Runs on CPU, or on a GPU unchanged (JAX picks the accelerator; torch uses CUDA if available).
On GPU, float32 is not like for like: XLA's default matmul precision uses TF32, torch's does not.

  python scripts/bench_model.py --preset=decoder_quickstart --batch=8 --length=128
  python scripts/bench_model.py --preset=t5_quickstart --batch=8 --length=64 --dtype=bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import time

# JAX would otherwise take 75% of the GPU up front and leave torch too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtjax.models import hf, registry, t5


def _batch(cfg, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = lambda: rng.integers(2, cfg.vocab_size, (batch, length)).astype(np.int32)
  if isinstance(cfg, t5.T5Config):
    return {"encoder_input_tokens": tokens(), "decoder_input_tokens": tokens(),
            "decoder_target_tokens": tokens()}
  return {"decoder_input_tokens": tokens(), "decoder_target_tokens": tokens()}


def bench_mtjax(cfg, batch, steps: int, warmup: int) -> float:
  """Seconds per forward+backward step."""
  model = registry.build(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)

  @jax.jit
  def step(params, batch):
    def loss(p):
      logits = nnx.merge(graphdef, p)(batch)
      logp = jax.nn.log_softmax(logits, -1)
      return -jnp.sum(jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1))
    return jax.grad(loss)(params)

  batch = jax.device_put(batch)
  for _ in range(warmup):
    jax.block_until_ready(step(params, batch))
  t0 = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(step(params, batch))
  return (time.perf_counter() - t0) / steps


def bench_torch(cfg, batch, steps: int, warmup: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
  hf_cfg = dict(hf.config_to_hf(cfg))
  model_type = hf_cfg.pop("model_type")
  hf_cfg.pop("architectures")
  hf_cfg.pop("torch_dtype", None)
  config = transformers.AutoConfig.for_model(model_type, **hf_cfg)
  auto = (transformers.AutoModelForSeq2SeqLM if isinstance(cfg, t5.T5Config)
          else transformers.AutoModelForCausalLM)
  model = auto.from_config(config).to(device).train()
  tensors = {k: torch.from_numpy(v).long().to(device) for k, v in batch.items()}
  if isinstance(cfg, t5.T5Config):
    inputs = {"input_ids": tensors["encoder_input_tokens"],
              "decoder_input_ids": tensors["decoder_input_tokens"]}
  else:
    inputs = {"input_ids": tensors["decoder_input_tokens"]}
  targets = tensors["decoder_target_tokens"]

  def step():
    model.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
      logits = model(**inputs).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                             reduction="sum")
    loss.backward()
    if device == "cuda":
      torch.cuda.synchronize()

  for _ in range(warmup):
    step()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - t0) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="decoder_quickstart",
                      help=f"one of: {', '.join(sorted(registry.PRESETS))}")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=128, help="tokens per row (each side, T5)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16")
  parser.add_argument("--skip_torch", action="store_true")
  args = parser.parse_args()
  cfg = registry.config(args.preset, dtype=args.dtype)
  batch = _batch(cfg, args.batch, args.length)
  tokens = sum(v.size for k, v in batch.items() if k != "decoder_target_tokens")
  row = {"preset": args.preset, "batch": args.batch, "length": args.length, "dtype": args.dtype,
         "jax_device": jax.devices()[0].device_kind}
  row["mtjax_tokens_per_s"] = round(tokens / bench_mtjax(cfg, batch, args.steps, args.warmup), 1)
  if not args.skip_torch:
    row["torch_tokens_per_s"] = round(tokens / bench_torch(cfg, batch, args.steps, args.warmup), 1)
    row["ratio_mtjax_over_torch"] = round(row["mtjax_tokens_per_s"] / row["torch_tokens_per_s"], 3)
  print(json.dumps(row))


if __name__ == "__main__":
  main()
