"""`mtjax convert` / `mtjax export`: HF dir -> mtjax model dir -> HF dir that transformers loads
with the same logits; export also reads a training run's checkpoint."""

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mtjax import cli
from mtjax.config import schema
from mtjax.models import hf, registry, store


def test_convert_then_export_round_trips_a_qwen2_checkpoint(tmp_path, capsys):
  config = transformers.Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=24,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=1)
  torch.manual_seed(0)
  original = transformers.AutoModelForCausalLM.from_config(config).eval()
  original.save_pretrained(str(tmp_path / "hf"))
  cli.main(["convert", f"--hf_dir={tmp_path / 'hf'}", f"--out={tmp_path / 'mtjax'}"])
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["family"] == "decoder"
  assert store.load(str(tmp_path / "mtjax")).cfg.qkv_bias
  cli.main(["export", f"--checkpoint={tmp_path / 'mtjax'}", f"--out={tmp_path / 'back'}"])
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back")).eval()
  ids = torch.tensor([[3, 4, 5, 6]])
  with torch.no_grad():
    np.testing.assert_allclose(reloaded(ids).logits.numpy(), original(ids).logits.numpy(),
                               atol=1e-5)


def test_export_reads_a_training_run_checkpoint(tmp_path):
  cfg = schema.RunConfig()
  cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "run"),
                            model=dataclasses.replace(cfg.model, preset="t5_test"))
  os.makedirs(cfg.run_dir)
  with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
    json.dump(schema.to_dict(cfg), f)
  model = registry.create(cfg.model, seed=3)
  params = nnx.state(model).to_pure_dict()
  # The trainer's layout: checkpoints/<step>/params (an Orbax item of the CheckpointManager).
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(cfg.run_dir, "checkpoints", "5", "params"), params)
  checkpointer.wait_until_finished()
  restored = store.load_any(cfg.run_dir)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(nnx.state(restored).to_pure_dict())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  cli.main(["export", f"--checkpoint={cfg.run_dir}", f"--out={tmp_path / 'hf'}"])
  assert hf.load(str(tmp_path / "hf")).cfg == registry.config("t5_test")
