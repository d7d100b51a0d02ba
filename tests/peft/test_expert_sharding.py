"""MixLoRA / LoRAMoE experts sharded over the mesh's tensor axis (model.adapter_shard_experts) on
the 8 fake CPU devices: the expert banks and routers are split over `tensor` (each device holds
1/T of the experts), and the forward pass and the gradients equal the replicated experts'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtjax import errors
from mtjax.config import schema
from mtjax.models import registry
from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib

RULES = rules_lib.DEFAULT_RULES


def _build(adapter, shard, mesh, experts=4):
  cfg = schema.ModelConfig(preset="decoder_test", lora_rank=2, adapter=adapter,
                           adapter_experts=experts, adapter_shard_experts=shard,
                           lora_targets=("query", "value", "gate", "up", "down"))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    model = registry.create(cfg, seed=0, mesh=mesh, rules=RULES, task_names=("t0", "t1"))
    return nnx.split(model)


def _flat(params):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("adapter", ["mixlora", "loramoe"])
def test_sharded_experts_split_over_tensor_and_compute_the_same(adapter):
  mesh = mesh_lib.make_mesh(2, 2, 2)
  graphdef, replicated = _build(adapter, False, mesh)
  sharded_graphdef, sharded = _build(adapter, True, mesh)
  rep, sh = _flat(replicated.to_pure_dict()), _flat(sharded.to_pure_dict())
  assert rep.keys() == sh.keys()
  expert_paths = [p for p in sh if "router" in p or (
      ("ffn_lora" in p or adapter == "loramoe") and "_lora" in p)]
  assert expert_paths
  held = {"replicated": 0, "sharded": 0}
  for path in expert_paths:
    spec = sh[path].sharding.spec
    axis = -1 if path.endswith("['router']") else 0  # routers: [in..., E]; banks: [E, ...]
    assert spec[axis] == "tensor", (path, spec)
    assert rep[path].sharding.spec[axis] is None, (path, rep[path].sharding.spec)
    held["replicated"] += rep[path].addressable_shards[0].data.nbytes
    held["sharded"] += sh[path].addressable_shards[0].data.nbytes
  # each device holds less of the experts (the `a` factors and routers: half, on tensor = 2)
  assert held["sharded"] < held["replicated"], held

  # the same values in both layouts: the same logits and the same gradients
  rng = np.random.default_rng(0)
  values = {p: rng.normal(0, 0.3, np.shape(v)).astype(np.float32) for p, v in rep.items()}

  def fill(params):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    return jax.tree_util.tree_unflatten(treedef, [
        jax.device_put(values[jax.tree_util.keystr(p)], v.sharding) for p, v in leaves])

  rep_p, sh_p = fill(replicated.to_pure_dict()), fill(sharded.to_pure_dict())
  batch = {"decoder_input_tokens": rng.integers(2, 200, (8, 6)).astype(np.int32),
           "decoder_target_tokens": rng.integers(2, 200, (8, 6)).astype(np.int32)}

  def loss_fn(g):
    def loss(p):
      logits = nnx.merge(g, p)(batch)
      logp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1))
    return jax.jit(jax.value_and_grad(loss))

  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    loss_r, grads_r = loss_fn(graphdef)(rep_p)
    loss_s, grads_s = loss_fn(sharded_graphdef)(sh_p)
  np.testing.assert_allclose(float(loss_s), float(loss_r), rtol=1e-5)
  gr, gs = _flat(grads_r), _flat(grads_s)
  for path in gr:
    np.testing.assert_allclose(np.asarray(gs[path]), np.asarray(gr[path]), rtol=2e-4, atol=2e-6,
                               err_msg=path)


def test_the_tensor_axis_must_divide_the_experts():
  with pytest.raises(errors.ConfigError, match="adapter_shard_experts"):
    _build("mixlora", True, mesh_lib.make_mesh(4, 1, 2), experts=3)
  _build("mixlora", False, mesh_lib.make_mesh(4, 1, 2), experts=3)  # replicated: any number
