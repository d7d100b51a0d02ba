"""Model merging on flat parameter dicts `{"/"-joined path: array}`: task arithmetic, TIES, DARE,
Model Breadcrumbs, and LiNeS' layer-depth scaling.

Notation: base weights `b`; finetuned weights `f_1..f_T`; task vectors `t_i = f_i - b` (float32).
Every method forms an update `u` from the task vectors and returns `b + lam * u` (cast to `b`'s
dtype), or with LiNeS `b + s(path) * u`.

- task arithmetic (Ilharco et al. 2023): `u = sum_i t_i`.
- TIES (Yadav et al. 2023, "TIES-Merging"): trim each `t_i` to its `density` share of largest
  magnitudes (`trim`); elect a sign per entry, `g = sign(sum_i trimmed_i)`; an entry whose sum is
  exactly 0 takes the tensor's majority sign `sign(sum(g))` (as the authors' code resolves
  zeros), and +1 if that is 0 too; `u` = the mean of the trimmed values whose sign equals `g`
  (0 where none does): the disjoint mean.
- DARE (Yu et al. 2023, "Language Models are Super Mario"): drop each entry of `t_i` with
  probability `p` and rescale the kept ones by `1 / (1 - p)`, so `E[dare(t_i)] = t_i`; then
  `u = sum_i dare(t_i)` (`dare`), or TIES' sign election and disjoint mean over them
  (`dare_ties`, no trimming). The mask of task `i`'s parameter `path` is
  `jax.random.bernoulli(fold_in(fold_in(key(seed), i), crc32(path) & 0x7fffffff), 1 - p)`:
  the same for a given seed on any mesh (JAX's partitionable threefry).
- Model Breadcrumbs (Davari & Belilovsky 2023): per layer, mask out of each `t_i` its `high`
  share of largest magnitudes (outliers) and its `low` share of smallest; `u = sum_i masked_i`.
- LiNeS (Wang et al. 2024, ICLR 2025, "LiNeS: Post-training Layer Scaling Prevents Forgetting
  and Enhances Model Merging"): the update of layer `l` (1-based) of a stack of `L` layers is
  scaled by `alpha + beta * (l - 1) / (L - 1)`; parameters outside the layers (embeddings, final
  norms, LM head, T5's relative-position tables) by `alpha`, as the authors' code does. Each
  stack on its own: T5's encoder and decoder layers each run from `alpha` to `alpha + beta`.
  A stack of one layer gets `alpha`. `alpha="auto"` is the authors' multi-task choice,
  `alpha = (|sum_i t_i|_1 / |u|_1) / T`. LiNeS replaces `lam`.

"Per tensor" and "per layer" mean one parameter of one layer: a stacked (scanned) parameter
`layers/...` with a leading layers axis is handled slice by slice, so a scanned and an unscanned
model merge to the same weights. Shares are counts `k = floor(share * n)` of a slice's `n`
entries; the threshold is the k-th largest magnitude, and entries tied with it are kept (TIES)
or, at the upper Breadcrumbs cut, removed.

Every function here is pure jnp on dicts (jit-able). `merge` runs them one parameter at a time,
each under `jax.jit` with the base parameter's sharding as the output's, so sharded inputs stay
sharded on the mesh and no host ever holds the whole model.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtjax import errors

Flat = Mapping[str, jax.Array]
METHODS = ("task_arithmetic", "ties", "dare", "dare_ties", "breadcrumbs")

_LAYER = re.compile(r"^(?P<stack>\w*layers)/(?P<i>\d+)/")
_STACKED = re.compile(r"^(?P<stack>\w*layers)/(?!\d+/)")


def count(share: float, n: int) -> int:
  """`floor(share * n)` (a hair of slack for binary fractions such as 0.29 * 100), in [0, n]."""
  return min(n, max(0, int(math.floor(share * n + 1e-9))))


def is_stacked(path: str) -> bool:
  """A scanned stack's parameter: its leading axis is the layers axis."""
  return _STACKED.match(path) is not None


def _per_layer(fn, path: str, *xs):
  """`fn` on each layer's slice of a stacked parameter, else on the whole tensor."""
  return jax.vmap(fn)(*xs) if is_stacked(path) else fn(*xs)


# ------------------------------------------------------------------------ per-tensor kernels


def _trim(x: jax.Array, density: float) -> jax.Array:
  n = x.size
  k = count(density, n)
  if k == 0:
    return jnp.zeros_like(x)
  if k == n:
    return x
  a = jnp.abs(x)
  threshold = jnp.sort(a.ravel())[n - k]  # the k-th largest magnitude
  return jnp.where(a >= threshold, x, jnp.zeros_like(x))


