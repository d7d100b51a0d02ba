"""Why Poly and MHR gave identical outputs in the adapters study (docs/results/adapters.md), as
tests: MHR is exactly Poly while its blocks share one routing (and both draw the same skills
from the same seed), and differs once the blocks' routings differ; and the study pins one
pretrained checkpoint for every method and seed (its first runs did not: seed 0's methods
started from three different checkpoints, which is why its Poly and MHR differed and the other
seeds' did not)."""

import jax
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


# --- Polytropon's relaxed-Bernoulli routing (model.adapter_routing=gumbel) ---------------------


def _np_mixture(x, ids, a, b, z, heads, scale):
  """The Poly/MHR update of each token, in numpy, from allocation values `z [T, H, S]`."""
  w = z / (z.sum(-1, keepdims=True) + 1e-12)
  s = a.shape[0]
  a, b = a.reshape(s, -1, a.shape[-1]), b.reshape(s, b.shape[1], -1)
  out = np.zeros(x.shape[:-1] + (b.shape[-1],))
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      t = ids[i, j]
      ai = np.concatenate([sum(w[t, h, k] * np.split(a[k], heads, 0)[h] for k in range(s))
                           for h in range(heads)], 0)
      bi = np.concatenate([sum(w[t, h, k] * np.split(b[k], heads, 1)[h] for k in range(s))
                           for h in range(heads)], 1)
      out[i, j] = x[i, j] @ ai @ bi * scale
  return out


def test_gumbel_routing_draws_the_relaxed_bernoulli_in_training_and_is_the_sigmoid_at_eval():
  tau = 0.7
  m = poly.PolyLoRA(KERNEL, NAMES, 1, rank=2, alpha=4.0, skills=3, heads=2, tasks=2,
                    param_dtype=jnp.float32, rngs=nnx.Rngs(0), routing_mode="gumbel",
                    temperature=tau)
  rng = np.random.default_rng(1)
  for var in (m.a, m.b, m.router):
    var.set_value(rng.normal(0, 0.5, var[...].shape).astype(np.float32))
  a, b = np.asarray(m.a[...], np.float64), np.asarray(m.b[...], np.float64)
  logits = np.asarray(m.router[...], np.float64)
  x = rng.normal(size=(2, 4, 8)).astype(np.float32)
  ids = np.array([[0, 1, 1, 0], [1, 1, 0, 0]])
  # evaluation (no noise key): the deterministic sigmoid allocation
  with routing.scope(ids):
    got = np.asarray(m(jnp.asarray(x)))
  want = _np_mixture(x, ids, a, b, 1 / (1 + np.exp(-logits)), 2, 2.0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # training: z = sigmoid((logit + log u - log(1 - u)) / tau), u the draw of the layer's key
  key = jax.random.key(3)
  with routing.scope(ids), routing.noise(key):
    first, second = np.asarray(m(jnp.asarray(x))), np.asarray(m(jnp.asarray(x)))
  outs = []
  for count in (1, 2):  # each call in one layer's scope draws anew
    k = jax.random.fold_in(jax.random.fold_in(key, routing.NOISE_SALT), count)
    eps = np.finfo(np.float32).eps
    u = np.clip(np.asarray(jax.random.uniform(k, logits.shape, jnp.float32), np.float64), eps,
                1 - eps)
    z = 1 / (1 + np.exp(-(logits + np.log(u) - np.log1p(-u)) / tau))
    outs.append(_np_mixture(x, ids, a, b, z, 2, 2.0))
  np.testing.assert_allclose(first, outs[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(second, outs[1], rtol=1e-4, atol=1e-4)
  assert np.abs(first - second).max() > 1e-3 and np.abs(first - got).max() > 1e-3
  with routing.scope(ids), routing.noise(key):  # the same key: the same draw
    np.testing.assert_array_equal(np.asarray(m(jnp.asarray(x))), first)
  # export folds the deterministic allocation, noise or not
  from mtjax.peft import lowrank
  lowrank.set_task(m, 1)
  with routing.noise(key):
    folded = np.tensordot(x, np.asarray(m.delta()), axes=1)
  np.testing.assert_allclose(folded, _np_mixture(x, np.ones_like(ids), a, b,
                                                 1 / (1 + np.exp(-logits)), 2, 2.0),
                             rtol=1e-4, atol=1e-4)


def test_a_relaxed_bernoulli_sample_exceeds_one_half_with_the_bernoulli_probability():
  logits = jnp.array([-2.0, 0.0, 1.5])
  for tau in (0.3, 1.0):
    draws = jax.vmap(lambda k: poly.relaxed_bernoulli(k, logits, tau))(
        jax.random.split(jax.random.key(0), 20000))
    frac = np.asarray(jnp.mean(draws > 0.5, axis=0))
    np.testing.assert_allclose(frac, 1 / (1 + np.exp(-np.asarray(logits))), atol=0.015)
  # a low temperature makes the draws nearly binary
  cold = poly.relaxed_bernoulli(jax.random.key(1), jnp.zeros(5000), 0.05)
  assert float(jnp.mean((cold < 0.05) | (cold > 0.95))) > 0.85


def test_a_gumbel_model_draws_per_step_in_training_and_evaluates_deterministically():
  import pytest

  from mtjax.models import registry

  def build(mode, scan=False):
    return registry.build(registry.config(
        "decoder_test", lora_rank=2, lora_targets=("query", "value", "down"), adapter="poly",
        adapter_experts=3, adapter_tasks=2, adapter_routing=mode, scan_layers=scan),
        rngs=nnx.Rngs(0))

  sig, gum = build("sigmoid"), build("gumbel")
  rng = np.random.default_rng(0)
  for model in (sig, gum):
    for path, var in nnx.state(model, nnx.Param).flat_state():
      if "_lora" in "/".join(map(str, path)):
        var.set_value(np.random.default_rng(len(path)).normal(0, 0.5, var.get_value().shape)
                      .astype(np.float32))
  tokens = rng.integers(2, 200, (2, 6)).astype(np.int32)
  batch = {"decoder_input_tokens": tokens, "task_ids": np.array([[0] * 6, [1] * 6], np.int32)}
  k1, k2 = jax.random.key(1), jax.random.key(2)
  eval_out = np.asarray(gum(batch))
  np.testing.assert_array_equal(eval_out, np.asarray(sig(batch)))  # no rng: the sigmoid
  np.testing.assert_array_equal(np.asarray(sig(batch, rng=k1)), eval_out)  # sigmoid: no noise
  train1 = np.asarray(gum(batch, rng=k1))
  np.testing.assert_array_equal(np.asarray(gum(batch, rng=k1)), train1)  # reproducible
  assert np.abs(train1 - np.asarray(gum(batch, rng=k2))).max() > 1e-3  # a new draw per step
  assert np.abs(train1 - eval_out).max() > 1e-3
  # the router gets gradients through the relaxed sample; a scanned stack runs it too
  graphdef, params = nnx.split(gum)

  def loss(p):
    return jnp.mean(nnx.merge(graphdef, p)(batch, rng=k1) ** 2)

  grads = jax.grad(loss)(params)
  router = grads["layers"][0]["attention"]["query_lora"]["router"]
  assert float(jnp.abs(router).max()) > 0
  scanned = build("gumbel", scan=True)
  assert np.isfinite(np.asarray(scanned(batch, rng=k1))).all()
  with pytest.raises(ValueError, match="adapter_routing"):
    build("hard")
