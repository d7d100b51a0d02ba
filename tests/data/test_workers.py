"""Multiprocess prefetch (data.worker_count) keeps the batches and stays checkpointable."""

import numpy as np
import pytest

from mtjax.data import mixing, pipeline

LENGTHS = {"inputs": 64, "targets": 16}
LATE = ((3, {"synthetic_copy": 1.0, "synthetic_add": 3.0}),)  # odd start: worker 1 switches


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("case", ["window", "padded_staged"])
def test_worker_processes_give_the_same_batches(synthetic_cache, case):
  """Window-packed: also restored from a mid-stream state. Padded with staged rates: same
  batches only, to keep the test short (each new iterator starts two processes)."""
  spec = mixing.read_spec("synthetic", synthetic_cache)
  opts = lambda **kw: pipeline.PipelineOptions(
      LENGTHS, **{"batch_size": 4, "seed": 2, "pack": case == "window", "packing_bins": 64,
                  "rate_stages": LATE if case == "padded_staged" else (), **kw})
  plain = iter(pipeline.train_batches(spec, synthetic_cache, opts(prefetch=0)))
  want = [next(plain) for _ in range(7)]
  it = iter(pipeline.train_batches(spec, synthetic_cache, opts(worker_count=2)))
  for w in want[:3]:
    _same(next(it), w)
  state = it.get_state()
  for w in want[3:5]:
    _same(next(it), w)
  it.close()
  if case != "window":
    return
  resumed = iter(pipeline.train_batches(spec, synthetic_cache, opts(worker_count=2)))
  resumed.set_state(state)
  for w in want[3:]:
    _same(next(resumed), w)
  resumed.close()
