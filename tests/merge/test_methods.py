"""Each merge method against a hand-written numpy computation on small random trees (exact),
TIES' sign-election ties and trim ties built on purpose, DARE's mask per seed and its rescaling
expectation, LiNeS' layer factors against the formula, scanned == unscanned, and sharded inputs
that stay sharded on the 8-device mesh."""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mtjax import errors
from mtjax.merge import methods

SHAPES = {"token_embed/embedding": (16, 8), "layers/0/attention/query": (8, 2, 4),
          "layers/0/mlp/up": (8, 16), "layers/1/attention/query": (8, 2, 4),
          "layers/1/mlp/up": (8, 16), "layers/2/mlp/up": (8, 16), "final_norm/scale": (8,),
          "lm_head": (8, 16)}
T = 3


def _trees(seed=0, shapes=SHAPES, t=T):
  rng = np.random.default_rng(seed)
  base = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
  fts = [{k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in base.items()}
         for _ in range(t)]
  return base, fts


def _np_tvs(base, fts):
  return [{k: f[k] - base[k] for k in base} for f in fts]


def _np_sum(arrays):
  total = arrays[0]
  for a in arrays[1:]:
    total = total + a
  return total


def _np_topk(x, share):
  """Keeps the floor(share * n) largest magnitudes (argsort ranks; tie-free data)."""
  flat = x.ravel()
  k = math.floor(share * flat.size + 1e-9)
  keep = np.zeros(flat.size, bool)
  keep[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
  return np.where(keep, flat, 0).reshape(x.shape).astype(np.float32)


def _np_elect_mean(ts):
  total = _np_sum(ts)
  sign = np.sign(total)
  majority = np.sign(sign.sum()) or 1.0
  sign[sign == 0] = majority
  num = np.zeros_like(total)
  cnt = np.zeros_like(total)
  for t in ts:
    agree = np.sign(t) == sign
    num = num + np.where(agree, t, 0).astype(np.float32)
    cnt = cnt + agree
  return (num / np.maximum(cnt, 1)).astype(np.float32)


def _np_crumbs(x, low, high):
  flat = x.ravel()
  n = flat.size
  n_low, n_high = math.floor(low * n + 1e-9), math.floor(high * n + 1e-9)
  rank = np.empty(n, int)
  rank[np.argsort(np.abs(flat), kind="stable")] = np.arange(n)
  keep = (rank >= n_low) & (rank < n - n_high)
  return np.where(keep, flat, 0).reshape(x.shape).astype(np.float32)


def _merge(base, fts, method, **kw):
  merged, info = methods.merge({k: jnp.asarray(v) for k, v in base.items()},
                               [{k: jnp.asarray(v) for k, v in f.items()} for f in fts],
                               method, **kw)
  return {k: np.asarray(v) for k, v in merged.items()}, info


def _assert_equal(got, want):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_task_arithmetic():
  base, fts = _trees()
  got, info = _merge(base, fts, "task_arithmetic", lam=0.5)
  tvs = _np_tvs(base, fts)
  _assert_equal(got, {k: base[k] + np.float32(0.5) * _np_sum([t[k] for t in tvs])
                      for k in base})
  assert info["lam"] == 0.5


def test_ties_trims_elects_and_takes_the_disjoint_mean():
  base, fts = _trees(1)
  got, _ = _merge(base, fts, "ties", density=0.3, lam=2.0)
  tvs = _np_tvs(base, fts)
  want = {k: base[k] + np.float32(2.0) * _np_elect_mean([_np_topk(t[k], 0.3) for t in tvs])
          for k in base}
  _assert_equal(got, want)
  # The trimmed vectors really are 30% dense, and entries disagree somewhere (a real election).
  t = _np_topk(tvs[0]["lm_head"], 0.3)
  assert (t != 0).sum() == math.floor(0.3 * t.size)


@pytest.mark.parametrize("t1,t2,want", [
    # sums 0, 0, 4, 0 -> elected 0, 0, +, 0; zeros take the majority sign (+).
    ([1, -2, 3, 0], [-1, 2, 1, 0], [1, 2, 2, 0]),
    # every sum is 0: the majority sign is 0 too, and then +.
    ([1, -1, 2, 0], [-1, 1, -2, 0], [1, 1, 2, 0]),
    # sums 0, -2, -2: the majority (-) decides the tied entry.
    ([1, -3, -1], [-1, 1, -1], [-1, -3, -1]),
])
def test_ties_sign_election_ties(t1, t2, want):
  base = {"w": np.zeros(len(t1), np.float32)}
  fts = [{"w": np.asarray(t1, np.float32)}, {"w": np.asarray(t2, np.float32)}]
  got, _ = _merge(base, fts, "ties", density=1.0)
  np.testing.assert_array_equal(got["w"], np.asarray(want, np.float32))


def test_ties_trim_keeps_entries_tied_at_the_threshold():
  x = np.asarray([3, 1, 1, 1, -2], np.float32)
  np.testing.assert_array_equal(np.asarray(methods.trim({"w": jnp.asarray(x)}, 0.4)["w"]),
                                [3, 0, 0, 0, -2])  # k = 2: threshold |x| = 2
  np.testing.assert_array_equal(np.asarray(methods.trim({"w": jnp.asarray(x)}, 0.6)["w"]),
                                x)  # k = 3: threshold 1, and all three 1s tie with it
  np.testing.assert_array_equal(np.asarray(methods.trim({"w": jnp.asarray(x)}, 0.1)["w"]),
                                np.zeros(5))  # k = 0


def _ref_dare_mask(seed, task, path, p, shape):
  """The documented mask, derived here from the formula (not from mtjax's helper)."""
  key = jax.random.key(seed)
  key = jax.random.fold_in(key, task)
  key = jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)
  return np.asarray(jax.random.bernoulli(key, 1.0 - p, shape))


