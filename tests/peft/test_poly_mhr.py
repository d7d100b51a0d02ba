"""Why Poly and MHR gave identical outputs in the adapters study (docs/results/adapters.md), as
tests: MHR is exactly Poly while its blocks share one routing (and both draw the same skills
from the same seed), and differs once the blocks' routings differ; and the study pins one
pretrained checkpoint for every method and seed (its first runs did not: seed 0's methods
started from three different checkpoints, which is why its Poly and MHR differed and the other
seeds' did not)."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtjax.peft import poly, routing

KERNEL, NAMES = (8, 6), ("embed", "mlp")


def _pair(seed=0):
  common = dict(rank=2, alpha=4.0, skills=3, tasks=2, param_dtype=jnp.float32)
  p = poly.PolyLoRA(KERNEL, NAMES, 1, heads=1, rngs=nnx.Rngs(seed), **common)
  m = poly.PolyLoRA(KERNEL, NAMES, 1, heads=2, rngs=nnx.Rngs(seed), **common)
  return p, m


def test_poly_and_mhr_draw_the_same_skills_from_the_same_seed():
  p, m = _pair()
  np.testing.assert_array_equal(np.asarray(p.a[...]), np.asarray(m.a[...]))
  np.testing.assert_array_equal(np.asarray(p.b[...]), np.asarray(m.b[...]))  # (zeros)
  # both routings start within 1e-3 of uniform: weights 1/3 +- 2e-4
  for module in (p, m):
    np.testing.assert_allclose(np.asarray(module.weights(module.router[...])), 1 / 3, atol=2e-4)


def test_mhr_is_poly_while_its_blocks_share_one_routing_and_differs_after():
  p, m = _pair()
  rng = np.random.default_rng(0)
  b = rng.normal(0, 0.5, p.b[...].shape).astype(np.float32)  # skills that change the output
  a = rng.normal(0, 0.5, p.a[...].shape).astype(np.float32)
  z = rng.normal(0, 1.0, (2, 1, 3)).astype(np.float32)  # a far from uniform task routing
  for module in (p, m):
    module.a.set_value(a)
    module.b.set_value(b)
  p.router.set_value(z)
  m.router.set_value(np.repeat(z, 2, axis=1))  # both blocks: Poly's routing
  x = jnp.asarray(rng.normal(size=(2, 5, 8)).astype(np.float32))
  ids = np.array([[0, 0, 1, 1, 1], [1, 0, 1, 0, 0]])
  with routing.scope(ids):
    same_p, same_m = np.asarray(p(x)), np.asarray(m(x))
  np.testing.assert_allclose(same_m, same_p, rtol=1e-5, atol=1e-6)
  # the second block routed on its own: the outputs differ (the study's 150 steps moved the
  # blocks' weights apart by at most 0.018, from 1/4)
  m.router.set_value(np.concatenate([z, z[:, :, ::-1]], axis=1))
  with routing.scope(ids):
    apart = np.asarray(m(x))
  assert np.abs(apart - same_p).max() > 1e-2


def test_the_adapters_study_starts_every_method_and_seed_from_one_pretrained_step():
  from scripts import repro_adapters as ra

  args = ra.parser().parse_args(["--pretrain_steps=1000", "--seeds=0,1,2"])
  pinned = None
  for seed in (0, 1, 2):
    sources = {m: st.cfg.train.init_from for m, st in ra.stages(args, seed).items()}
    sources["pretrained"] = ra.base_config(args, seed).train.init_from
    assert set(sources) >= {"pretrained", "multitask", "lora", "poly", "mhr", "mtlora",
                            "loramoe", "mixlora"}
    pinned = pinned or sources["pretrained"]
    assert set(sources.values()) == {pinned}, sources
  # a step dir (fixed weights), not a run dir whose latest step can move
  assert pinned.endswith("/pretrain/checkpoints/1000"), pinned
