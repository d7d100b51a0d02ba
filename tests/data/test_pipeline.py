"""Grain stream: exact resume through an Orbax checkpoint, packing, feature conversion."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from mtjax.data import cache, feature_converters, mixing, packing, pipeline
from mtjax.train.checkpoint import Checkpointer

LENGTHS = {"inputs": 64, "targets": 16}


def _batches(spec, cache_dir, **kw):
  options = pipeline.PipelineOptions(LENGTHS, **{"batch_size": 4, "seed": 3, **kw})
  return pipeline.train_batches(spec, cache_dir, options)


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_iterator_restored_from_checkpoint_continues_the_stream(synthetic_cache, tmp_path):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  uninterrupted = iter(_batches(spec, synthetic_cache))
  expected = [next(uninterrupted) for _ in range(12)]

  it = iter(_batches(spec, synthetic_cache))
  for _ in range(7):
    next(it)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=1, keep=1)
  params = {"w": np.arange(3.0)}
  ckpt.save(7, params, {"m": np.zeros(3)}, it, {"step": 7})
  ckpt.wait()

  resumed = iter(_batches(spec, synthetic_cache))
  _, _, meta = ckpt.restore(7, params, {"m": np.zeros(3)}, resumed)
  assert meta["step"] == 7
  for want in expected[7:]:
    _assert_same(next(resumed), want)
  ckpt.close()


def test_same_seed_same_batches_and_other_seed_differs(synthetic_cache):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  a, b = iter(_batches(spec, synthetic_cache)), iter(_batches(spec, synthetic_cache))
  for _ in range(3):
    _assert_same(next(a), next(b))
  other = pipeline.train_batches(spec, synthetic_cache,
                                 pipeline.PipelineOptions(LENGTHS, batch_size=4, seed=4))
  assert not np.array_equal(next(iter(other))["encoder_input_tokens"],
                            next(a)["encoder_input_tokens"])


def test_host_shards_are_disjoint_and_cover_the_task(synthetic_cache):
  opts = [pipeline.PipelineOptions(LENGTHS, batch_size=1, shard_index=i, num_shards=3)
          for i in range(3)]
  seen = []
  for o in opts:
    ds = pipeline.task_dataset(synthetic_cache, "synthetic_copy", 0, "validation", o,
                               repeat=False)
    seen.append({tuple(ds[i]["inputs"]) for i in range(len(ds))})
  assert sum(len(s) for s in seen) == 200
  assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])


@pytest.mark.parametrize("packer", ["first_fit", "best_fit", "window"])
def test_packed_batches_are_well_formed(synthetic_cache, packer):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  batch = next(iter(_batches(spec, synthetic_cache, packer=packer, packing_bins=64
                             if packer == "window" else 0)))
  seg, tgt = batch["decoder_segment_ids"], batch["decoder_target_tokens"]
  assert batch["encoder_input_tokens"].shape == (4, 64) and tgt.shape == (4, 16)
  assert (seg.max(axis=1) >= 1).all()
  # Every packed target segment ends with EOS (1), and loss weights cover exactly the segments.
  for row in range(4):
    for s in range(1, seg[row].max() + 1):
      assert tgt[row][seg[row] == s][-1] == 1
  np.testing.assert_array_equal(batch["decoder_loss_weights"], (seg > 0).astype(np.float32))
  # Each segment of a row comes from one task.
  for row in range(4):
    for s in range(1, seg[row].max() + 1):
      assert len(set(batch["task_ids"][row][seg[row] == s])) == 1


def _examples():
  return [{"inputs": np.array([7, 8, 9, 1], np.int32), "targets": np.array([4, 5, 1], np.int32)},
          {"inputs": np.array([10, 11, 1], np.int32), "targets": np.array([6, 1], np.int32)}]


def _seqio_convert(examples, pack):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  conv = seqio.EncDecFeatureConverter(pack=pack)
  out = conv(ds, {"inputs": 10, "targets": 6})
  return list(out.as_numpy_iterator())


def test_padded_conversion_equals_seqio():
  expected = _seqio_convert(_examples(), pack=False)
  for ex, want in zip(_examples(), expected):
    padded = {"inputs": feature_converters.pad_to(ex["inputs"], 10),
              "targets": feature_converters.pad_to(ex["targets"], 6)}
    got = feature_converters.enc_dec(padded, packed=False)
    for k, v in want.items():
      np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_packed_conversion_equals_seqio():
  (want,) = _seqio_convert(_examples(), pack=True)  # both examples fit in one row
  a, b = _examples()
  packed = {
      "inputs": feature_converters.pad_to(np.concatenate([a["inputs"], b["inputs"]]), 10),
      "inputs_segment_ids": feature_converters.pad_to(np.array([1] * 4 + [2] * 3), 10),
      "inputs_positions": feature_converters.pad_to(np.array([0, 1, 2, 3, 0, 1, 2]), 10),
      "targets": feature_converters.pad_to(np.concatenate([a["targets"], b["targets"]]), 6),
      "targets_segment_ids": feature_converters.pad_to(np.array([1, 1, 1, 2, 2]), 6),
      "targets_positions": feature_converters.pad_to(np.array([0, 1, 2, 0, 1]), 6),
  }
  got = feature_converters.enc_dec(packed, packed=True)
  assert set(want) <= set(got)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.parametrize("packer,bins", [("best_fit", 8), ("window", 64)])
def test_every_packed_segment_unpacks_to_its_example(synthetic_cache, packer, bins):
  """Packing only moves examples: each segment equals one cached example of its task."""
  spec = mixing.read_spec("synthetic", synthetic_cache)
  batch = next(iter(_batches(spec, synthetic_cache, packer=packer, packing_bins=bins)))
  originals = {}
  for task_id, task in enumerate(spec.task_names):
    manifest = cache.read_manifest(synthetic_cache, task, "train")
    for ex in pipeline.read_examples(synthetic_cache, task, "train"):
      ex = pipeline.post_cache(ex, manifest["post_cache_ops"], manifest["output_features"],
                               LENGTHS)
      originals[(task_id, tuple(ex["inputs"]))] = tuple(ex["targets"])
  count = 0
  for row in range(4):
    enc_seg, dec_seg = batch["encoder_segment_ids"][row], batch["decoder_segment_ids"][row]
    for s in range(1, dec_seg.max() + 1):
      inputs = tuple(batch["encoder_input_tokens"][row][enc_seg == s])
      targets = tuple(batch["decoder_target_tokens"][row][dec_seg == s])
      task_id = int(batch["task_ids"][row][dec_seg == s][0])
      assert originals[(task_id, inputs)] == targets
      count += 1
  assert count > 4  # rows really hold several examples


def test_window_packer_restores_exactly_at_many_points(synthetic_cache):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  make = lambda: iter(_batches(spec, synthetic_cache, packer="window", packing_bins=48))
  it = make()
  states, stream = [], []
  for _ in range(30):  # several windows' worth of rows
    states.append(it.get_state())
    stream.append(next(it))
  rng = np.random.default_rng(0)
  for point in rng.choice(30, size=5, replace=False):
    resumed = make()
    resumed.set_state(states[point])
    for want in stream[point:point + 4]:
      _assert_same(next(resumed), want)


def test_window_packing_gives_the_same_global_batches_for_any_host_count(synthetic_cache,
                                                                         monkeypatch):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  opts = lambda **kw: pipeline.PipelineOptions(
      LENGTHS, **{"packer": "window", "packing_bins": 64, "seed": 3, "prefetch": 0, **kw})
  one = iter(pipeline.train_batches(spec, synthetic_cache, opts(batch_size=8)))
  four = [iter(pipeline.train_batches(spec, synthetic_cache,
                                      opts(batch_size=2, shard_index=h, num_shards=4)))
          for h in range(4)]
  for _ in range(6):
    whole = next(one)
    parts = [next(it) for it in four]
    for k in whole:
      np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in parts]), err_msg=k)

  # A host reads the tokens of its own rows only.
  reads = []
  original = pipeline.TokenSource.__getitem__
  monkeypatch.setattr(pipeline.TokenSource, "__getitem__",
                      lambda self, i: reads.append(i) or original(self, i))
  host = iter(pipeline.train_batches(spec, synthetic_cache,
                                     opts(batch_size=2, shard_index=1, num_shards=4)))
  segments = sum(int(next(host)["decoder_segment_ids"].max(axis=1).sum()) for _ in range(6))
  assert len(reads) == segments


@pytest.mark.parametrize("converter,seed,weights", [("enc_dec", 3, None),
                                                    ("decoder_only", 11, (0.5, 0, 3, 1, 0.25))])
def test_window_plan_equals_grains_mixed_plan(synthetic_cache, converter, seed, weights):
  """The vectorised plan reader gives exactly Grain's mixed, shuffled, repeated stream, well
  past every task's first epoch (the smallest synthetic task has ~1k examples)."""
  spec = mixing.read_spec("synthetic", synthetic_cache)
  options = pipeline.PipelineOptions(LENGTHS, batch_size=4, seed=seed,
                                     feature_converter=converter)
  grain_plan = pipeline.mixed_plan(spec, synthetic_cache, options, weights=weights)
  ours = pipeline.WindowPlan(spec, synthetic_cache, options, weights=weights)
  for start in (0, 4096, 123_457):
    got = ours.read(start, start + 2000)
    want = [grain_plan[k] for k in range(start, start + 2000)]
    for name in ("task_ids", "index", "inputs_len", "targets_len"):
      np.testing.assert_array_equal(got[name], [w[name] for w in want], err_msg=name)