@pytest.mark.parametrize("method", ["dare", "dare_ties"])
def test_dare_equals_numpy_per_seed(method):
  base, fts = _trees(2)
  p = 0.4
  got, info = _merge(base, fts, method, p=p, seed=11, lam=0.5)
  assert info["seed"] == 11 and info["p"] == p
  tvs = _np_tvs(base, fts)
  want = {}
  for k in base:
    dropped = [np.where(_ref_dare_mask(11, i, k, p, base[k].shape),
                        t[k] * np.float32(1 / (1 - p)), 0).astype(np.float32)
               for i, t in enumerate(tvs)]
    u = _np_sum(dropped) if method == "dare" else _np_elect_mean(dropped)
    want[k] = base[k] + np.float32(0.5) * u
  _assert_equal(got, want)  # the same seed gives this again (the reference is a function of it)
  other, _ = _merge(base, fts, method, p=p, seed=12, lam=0.5)
  assert not np.array_equal(other["lm_head"], got["lm_head"])


def test_dare_rescaling_keeps_the_task_vector_in_expectation():
  """Each entry is 0 or t / (1 - p); over N seeds the kept share is 1 - p (binomial), so the
  seeds' mean of DARE(t) is t within the binomial error."""
  rng = np.random.default_rng(3)
  t = rng.normal(0, 1, (40, 25)).astype(np.float32)
  p, n = 0.3, 200
  tv = {"layers/0/mlp/up": jnp.asarray(t)}
  run = jax.jit(lambda s: methods.dare(tv, p, s, 0)["layers/0/mlp/up"])
  draws = np.stack([np.asarray(run(s)) for s in range(n)])
  scaled = np.float32(1 / (1 - p)) * t
  assert np.all((draws == 0) | (draws == scaled))
  kept = (draws != 0).mean()
  sd = math.sqrt(p * (1 - p) / draws.size)
  assert abs(kept - (1 - p)) < 5 * sd, (kept, sd)
  mean = draws.mean(0)
  per_entry_sd = np.abs(scaled) * math.sqrt(p * (1 - p) / n)
  assert np.abs(mean - t).mean() < 1.5 * per_entry_sd.mean()
  assert abs((mean - t).sum() / np.abs(t).sum()) < 0.02


def test_breadcrumbs_masks_the_smallest_and_largest_per_layer():
  base, fts = _trees(4)
  got, _ = _merge(base, fts, "breadcrumbs", low=0.5, high=0.1, lam=0.5)
  tvs = _np_tvs(base, fts)
  want = {k: base[k] + np.float32(0.5) * _np_sum([_np_crumbs(t[k], 0.5, 0.1) for t in tvs])
          for k in base}
  _assert_equal(got, want)
  x = np.asarray(np.arange(1, 11), np.float32)  # 10 entries: drop 3 smallest, 2 largest
  np.testing.assert_array_equal(np.asarray(methods.breadcrumbs({"w": jnp.asarray(x)}, 0.3, 0.2)["w"]),
                                [0, 0, 0, 4, 5, 6, 7, 8, 0, 0])


T5_SHAPES = {"token_embed/embedding": (16, 8), "encoder_layers/0/mlp/wo": (4, 8),
             "encoder_layers/1/mlp/wo": (4, 8), "encoder_layers/2/mlp/wo": (4, 8),
             "decoder_layers/0/mlp/wo": (4, 8), "decoder_layers/1/mlp/wo": (4, 8),
             "decoder_norm/scale": (8,), "encoder_relpos/embedding": (4, 2)}


