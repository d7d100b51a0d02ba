"""Multi-task adapters (mtjax.peft.adapters) against plain-numpy references: each method's forward
(routing weights, top-k, balancing losses), each reducing to LoRA with one skill / expert,
per-task routing in a packed batch equal to the task fixed by hand, export folding, and a run
through the loop (only adapters train; resume bit-identical; `mtjax eval` per task)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtjax.models import registry
from mtjax.peft import adapters, lora, lowrank, moe_lora, mtlora, poly, routing

RANK, ALPHA = 2, 4.0
SCALE = ALPHA / RANK


def _randomise(module, seed=0, std=0.3):
  """Every parameter of `module` random (B banks included, so the updates matter)."""
  rng = np.random.default_rng(seed)
  for _, var in nnx.state(module, nnx.Param).flat_state():
    var.set_value(rng.normal(0, std, var.get_value().shape).astype(np.float32))
  return module


def _np(module, name):
  return np.asarray(getattr(module, name)[...], np.float64)


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


# --- one module against numpy ------------------------------------------------------------------


@pytest.mark.parametrize("heads", [1, 2])
def test_poly_and_mhr_equal_the_numpy_mixture_of_skills(heads):
  # a kernel like T5's `out`: in (2, 4) -> out 6; 3 skills, 2 tasks
  m = _randomise(poly.PolyLoRA((2, 4, 6), ("heads", "kv", "embed"), 2, rank=RANK, alpha=ALPHA,
                               skills=3, heads=heads, tasks=2, param_dtype=jnp.float32,
                               rngs=nnx.Rngs(0)))
  x = np.random.default_rng(1).normal(size=(2, 3, 2, 4)).astype(np.float32)
  ids = np.array([[0, 1, 1], [1, 0, 0]])
  with routing.scope(ids):
    got = np.asarray(m(jnp.asarray(x)))
  a = _np(m, "a").reshape(3, 8, RANK)  # [S, in, r]
  b = _np(m, "b").reshape(3, RANK, 6)
  z = _sigmoid(_np(m, "router"))  # [T, H, S]
  w = z / (z.sum(-1, keepdims=True) + 1e-12)
  want = np.zeros((2, 3, 6))
  for i in range(2):
    for j in range(3):
      t = ids[i, j]
      ai = np.concatenate([sum(w[t, h, s] * np.split(a[s], heads, 0)[h] for s in range(3))
                           for h in range(heads)], 0)
      bi = np.concatenate([sum(w[t, h, s] * np.split(b[s], heads, 1)[h] for s in range(3))
                           for h in range(heads)], 1)
      want[i, j] = x[i, j].reshape(-1) @ ai @ bi * SCALE
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # a fixed task (evaluation, export) is the same as routing every token to it, and folds
  lowrank.set_task(m, 1)
  fixed = np.asarray(m(jnp.asarray(x)))
  with routing.scope(np.ones_like(ids)):
    lowrank.set_task(m, None)
    np.testing.assert_allclose(fixed, np.asarray(m(jnp.asarray(x))), rtol=1e-6, atol=1e-6)
  lowrank.set_task(m, 1)
  folded = np.tensordot(x, np.asarray(m.delta()), axes=2)
  np.testing.assert_allclose(folded, fixed, rtol=1e-5, atol=1e-6)


def test_poly_without_a_task_says_how_to_give_one():
  m = poly.PolyLoRA((4, 4), ("embed", "mlp"), 1, rank=RANK, alpha=ALPHA, skills=2, heads=1,
                    tasks=2, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="select_task"):
    m(jnp.ones((1, 2, 4)))
  with pytest.raises(lowrank.NotFoldable, match="one task"):
    m.delta()
  m.default_task = 1  # model.adapter_default_task: inputs of no known task (infer, other tasks)
  x = jnp.ones((1, 2, 4))
  lowrank.set_task(m, 1)
  np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(
      (lowrank.set_task(m, None), m(x))[1]))


def test_mtlora_is_the_shared_plus_the_tasks_update():
  m = _randomise(mtlora.MTLoRA((5, 3), ("embed", "mlp"), 1, rank=RANK, alpha=ALPHA, tasks=3,
                               param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
  x = np.random.default_rng(1).normal(size=(2, 4, 5)).astype(np.float32)
  ids = np.array([[0, 1, 2, 2], [2, 2, 0, 1]])
  with routing.scope(ids):
    got = np.asarray(m(jnp.asarray(x)))
  a, b = _np(m, "a")[0], _np(m, "b")[0]
  ta, tb = _np(m, "task_a"), _np(m, "task_b")
  want = np.einsum("bli,ir,ro->blo", x, a, b) * SCALE
  for i in range(2):
    for j in range(4):
      want[i, j] += x[i, j] @ ta[ids[i, j]] @ tb[ids[i, j]] * SCALE
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  lowrank.set_task(m, 2)
  np.testing.assert_allclose(np.asarray(m.delta()), (a @ b + ta[2] @ tb[2]) * SCALE, rtol=1e-5,
                             atol=1e-6)


def test_loramoe_mixes_every_expert_and_its_localized_balance_is_the_papers_formula():
  m = _randomise(moe_lora.LoRAMoE((6, 4), ("embed", "mlp"), 1, rank=RANK, alpha=ALPHA,
                                  experts=4, balance=0.5, knowledge_tasks=(1,), tasks=2,
                                  param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
  x = np.random.default_rng(1).normal(size=(2, 3, 6)).astype(np.float32)
  ids = np.array([[0, 0, 1], [1, 1, 0]])
  real = np.array([[1, 1, 1], [1, 1, 0]])
  with routing.collect() as c, routing.scope(ids, real):
    got = np.asarray(m(jnp.asarray(x)))
  g = _softmax(np.einsum("bli,ie->ble", x, _np(m, "router")))
  a, b = _np(m, "a"), _np(m, "b")
  want = np.einsum("ble,bli,eir,ero->blo", g, x, a, b) * SCALE
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  def balance(mask):  # experts 0, 1: knowledge (type 0 = task 1); 2, 3: downstream
    types = np.where(ids == 1, 0, 1)
    q = np.zeros((4, 2))
    for i, j in zip(*np.nonzero(mask)):
      q[:, types[i, j]] += g[i, j]
    q /= max(mask.sum(), 1)
    coef = np.array([[1.1, 0.9], [1.1, 0.9], [0.9, 1.1], [0.9, 1.1]])
    z = coef * q
    return z.var() / z.mean()

  parts = c.sums["loramoe_balance"]
  np.testing.assert_allclose(float(parts["sum"]), balance(real), rtol=1e-5)
  per_task = [balance(real * (ids == t)) for t in range(2)]
  np.testing.assert_allclose(np.asarray(parts["task_sum"]), per_task, rtol=1e-5)
  np.testing.assert_allclose(float(c.penalty()), 0.5 * balance(real), rtol=1e-5)
  with pytest.raises(lowrank.NotFoldable, match="do not fold"):
    m.delta()


def test_mixlora_is_the_top_k_mixture_of_expert_feed_forwards_with_the_switch_loss():
  d, f, e, k = 6, 8, 4, 2
  rng = np.random.default_rng(0)
  kernels = {"gate": rng.normal(size=(d, f)), "up": rng.normal(size=(d, f)),
             "down": rng.normal(size=(f, d))}
  m = _randomise(moe_lora.MixLoRA(
      {n: (v.shape, ("embed", "mlp") if n != "down" else ("mlp", "embed"))
       for n, v in kernels.items() if n != "up"}, d, rank=RANK, alpha=ALPHA, experts=e, top_k=k,
      balance=0.01, tasks=2, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
  x = rng.normal(size=(2, 5, d)).astype(np.float32)
  ids = np.array([[0, 0, 0, 1, 1], [1, 1, 1, 1, 0]])
  with routing.collect() as c, routing.scope(ids):
    got = np.asarray(m(jnp.asarray(x), {n: jnp.asarray(v, jnp.float32) for n, v in
                                         kernels.items()}, jax.nn.silu, "gate", "up", "down",
                       lambda h: h))
  silu = lambda z: z / (1 + np.exp(-z))
  probs = _softmax(x @ _np(m, "router"))
  want = np.zeros_like(x, np.float64)
  chosen = np.zeros(probs.shape)
  for i in range(2):
    for j in range(5):
      top = np.argsort(-probs[i, j], kind="stable")[:k]
      chosen[i, j, top] = 1
      for ex in top:  # `up` has no experts here: every expert uses the frozen kernel
        wg = kernels["gate"] + _np(m, "gate_a")[ex] @ _np(m, "gate_b")[ex] * SCALE
        wd = kernels["down"] + _np(m, "down_a")[ex] @ _np(m, "down_b")[ex] * SCALE
        h = silu(x[i, j] @ wg) * (x[i, j] @ kernels["up"])
        want[i, j] += probs[i, j, ex] / probs[i, j, top].sum() * (h @ wd)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  def switch(mask):
    n = mask.sum()
    fr = (chosen * mask[..., None]).sum((0, 1)) / n
    p = (probs * mask[..., None]).sum((0, 1)) / n
    return e * (fr * p).sum()

  parts = c.sums["mixlora_balance"]
  np.testing.assert_allclose(float(parts["sum"]), switch(np.ones((2, 5))), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(parts["task_sum"]),
                             [switch((ids == t).astype(float)) for t in range(2)], rtol=1e-5)


def test_encoder_tokens_take_the_task_of_their_packed_segment():
  task_ids = np.array([[3, 3, 5, 5, 5, 0]])
  dec_seg = np.array([[1, 1, 2, 2, 2, 0]])
  enc_seg = np.array([[1, 1, 1, 2, 2, 0, 0]])
  got = routing.encoder_task_ids(task_ids, dec_seg, enc_seg, 7)
  np.testing.assert_array_equal(np.asarray(got), [[3, 3, 3, 5, 5, 0, 0]])
  unpacked = routing.encoder_task_ids(task_ids, None, None, 4)
  np.testing.assert_array_equal(np.asarray(unpacked), [[3, 3, 3, 3]])


# --- whole models ------------------------------------------------------------------------------


def _name(family):
  return "t5_test" if family == "t5" else "decoder_test"


def _copy_params(src, dst):
  """`dst` with `src`'s values wherever both have a parameter of that path."""
  base = dict(nnx.state(src, nnx.Param).flat_state())
  for path, var in nnx.state(dst, nnx.Param).flat_state():
    if path in base and base[path].get_value().shape == var.get_value().shape:
      var.set_value(base[path].get_value())
  return dst