def _best_fit_reference(li, lt, cap_i, cap_t):
  """Best fit as the definition says it: scan every row, least slack, first on ties."""
  rows, rem = [], []
  for j, (a, b) in enumerate(zip(li, lt)):
    slack = [(ri - a) * (cap_t + 1) + (rt - b) if ri >= a and rt >= b else None
             for ri, rt in rem]
    fitting = [s for s in slack if s is not None]
    if fitting:
      r = slack.index(min(fitting))
    else:
      r = len(rows)
      rows.append([])
      rem.append((cap_i, cap_t))
    rows[r].append(j)
    rem[r] = (rem[r][0] - a, rem[r][1] - b)
  return rows


@pytest.mark.parametrize("shape", ["few_open_rows", "many_open_rows", "encdec"])
def test_window_packer_plan_is_best_fit(shape):
  rng = np.random.default_rng(7)
  n = 1500
  if shape == "few_open_rows":  # short examples in long rows: the Python search
    li, lt, caps = np.zeros(n, int), rng.integers(3, 40, n), (0, 2048)
  elif shape == "many_open_rows":  # the vectorised search
    li, lt, caps = np.zeros(n, int), rng.integers(1, 1500, n), (0, 2048)
  else:
    li, lt, caps = rng.integers(5, 64, n), rng.integers(1, 16, n), (64, 16)
  got = packing.plan_rows(li, lt, {"inputs": caps[0], "targets": caps[1]})
  assert got == _best_fit_reference(li, lt, *caps)