def _crumbs(x: jax.Array, low: float, high: float) -> jax.Array:
  n = x.size
  n_low, n_high = count(low, n), count(high, n)
  if n_low + n_high >= n:
    return jnp.zeros_like(x)
  a = jnp.abs(x)
  s = jnp.sort(a.ravel())
  keep = a >= s[n_low]  # the smallest n_low (and entries tied with them below) go
  if n_high:
    keep &= a < s[n - n_high]  # the largest n_high (and their ties) go
  return jnp.where(keep, x, jnp.zeros_like(x))


def _elect_mean(*ts: jax.Array) -> jax.Array:
  total = ts[0]
  for t in ts[1:]:
    total = total + t
  sign = jnp.sign(total)
  majority = jnp.sign(jnp.sum(sign))
  majority = jnp.where(majority == 0, 1.0, majority)
  sign = jnp.where(sign == 0, majority, sign)
  agreeing = jnp.zeros_like(total)
  n = jnp.zeros_like(total)
  for t in ts:
    agree = jnp.sign(t) == sign  # sign is +-1: zeros (trimmed or dropped) never agree
    agreeing = agreeing + jnp.where(agree, t, 0.0)
    n = n + agree.astype(total.dtype)
  return agreeing / jnp.maximum(n, 1.0)


# ------------------------------------------------------------------------ dict-level methods


def task_vectors(base: Flat, finetuned: Sequence[Flat]) -> list[dict[str, jax.Array]]:
  """`t_i = f_i - b` in float32, for every path of `base`."""
  return [{k: f[k].astype(jnp.float32) - base[k].astype(jnp.float32) for k in base}
          for f in finetuned]


def trim(tv: Flat, density: float) -> dict[str, jax.Array]:
  """TIES' trim: per tensor (per layer), the `density` share of largest magnitudes is kept."""
  return {k: _per_layer(lambda x: _trim(x, density), k, v) for k, v in tv.items()}


def breadcrumbs(tv: Flat, low: float, high: float) -> dict[str, jax.Array]:
  """Breadcrumbs' mask: per tensor (per layer), the `low` share of smallest and the `high` share
  of largest magnitudes are set to 0."""
  return {k: _per_layer(lambda x: _crumbs(x, low, high), k, v) for k, v in tv.items()}


def dare_key(seed: int, task: int, path: str) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), task),
                            zlib.crc32(path.encode()) & 0x7FFFFFFF)


def dare(tv: Flat, p: float, seed: int, task: int) -> dict[str, jax.Array]:
  """DARE: each entry dropped with probability `p`, the kept ones scaled by `1 / (1 - p)`."""
  if p == 0:
    return dict(tv)
  out = {}
  rescale = np.float32(1.0 / (1.0 - p))  # a multiplication: XLA would turn `/ c` into one anyway
  for k, v in tv.items():
    keep = jax.random.bernoulli(dare_key(seed, task, k), 1.0 - p, v.shape)
    out[k] = jnp.where(keep, v * rescale, jnp.zeros_like(v))
  return out


def elect_mean(tvs: Sequence[Flat]) -> dict[str, jax.Array]:
  """TIES' sign election and disjoint mean (module doc), per tensor (per layer)."""
  return {k: _per_layer(_elect_mean, k, *[t[k] for t in tvs]) for k in tvs[0]}


def summed(tvs: Sequence[Flat]) -> dict[str, jax.Array]:
  out = {}
  for k in tvs[0]:
    total = tvs[0][k]
    for t in tvs[1:]:
      total = total + t[k]
    out[k] = total
  return out


def update(method: str, tvs: Sequence[Flat], *, density: float = 1.0, p: float = 0.0,
           seed: int = 0, low: float = 0.0, high: float = 0.0) -> dict[str, jax.Array]:
  """The update `u` of `method` (module doc) from the task vectors."""
  if method == "task_arithmetic":
    return summed(tvs)
  if method == "ties":
    return elect_mean([trim(t, density) for t in tvs])
  if method == "dare":
    return summed([dare(t, p, seed, i) for i, t in enumerate(tvs)])
  if method == "dare_ties":
    return elect_mean([dare(t, p, seed, i) for i, t in enumerate(tvs)])
  if method == "breadcrumbs":
    return summed([breadcrumbs(t, low, high) for t in tvs])
  raise errors.ConfigError(f"merge method {method!r}: one of {', '.join(METHODS)}")