def _packed_batch(family):
  """One packed row with a segment of task 0 and one of task 1 (and a padded tail)."""
  rng = np.random.default_rng(0)
  if family == "t5":
    return {"encoder_input_tokens": rng.integers(2, 300, (1, 8)).astype(np.int32),
            "encoder_segment_ids": np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32),
            "encoder_positions": np.array([[0, 1, 2, 0, 1, 2, 3, 0]], np.int32),
            "decoder_input_tokens": rng.integers(2, 300, (1, 6)).astype(np.int32),
            "decoder_segment_ids": np.array([[1, 1, 1, 2, 2, 0]], np.int32),
            "decoder_positions": np.array([[0, 1, 2, 0, 1, 0]], np.int32),
            "task_ids": np.array([[0, 0, 0, 1, 1, 0]], np.int32)}
  return {"decoder_input_tokens": rng.integers(2, 300, (1, 8)).astype(np.int32),
          "decoder_segment_ids": np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32),
          "decoder_positions": np.array([[0, 1, 2, 0, 1, 2, 3, 0]], np.int32),
          "task_ids": np.array([[0, 0, 0, 1, 1, 1, 1, 0]], np.int32)}


@pytest.mark.parametrize("family", ["t5", "decoder"])
@pytest.mark.parametrize("adapter", ["poly", "mixlora", "loramoe", "mtlora"])
def test_with_one_skill_or_expert_each_method_is_lora(family, adapter):
  targets = registry.family(registry.config(_name(family))).LORA_TARGETS
  kw = dict(lora_rank=RANK, lora_alpha=ALPHA, lora_targets=targets)
  plain_lora = _randomise(registry.build(registry.config(_name(family), **kw),
                                         rngs=nnx.Rngs(0)), std=0.2)
  model = registry.build(registry.config(_name(family), adapter=adapter, adapter_experts=1,
                                         adapter_top_k=1, adapter_tasks=2, **kw),
                         rngs=nnx.Rngs(1))
  _copy_params(plain_lora, model)
  flat = {"/".join(map(str, p)): v for p, v in nnx.state(plain_lora, nnx.Param).flat_state()}
  for path, var in nnx.state(model, nnx.Param).flat_state():
    key = "/".join(map(str, path))
    if key in flat and flat[key].get_value().shape == var.get_value().shape:
      continue
    # the one skill / expert / shared pair takes LoRA's factors; MTLoRA's task pairs stay zero
    stem, leaf = key.rsplit("/", 1)
    if leaf == "task_b":
      var.set_value(np.zeros(var.get_value().shape, np.float32))
    elif leaf == "task_a":
      pass  # random: the zero task_b cancels it
    elif leaf in ("a", "b"):
      var.set_value(np.asarray(flat[f"{stem}/{leaf}"].get_value())[None])
    elif leaf.endswith("_a") or leaf.endswith("_b"):  # MixLoRA: ffn_lora/<proj>_a
      proj, side = leaf.rsplit("_", 1)
      var.set_value(np.asarray(flat[f"{stem[:-len('ffn_lora')]}{proj}_lora/{side}"]
                               .get_value())[None])
  batch = _packed_batch(family)
  want = np.asarray(plain_lora(batch))
  assert np.abs(want - np.asarray(_copy_params(plain_lora, registry.build(
      registry.config(_name(family)), rngs=nnx.Rngs(0)))(batch))).max() > 1e-2  # LoRA matters
  np.testing.assert_allclose(np.asarray(model(batch)), want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("family", ["t5", "decoder"])
@pytest.mark.parametrize("adapter", ["mhr", "mtlora"])
def test_a_packed_batch_routes_each_segment_to_its_task(family, adapter):
  targets = registry.family(registry.config(_name(family))).LORA_TARGETS
  model = _randomise(registry.build(registry.config(
      _name(family), lora_rank=RANK, lora_alpha=ALPHA, lora_targets=targets, adapter=adapter,
      adapter_experts=2, adapter_heads=2, adapter_tasks=2), rngs=nnx.Rngs(0)), std=0.2)
  batch = _packed_batch(family)
  packed = np.asarray(model(batch))
  graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  fixed = []
  for task in (0, 1):
    g, p = adapters.select_task(graphdef, params, task)
    fixed.append(np.asarray(nnx.merge(g, p)({k: v for k, v in batch.items() if k != "task_ids"})))
  seg = batch["decoder_segment_ids"][0]
  assert np.abs(fixed[0] - fixed[1]).max() > 1e-2  # the two tasks' adapters differ
  for task, segment in ((0, 1), (1, 2)):
    np.testing.assert_allclose(packed[0, seg == segment], fixed[task][0, seg == segment],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,scan", [("t5", True), ("decoder", False)])
def test_a_fixed_task_folds_into_the_kernels_and_routers_refuse_to(family, scan):
  targets = registry.family(registry.config(_name(family))).LORA_TARGETS
  kw = dict(lora_rank=RANK, lora_alpha=ALPHA, lora_targets=targets, adapter_tasks=2,
            scan_layers=scan)
  model = _randomise(registry.build(registry.config(_name(family), adapter="mhr",
                                                    adapter_heads=2, **kw),
                                    rngs=nnx.Rngs(0)), std=0.2)
  with pytest.raises(lowrank.NotFoldable, match="one task"):
    lora.merged_kernels(model)
  adapters.select_task_on(model, 1)
  batch = {k: v for k, v in _packed_batch(family).items() if k != "task_ids"}
  want = np.asarray(model(batch))
  merged = lora.merged_kernels(model)
  plain = registry.build(registry.config(_name(family), scan_layers=scan), rngs=nnx.Rngs(0))
  flat = {".".join(map(str, p)): v for p, v in nnx.state(model, nnx.Param).flat_state()}
  for path, var in nnx.state(plain, nnx.Param).flat_state():
    key = ".".join(map(str, path))
    var.set_value(np.asarray(merged.get(key, flat[key].get_value())))
  np.testing.assert_allclose(np.asarray(plain(batch)), want, rtol=1e-4, atol=5e-5)
  moe = registry.build(registry.config(_name(family), adapter="mixlora", **kw), rngs=nnx.Rngs(0))
  with pytest.raises(lowrank.NotFoldable, match="do not fold"):
    lora.merged_kernels(moe)


def test_scanned_and_unrolled_stacks_report_the_same_balancing_loss():
  def build(scan):
    return registry.build(registry.config(
        "decoder_test", lora_rank=RANK, lora_targets=("query", "gate", "down"),
        adapter="mixlora", adapter_tasks=2, scan_layers=scan), rngs=nnx.Rngs(0))

  unrolled, scanned = build(False), build(True)
  weights = nnx.state(unrolled, nnx.Param).to_pure_dict()
  layers = [weights["layers"][i] for i in sorted(weights["layers"])]
  weights["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  state = nnx.state(scanned, nnx.Param)
  state.replace_by_pure_dict(weights)
  nnx.update(scanned, state)
  batch = _packed_batch("decoder")
  losses = []
  for model in (unrolled, scanned):
    with routing.collect() as c:
      model(batch)
    parts = c.sums["mixlora_balance"]
    losses.append((float(parts["sum"]), float(parts["count"]), np.asarray(parts["task_sum"])))
  assert losses[0][1] == losses[1][1] == 2  # one per layer
  np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-5)
  np.testing.assert_allclose(losses[0][2], losses[1][2], rtol=1e-5)


# --- training ----------------------------------------------------------------------------------


def _decoder_batch():
  targets = np.array([[5, 6, 7, 8, 1, 9, 9, 1], [9, 10, 9, 1, 4, 4, 1, 0]], np.int32)
  seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 2, 2, 2, 0]], np.int32)
  return {"decoder_target_tokens": targets,
          "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
          "decoder_segment_ids": seg,
          "decoder_positions": np.array([[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 0]],
                                        np.int32),
          "decoder_loss_weights": (seg > 0).astype(np.float32),
          "task_ids": np.array([[0, 0, 0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]], np.int32)}