def test_lines_scales_follow_the_formula_per_stack():
  alpha, beta = 0.2, 0.6
  scales = methods.lines_scales(T5_SHAPES, alpha, beta)
  for i in range(3):  # encoder: 3 layers, l = i + 1: alpha + beta (l - 1) / (L - 1)
    assert scales[f"encoder_layers/{i}/mlp/wo"] == np.float32(alpha + beta * i / 2)
  for i in range(2):  # decoder on its own: 2 layers, alpha then alpha + beta
    assert scales[f"decoder_layers/{i}/mlp/wo"] == np.float32(alpha + beta * i)
  for k in ("token_embed/embedding", "decoder_norm/scale", "encoder_relpos/embedding"):
    assert scales[k] == np.float32(alpha)  # outside the layers: alpha
  # A scanned stack: one [L, 1, ...] column broadcast along the layers axis.
  stacked = methods.lines_scales({"layers/mlp/up": (4, 8, 16), "lm_head": (8, 16)}, alpha, beta)
  np.testing.assert_allclose(stacked["layers/mlp/up"].ravel(),
                             [alpha + beta * i / 3 for i in range(4)], rtol=1e-7)
  assert stacked["layers/mlp/up"].shape == (4, 1, 1)
  assert methods.lines_scales({"layers/0/x": (2,)}, alpha, beta)["layers/0/x"] == np.float32(alpha)

  base, fts = _trees(5, T5_SHAPES, 2)
  got, info = _merge(base, fts, "task_arithmetic", lines=(alpha, beta))
  tvs = _np_tvs(base, fts)
  _assert_equal(got, {k: base[k] + scales[k] * _np_sum([t[k] for t in tvs]) for k in base})
  assert info["lines"]["stacks"]["encoder_layers"] == pytest.approx([0.2, 0.5, 0.8])
  # alpha="auto" = (|sum t|_1 / |u|_1) / T: 1 / T for task arithmetic (u is the sum).
  _, info = _merge(base, fts, "task_arithmetic", lines=("auto", beta))
  assert info["lines"]["alpha"] == pytest.approx(0.5, rel=1e-6)


def _stack(tree):
  """The scanned layout of an unscanned tree (`layers/i/x` -> `layers/x` with a leading axis)."""
  out, layers = {}, {}
  for k, v in tree.items():
    parts = k.split("/")
    if parts[0] == "layers":
      layers.setdefault("/".join(["layers"] + parts[2:]), {})[int(parts[1])] = v
    else:
      out[k] = v
  for k, by_i in layers.items():
    out[k] = np.stack([by_i[i] for i in sorted(by_i)])
  return out


@pytest.mark.parametrize("method,kw", [("ties", {"density": 0.2}),
                                       ("breadcrumbs", {"low": 0.3, "high": 0.05}),
                                       ("task_arithmetic", {"lines": (0.1, 0.9)})])
def test_a_scanned_model_merges_as_its_unscanned_twin(method, kw):
  shapes = {"layers/0/mlp/up": (8, 16), "layers/1/mlp/up": (8, 16), "layers/2/mlp/up": (8, 16),
            "lm_head": (8, 16)}
  base, fts = _trees(6, shapes)
  flat, _ = _merge(base, fts, method, **kw)
  scanned, _ = _merge(_stack(base), [_stack(f) for f in fts], method, **kw)
  _assert_equal(scanned, _stack(flat))


@pytest.mark.parametrize("method,kw", [("task_arithmetic", {}), ("ties", {"density": 0.3}),
                                       ("dare", {"p": 0.5}), ("breadcrumbs", {"low": 0.2}),
                                       ("ties", {"density": 0.3, "lines": ("auto", 0.5)})])
def test_sharded_inputs_stay_sharded(method, kw):
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  base, fts = _trees(7)
  specs = {k: P("fsdp", "tensor") if len(s) == 2 else P("fsdp") for k, s in SHAPES.items()}
  put = lambda tree: {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}
  merged, _ = methods.merge(put(base), [put(f) for f in fts], method, **kw)
  plain, _ = _merge(base, fts, method, **kw)
  for k, v in merged.items():
    assert v.sharding == NamedSharding(mesh, specs[k]), k
    assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.size < v.size
    if "lines" in kw:  # alpha="auto" is a ratio of L1 norms: sums in another order on a mesh
      np.testing.assert_allclose(np.asarray(v), plain[k], rtol=1e-6, atol=1e-6, err_msg=k)
    else:
      np.testing.assert_array_equal(np.asarray(v), plain[k], err_msg=k)


def test_bad_options_are_user_errors():
  base, fts = _trees()
  for kw in ({"method": "nope"}, {"method": "dare", "p": 1.0}, {"method": "ties", "density": 2},
             {"method": "breadcrumbs", "low": 0.6, "high": 0.5}):
    with pytest.raises(errors.ConfigError):
      _merge(base, fts, **kw)