def stacks(shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
  """`{stack name: number of layers}` from the parameter paths (`layers/3/...`) or, for a
  scanned stack (`layers/...`), its leading axis."""
  depth: dict[str, int] = {}
  for path, shape in shapes.items():
    m = _LAYER.match(path)
    if m:
      depth[m["stack"]] = max(depth.get(m["stack"], 0), int(m["i"]) + 1)
    elif (m := _STACKED.match(path)) and len(shape):
      depth[m["stack"]] = max(depth.get(m["stack"], 0), int(shape[0]))
  return depth


def lines_scale(l: int, depth: int, alpha: float, beta: float) -> float:
  """LiNeS' factor of layer `l` (0-based) of `depth`: `alpha + beta * l / (depth - 1)`."""
  return alpha if depth <= 1 else alpha + beta * l / (depth - 1)


def lines_scales(shapes: Mapping[str, Sequence[int]], alpha: float, beta: float
                 ) -> dict[str, np.ndarray]:
  """Each parameter's LiNeS factor, shaped to broadcast against it (`[L, 1, ...]` for a stacked
  parameter, a scalar otherwise)."""
  depth = stacks(shapes)
  out = {}
  for path, shape in shapes.items():
    if m := _LAYER.match(path):
      out[path] = np.float32(lines_scale(int(m["i"]), depth[m["stack"]], alpha, beta))
    elif (m := _STACKED.match(path)) and len(shape):
      d = depth[m["stack"]]
      col = [lines_scale(i, d, alpha, beta) for i in range(shape[0])]
      out[path] = np.asarray(col, np.float32).reshape((shape[0],) + (1,) * (len(shape) - 1))
    else:
      out[path] = np.float32(alpha)
  return out


def apply(base: Flat, upd: Flat, scale) -> dict[str, jax.Array]:
  """`b + scale * u` in float32, cast to the base's dtype; `scale` a number or `{path: factor}`."""
  out = {}
  for k, b in base.items():
    s = scale[k] if isinstance(scale, Mapping) else scale
    out[k] = (b.astype(jnp.float32) + s * upd[k]).astype(b.dtype)
  return out


# ------------------------------------------------------------------------ driver


def _sharded_jit(fn, like: jax.Array):
  sharding = getattr(like, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.jit(fn, out_shardings=sharding)
  return jax.jit(fn)


def merge(base: Flat, finetuned: Sequence[Flat], method: str, *, lam: float = 1.0,
          density: float = 1.0, p: float = 0.0, seed: int = 0, low: float = 0.0,
          high: float = 0.0, lines: tuple[float | str, float] | None = None
          ) -> tuple[dict[str, jax.Array], dict]:
  """The merged parameters and what was done (`info`: method, options, LiNeS' alpha and the
  per-stack factors). One parameter at a time, each jitted with the base's sharding."""
  check_options(method, density=density, p=p, low=low, high=high, n=len(finetuned))
  opts = dict(density=density, p=p, seed=seed, low=low, high=high)
  upd = {}
  for k, b in base.items():
    def one(b, fs, k=k):
      return update(method, task_vectors({k: b}, [{k: f} for f in fs]), **opts)[k]
    upd[k] = _sharded_jit(one, b)(b, tuple(f[k] for f in finetuned))
  info: dict = {"method": method, "num_models": len(finetuned), **{
      name: value for name, value in opts.items()
      if (name == "density" and method == "ties")
      or (name in ("p", "seed") and method.startswith("dare"))
      or (name in ("low", "high") and method == "breadcrumbs")}}
  shapes = {k: tuple(v.shape) for k, v in base.items()}
  if lines is None:
    info["lam"] = lam
    scale = {k: np.float32(lam) for k in base}
  else:
    alpha, beta = lines
    if alpha == "auto":
      l1 = lambda tree: float(sum(jnp.sum(jnp.abs(v)) for v in tree.values()))
      total = {}
      for k, b in base.items():
        def tsum(b, fs, k=k):
          return summed(task_vectors({k: b}, [{k: f} for f in fs]))[k]
        total[k] = _sharded_jit(tsum, b)(b, tuple(f[k] for f in finetuned))
      norm_u = l1(upd)
      alpha = (l1(total) / norm_u / len(finetuned)) if norm_u else 1.0 / len(finetuned)
      del total
    info["lines"] = {"alpha": float(alpha), "beta": float(beta), "stacks": {
        s: [lines_scale(i, d, float(alpha), float(beta)) for i in range(d)]
        for s, d in sorted(stacks(shapes).items())}}
    scale = lines_scales(shapes, float(alpha), float(beta))
  merged = {}
  for k, b in base.items():
    merged[k] = _sharded_jit(lambda b, u, s: apply({"x": b}, {"x": u}, s)["x"], b)(
        b, upd.pop(k), jnp.asarray(scale[k]))
  return merged, info


def check_options(method: str, *, density: float, p: float, low: float, high: float,
                  n: int) -> None:
  if method not in METHODS:
    raise errors.ConfigError(f"merge method {method!r}: one of {', '.join(METHODS)}")
  if n < 1:
    raise errors.ConfigError("merge needs at least one finetuned model")
  if not 0.0 <= density <= 1.0:
    raise errors.ConfigError(f"--density {density}: a share of entries in [0, 1]")
  if not 0.0 <= p < 1.0:
    raise errors.ConfigError(f"--drop {p}: DARE's drop rate is in [0, 1)")
  if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0 and low + high < 1.0):
    raise errors.ConfigError(f"--low {low} / --high {high}: shares in [0, 1) whose sum is < 1")
