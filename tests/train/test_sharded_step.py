"""A train step on the 8-device mesh matches the same step on one device."""

import dataclasses

import jax
import numpy as np
import pytest

from mtjax.config import schema
from mtjax.parallel import arrays
from mtjax.train import setup as setup_lib
from mtjax.train import step as step_lib


def _cfg(cache_dir, data, fsdp, tensor):
  return schema.RunConfig(
      data=schema.DataConfig(cache_dir=cache_dir, inputs_length=32, targets_length=8,
                             batch_size=8),
      model=schema.ModelConfig(preset="t5_test"),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2),
      train=schema.TrainConfig(steps=3),
      mesh=schema.MeshConfig(data=data, fsdp=fsdp, tensor=tensor))


def _run(cfg, devices, steps=3):
  setup = setup_lib.build(cfg, devices=devices)
  data = setup_lib.data_iterator(setup)
  fn = step_lib.make_train_step(setup.graphdef, setup.tx, num_tasks=len(setup.spec.tasks))
  params, opt_state, losses = setup.params, setup.opt_state, []
  with jax.set_mesh(setup.mesh):
    from flax import nnx
    with nnx.logical_axis_rules(setup.rules):
      for i in range(steps):
        batch = arrays.global_batch(next(data), setup.mesh, setup.rules)
        params, opt_state, m = fn(params, opt_state, batch, i)
        losses.append(float(m["loss"]))
  return setup, losses, jax.device_get(params)


def test_sharded_step_matches_single_device(synthetic_cache):
  assert jax.device_count() == 8
  _, losses_1, params_1 = _run(_cfg(synthetic_cache, 1, 1, 1), jax.devices()[:1])
  eight, losses_8, params_8 = _run(_cfg(synthetic_cache, 2, 2, 2), jax.devices())
  assert dict(eight.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  # The parameters really are sharded on the 8-device mesh.
  kernel = eight.params["encoder_layers"][0]["mlp"]["wi_0"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  np.testing.assert_allclose(losses_8, losses_1, rtol=0, atol=1e-5)
  for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert losses_1[-1] < losses_1[0]  # and it learns


def test_batch_not_divisible_by_mesh_names_the_key(synthetic_cache):
  cfg = _cfg(synthetic_cache, 8, 1, 1)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=12))
  setup = setup_lib.build(cfg)
  with pytest.raises(ValueError, match="data.batch_size=12"):
    setup_lib.data_iterator(setup)


def test_checkpoint_from_4x2x1_continues_identically_on_2x2x2(synthetic_cache, tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from mtjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  def steps(setup, data, params, opt_state, start, stop):
    fn = step_lib.make_train_step(setup.graphdef, setup.tx, num_tasks=len(setup.spec.tasks))
    losses = []
    with jax.set_mesh(setup.mesh), nnx.logical_axis_rules(setup.rules):
      for i in range(start, stop):
        batch = arrays.global_batch(next(data), setup.mesh, setup.rules)
        params, opt_state, m = fn(params, opt_state, batch, i)
        losses.append(float(m["loss"]))
    return params, opt_state, losses

  a = setup_lib.build(_cfg(synthetic_cache, 4, 2, 1))
  data_a = setup_lib.data_iterator(a)
  params, opt_state, _ = steps(a, data_a, a.params, a.opt_state, 0, 2)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), save_every=1, keep=1)
  ckpt.save(2, params, opt_state, data_a, {"step": 2})
  ckpt.close()
  _, _, want = steps(a, data_a, params, opt_state, 2, 3)

  b = setup_lib.build(_cfg(synthetic_cache, 2, 2, 2))
  data_b = setup_lib.data_iterator(b)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), save_every=1, keep=1)
  step, params_b, opt_b, _ = ckpt.restore_latest(b.params, b.opt_state, data_b)
  ckpt.close()
  assert step == 2
  assert params_b["encoder_layers"][0]["mlp"]["wi_0"].sharding.mesh.shape["tensor"] == 2
  _, _, got = steps(b, data_b, params_b, opt_b, 2, 3)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