@pytest.mark.parametrize("microbatches", [1, 2])
def test_the_step_adds_the_balancing_loss_and_trains_only_adapters_and_routers(microbatches):
  from mtjax.peft import filters
  from mtjax.train import loss as loss_lib
  from mtjax.train import metrics as metrics_lib
  from mtjax.train import optimizers
  from mtjax.train import step as step_lib

  cfg = registry.config("decoder_test", lora_rank=RANK, lora_targets=("query", "gate", "down"),
                        adapter="mixlora", adapter_tasks=2, adapter_balance=0.5)
  graphdef, state = nnx.split(registry.build(cfg, rngs=nnx.Rngs(0)))
  params = state.to_pure_dict()
  batch = _decoder_batch()
  # the reference: cross-entropy + 0.5 * mean over the two layers' Switch losses, by hand
  with routing.collect() as c:
    logits = nnx.merge(graphdef, params)(batch)
  ce, _ = loss_lib.loss_and_metrics(logits, batch["decoder_target_tokens"],
                                    batch["decoder_loss_weights"], batch["task_ids"], 2)
  parts = c.sums["mixlora_balance"]
  balance = float(parts["sum"]) / 2  # mean over the two layers
  if microbatches > 1:  # the balancing loss is not linear in the batch: each microbatch's own,
    balance = 0  # averaged (microbatch i holds rows i, i + k, ...: here row i)
    for i in range(microbatches):
      with routing.collect() as ci:
        nnx.merge(graphdef, params)({k: v[i::microbatches] for k, v in batch.items()})
      balance += float(ci.sums["mixlora_balance"]["sum"]) / 2 / microbatches
  want = float(ce) + 0.5 * balance
  tx = optimizers.make("adamw", 1e-2, 0.0)
  paths = filters.trainable_paths(params, "lora")
  assert any("router" in filters.path_str(p) for p in paths)
  assert all(lora.is_adapter_path(filters.path_str(p)) for p in paths)
  opt_state = tx.init(filters.partition(params, paths)[0])
  step = step_lib.make_train_step(graphdef, tx, num_tasks=2, trainable=paths, donate=False,
                                  microbatches=microbatches)
  before = jax.tree.map(np.asarray, params)
  params, opt_state, m = step(params, opt_state, batch, 0)
  np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5)
  row = metrics_lib.summarize(jax.device_get(m), ("t0", "t1"))
  np.testing.assert_allclose(row["aux/mixlora_balance"], balance, rtol=1e-5)
  assert {"aux/mixlora_balance/t0", "aux/mixlora_balance/t1"} <= set(row)
  flat = lambda t: {filters.path_str(tuple(getattr(k, "key", k) for k in p)): np.asarray(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  for name, value in flat(before).items():
    if lora.is_adapter_path(name):
      continue
    np.testing.assert_array_equal(flat(params)[name], value, err_msg=name)
  assert not np.array_equal(flat(params)["layers/0/mlp/ffn_lora/router"],
                            flat(before)["layers/0/mlp/ffn_lora/router"])


def test_a_run_trains_resumes_bit_identically_and_evaluates_each_task(tmp_path, synthetic_cache):
  """The config path (model.adapter=mhr with Polytropon's relaxed-Bernoulli routing,
  train.trainable=lora) through the loop on a 4x2x1 mesh: 4 steps straight equal 2 steps + a
  resume to 4, bit for bit (the routing noise is the step's); `mtjax eval`'s evaluation runs each
  task with its task fixed."""
  import orbax.checkpoint as ocp

  from mtjax.config import schema
  from mtjax.eval import run as eval_run
  from mtjax.recipes import train as train_recipe

  def cfg(run_dir, steps):
    return schema.RunConfig(
        run_dir=str(tmp_path / run_dir),
        data=schema.DataConfig(mixture="synthetic_strings", cache_dir=synthetic_cache,
                               inputs_length=32, targets_length=8, batch_size=8),
        model=schema.ModelConfig(preset="t5_test", lora_rank=2, adapter="mhr",
                                 adapter_experts=2, adapter_heads=2, adapter_routing="gumbel",
                                 lora_targets=("query", "value", "wi_0", "wo")),
        optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2),
        train=schema.TrainConfig(steps=steps, log_every=1, checkpoint_every=2,
                                 keep_checkpoints=2, trainable=("lora",)),
        eval=schema.EvalConfig(at_end=False, max_examples=2),
        mesh=schema.MeshConfig(data=4, fsdp=2, tensor=1))

  import shutil

  train_recipe.run(cfg("straight", 4), progress=False)
  # the same run stopped after step 2: its copy without step 4, resumed
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
  assert (tmp_path / "resumed" / "checkpoints" / "2").is_dir()  # it resumes from step 2
  train_recipe.run(cfg("resumed", 4), progress=False)
  read = lambda run: ocp.StandardCheckpointer().restore(str(tmp_path / run / "checkpoints" /
                                                            "4" / "params"))
  straight, resumed = read("straight"), read("resumed")
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  layer = straight["encoder_layers"]
  router = (layer["0"] if "0" in layer else layer[0])["self_attention"]["query_lora"]["router"]
  assert np.asarray(router).shape == (3, 2, 2)  # one row per task of the mixture
  run_cfg = dataclasses.replace(cfg("straight", 4), eval=schema.EvalConfig(max_examples=2))
  results = eval_run.evaluate_checkpoint(run_cfg, eval_run.locate(str(tmp_path / "straight")))
  tasks = [r["task"] for r in results["results"]]
  assert tasks == ["synthetic_copy", "synthetic_reverse", "synthetic_sort"]
  # mtjax export --task: a plain HF checkpoint equal to the adapted model with that task
  from mtjax import cli
  from mtjax.models import hf, store

  with pytest.raises(lowrank.NotFoldable, match="one task"):
    hf.export(store.load_any(str(tmp_path / "straight")), str(tmp_path / "hf_none"))
  cli.main(["export", "--checkpoint", str(tmp_path / "straight"), "--out",
            str(tmp_path / "hf_reverse"), "--task", "synthetic_reverse"])
  adapted = store.load_any(str(tmp_path / "straight"), task="synthetic_reverse")
  exported = hf.load(str(tmp_path / "hf_reverse"))
  assert not any(lora.is_adapter_path(".".join(map(str, p)))
                 for p, _ in nnx.state(exported, nnx.Param).flat_state())
  rng = np.random.default_rng(0)
  batch = {"encoder_input_tokens": rng.integers(2, 200, (2, 7)).astype(np.int32),
           "decoder_input_tokens": rng.integers(2, 200, (2, 4)).astype(np.int32)}
  np.testing.assert_allclose(np.asarray(exported(batch)), np.asarray(adapted(batch)),
                             rtol=1e-4, atol=5e-5)
