"""`mtjax.train.pretrained.load_params`: a run's or an HF dir's parameters on a mesh, as saved."""

import json
import os

import grain
import jax
import numpy as np
import pytest
from flax import nnx

from mtjax import errors
from mtjax.config import schema
from mtjax.models import hf, registry
from mtjax.parallel import mesh as mesh_lib
from mtjax.train import checkpoint as ckpt_lib
from mtjax.train import pretrained


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_load_params_of_a_run_step_and_an_hf_dir(tmp_path):
  cfg = schema.RunConfig(run_dir=str(tmp_path / "run"),
                         model=schema.ModelConfig(preset="t5_test"),
                         mesh=schema.MeshConfig(data=2, fsdp=2, tensor=2))
  model = registry.create(cfg.model, seed=3)
  want = _flat(nnx.split(model)[1].to_pure_dict())
  # A run: config.json + one checkpoint of those parameters (what mtjax train leaves).
  os.makedirs(cfg.run_dir)
  with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
    json.dump(schema.to_dict(cfg), f)
  saver = ckpt_lib.Checkpointer(os.path.join(cfg.run_dir, "checkpoints"), save_every=1, keep=1)
  saver.save(5, nnx.split(model)[1].to_pure_dict(), {},
             iter(grain.MapDataset.range(4).to_iter_dataset()), {"step": 5})
  saver.close()

  loaded = pretrained.load_params(cfg.run_dir)  # the run's model config and mesh shape
  assert dict(loaded.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  got = _flat(loaded.params)
  assert got.keys() == want.keys()
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  emb = loaded.params["token_embed"]["embedding"]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")  # vocab, embed

  step = pretrained.load_params(os.path.join(cfg.run_dir, "checkpoints", "5"),
                                mesh=mesh_lib.make_mesh(data=8, fsdp=1, tensor=1))
  np.testing.assert_array_equal(_flat(step.params)["['lm_head']"], want["['lm_head']"])

  hf.export(model, str(tmp_path / "hf"))
  from_hf = _flat(pretrained.load_params(str(tmp_path / "hf")).params)
  np.testing.assert_allclose(from_hf["['lm_head']"], want["['lm_head']"], rtol=1e-6)

  bigger = schema.ModelConfig(preset="t5_test", lora_rank=2, lora_targets=("query",))
  with pytest.raises(errors.MissingError, match="lacks"):  # adapters the run never had
    pretrained.load_params(cfg.run_dir, model_config=bigger)
