"""Input-pipeline benchmark: mtjax's Grain pipeline vs SeqIO's tf.data pipeline, same mixture.

Both produce packed encoder-decoder batches of the same lengths and batch size from the same
SeqIO mixture. mtjax reads its ArrayRecord cache (built first, not timed); SeqIO runs its
`seqio.get_dataset(..., feature_converter=EncDecFeatureConverter(pack=True))` from the task
sources (`use_cached=False`, as without a SeqIO cache job). Reports examples/s (packed
segments), the ratio, and the fill rate (non-padding tokens / all tokens) of each.

  python scripts/bench_data.py [--mixture synthetic --batches 200 --packer window]
                               [--worker_count N]  (mtjax batches made in N processes)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _measure(batches, n: int) -> dict:
  next(batches)  # warm-up: first-batch setup is not throughput
  examples = tokens = slots = 0
  start = time.perf_counter()
  for _ in range(n):
    b = next(batches)
    seg = np.asarray(b["decoder_segment_ids"])
    examples += int(seg.max(axis=1).sum())
    for key in ("encoder_segment_ids", "decoder_segment_ids"):
      tokens += int((np.asarray(b[key]) > 0).sum())
      slots += int(np.asarray(b[key]).size)
  seconds = time.perf_counter() - start
  return {"examples_per_s": examples / seconds, "fill_rate": tokens / slots,
          "examples": examples, "seconds": seconds}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--mixture", default="synthetic")
  p.add_argument("--module", default="mtjax.mixtures.synthetic")
  p.add_argument("--inputs_length", type=int, default=256)
  p.add_argument("--targets_length", type=int, default=64)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--batches", type=int, default=200)
  p.add_argument("--packer", default="window", choices=["first_fit", "best_fit", "window"])
  p.add_argument("--packing_bins", type=int, default=4096,
                 help="rows packed at once (Grain packers) or examples per window (window)")
  p.add_argument("--worker_count", type=int, default=0,
                 help="mtjax: processes preparing batches (Grain mp_prefetch); 0: one thread")
  p.add_argument("--cache_dir", default=None, help="default: a fresh temporary folder")
  p.add_argument("--json", help="also write the results here")
  args = p.parse_args()

  importlib.import_module(args.module)
  import seqio  # pylint: disable=g-import-not-at-top
  from mtjax.data import cache, pipeline  # pylint: disable=g-import-not-at-top

  cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="mtjax-bench-")
  spec = cache.cache_mixture(args.mixture, cache_dir, splits=("train",))
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}

  ours = pipeline.train_batches(spec, cache_dir, pipeline.PipelineOptions(
      lengths, batch_size=args.batch_size, packer=args.packer, packing_bins=args.packing_bins,
      worker_count=args.worker_count))
  ours = iter(ours)
  mtjax_result = _measure(ours, args.batches)  # the warm-up batch also starts the workers
  if hasattr(ours, "close"):
    ours.close()

  ds = seqio.get_dataset(
      args.mixture, task_feature_lengths=lengths, dataset_split="train", shuffle=True,
      num_epochs=None, seed=0, use_cached=False,
      feature_converter=seqio.EncDecFeatureConverter(pack=True))
  theirs = ds.batch(args.batch_size, drop_remainder=True).as_numpy_iterator()
  seqio_result = _measure(theirs, args.batches)

  result = {
      "config": vars(args) | {"cache_dir": cache_dir},
      "mtjax": mtjax_result,
      "seqio": seqio_result,
      "ratio_examples_per_s": mtjax_result["examples_per_s"] / seqio_result["examples_per_s"],
  }
  print(f"mixture {args.mixture}, lengths {lengths}, batch {args.batch_size}, "
        f"{args.batches} batches; mtjax packer {args.packer} x{args.packing_bins} bins, "
        f"{args.worker_count} worker processes")
  for name in ("mtjax", "seqio"):
    r = result[name]
    print(f"  {name:<6} {r['examples_per_s']:>10.0f} examples/s   fill rate {r['fill_rate']:.3f}")
  print(f"  ratio mtjax/seqio: {result['ratio_examples_per_s']:.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
