"""Checkpoints: another mesh, keep-best, corrupted newest, config mismatch, init from pretrained."""

import logging
import os

import grain
import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib
from mtjax.train import checkpoint as ckpt_lib

AXES = {"embed": ("embed", "mlp"), "head": ("vocab", "embed")}


def _params(mesh, seed=0):
  rng = np.random.default_rng(seed)
  raw = {"layer": {"embed": rng.normal(size=(16, 8)).astype(np.float32)},
         "head": rng.normal(size=(8, 16)).astype(np.float32)}
  shard = lambda names, x: jax.device_put(
      x, NamedSharding(mesh, rules_lib.logical_to_spec(names, rules_lib.DEFAULT_RULES)))
  return {"layer": {"embed": shard(AXES["embed"], raw["layer"]["embed"])},
          "head": shard(AXES["head"], raw["head"])}


def _iter():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _ckpt(path, **kw):
  return ckpt_lib.Checkpointer(str(path), save_every=1, keep=kw.pop("keep", 2), **kw)


def test_restore_onto_another_mesh(tmp_path):
  tx = optax.adamw(1e-2)
  mesh_a = mesh_lib.make_mesh(data=8, fsdp=1, tensor=1)
  params_a = _params(mesh_a)
  grads = jax.tree.map(lambda x: x * 0.5, params_a)
  opt_a = tx.init(params_a)
  _, opt_a = tx.update(grads, opt_a, params_a)
  ckpt = _ckpt(tmp_path)
  ckpt.save(1, params_a, opt_a, _iter(), {"step": 1})
  ckpt.close()

  mesh_b = mesh_lib.make_mesh(data=1, fsdp=4, tensor=2)
  params_b = _params(mesh_b, seed=1)
  opt_b = tx.init(params_b)
  ckpt = _ckpt(tmp_path)
  params, opt, meta = ckpt.restore(1, params_b, opt_b, _iter())
  ckpt.close()
  assert meta["step"] == 1
  assert params["layer"]["embed"].sharding.spec == params_b["layer"]["embed"].sharding.spec
  assert params["layer"]["embed"].sharding.mesh.shape == {"data": 1, "fsdp": 4, "tensor": 2}
  assert len(params["layer"]["embed"].sharding.device_set) == 8
  for a, b in zip(jax.tree.leaves((params_a, opt_a)), jax.tree.leaves((params, opt))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keep_latest_plus_best(tmp_path):
  mesh = mesh_lib.make_mesh()
  params = _params(mesh)
  ckpt = _ckpt(tmp_path, keep=2, best_metric="eval/loss", best_mode="min")
  for step, loss in zip(range(1, 7), [5.0, 1.0, 4.0, 3.0, 6.0, 7.0]):
    ckpt.save(step, params, {}, _iter(), {"step": step}, metrics={"eval/loss": loss})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 5, 6]  # newest two + the best (lowest eval/loss)
  ckpt.close()


def test_corrupted_newest_falls_back_with_a_warning(tmp_path, caplog):
  mesh = mesh_lib.make_mesh()
  ckpt = _ckpt(tmp_path)
  for step in (1, 2):
    ckpt.save(step, _params(mesh, seed=step), {}, _iter(), {"step": step})
  ckpt.close()
  # Truncate every data file of step 2's parameters.
  for root, _, files in os.walk(tmp_path / "2" / "params"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 16:
        with open(path, "r+b") as f:
          f.truncate(8)
  ckpt = _ckpt(tmp_path)
  with caplog.at_level(logging.WARNING):
    step, params, _, meta = ckpt.restore_latest(_params(mesh, seed=9), {}, _iter())
  ckpt.close()
  assert step == 1 and meta["step"] == 1
  np.testing.assert_array_equal(params["head"], _params(mesh, seed=1)["head"])
  assert "cannot be restored" in caplog.text and "/2 " in caplog.text


def test_config_mismatch_names_the_key():
  saved = {"model": {"preset": "t5_test", "dtype": "float32"}, "data": {"mixture": "a"},
           "train": {"steps": 10, "trainable": ["all"]}}
  now = {"model": {"preset": "t5_small", "dtype": "float32"}, "data": {"mixture": "a"},
         "train": {"steps": 20, "trainable": ("all",)}}
  with pytest.raises(ValueError, match=r"model\.preset: checkpoint 't5_test', config 't5_small'"):
    ckpt_lib.check_resumable(saved, now)
  now["model"]["preset"] = "t5_test"
  ckpt_lib.check_resumable(saved, now)  # train.steps may change


def test_init_from_restores_known_params_and_keeps_fresh_ones(tmp_path):
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  pretrained = _params(mesh, seed=1)
  ckpt = _ckpt(tmp_path / "pre" / "checkpoints")
  ckpt.save(3, pretrained, {}, _iter(), {"step": 3})
  ckpt.close()
  fresh = _params(mesh, seed=2)
  fresh["prompt"] = {"embedding": jax.numpy.ones((4, 8))}  # not in the checkpoint
  params, restored, new = ckpt_lib.init_params(str(tmp_path / "pre"), fresh)
  assert new == ["prompt/embedding"] and len(restored) == 2
  np.testing.assert_array_equal(params["head"], pretrained["head"])
  assert params["head"].sharding == fresh["head"].sharding
  np.testing.assert_array_equal(params["prompt"]["embedding"], 1.0)


def test_init_from_an_hf_directory(tmp_path):
  """The HF hook of `train.init_from`: weights by path, fresh init for what HF lacks."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from mtjax.config import schema  # pylint: disable=g-import-not-at-top
  from mtjax.models import hf, registry  # pylint: disable=g-import-not-at-top
  from mtjax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from mtjax.train import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top

  cfg = schema.RunConfig(model=schema.ModelConfig(preset="t5_test"))
  pretrained = registry.create(cfg.model, seed=1)
  hf.export(pretrained, str(tmp_path / "hf"))
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  rules = rules_lib.DEFAULT_RULES
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    graphdef, state = nnx.split(registry.create(cfg.model, seed=2, mesh=mesh, rules=rules))
  fresh = state.to_pure_dict()
  fresh["prompt"] = {"embedding": jax.numpy.ones((4, 8))}  # a soft prompt HF does not have
  setup = setup_lib.Setup(cfg, mesh, rules, None, graphdef, fresh, None, None)
  params = pretrained_lib.init_from(setup, fresh, str(tmp_path / "hf"))
  want = nnx.split(pretrained)[1].to_pure_dict()
  np.testing.assert_allclose(params["lm_head"], want["lm_head"], rtol=1e-6)
  np.testing.assert_allclose(params["encoder_layers"][0]["mlp"]["wo"],
                             want["encoder_layers"][0]["mlp"]["wo"], rtol=1e-6)
  assert params["lm_head"].sharding == fresh["lm_head"].sharding
  np.testing.assert_array_equal(params["prompt"]["embedding"], 1.0)
