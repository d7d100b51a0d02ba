"""HFT (Hui et al. 2024): the per-layer selection rule on both families' real parameter paths,
its determinism by seed and round, and a `train.trainable=hft` run whose frozen half is
bit-identical afterwards and has no optimizer state in the checkpoint."""

import collections
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx, traverse_util

from mtjax import errors
from mtjax.config import schema
from mtjax.models import registry, store
from mtjax.peft import filters, hft


def _paths(name: str, **overrides) -> list[str]:
  cfg = registry.config(name, **overrides)
  model = nnx.eval_shape(lambda: registry.build(cfg, rngs=nnx.Rngs(0)))
  return ["/".join(map(str, p)) for p in traverse_util.flatten_dict(
      nnx.state(model).to_pure_dict())]


def _groups(paths, frozen):
  """{(stack, layer, module): (frozen members, all members)} over the layers' matrices."""
  out = collections.defaultdict(lambda: (set(), set()))
  for p in paths:
    parts = p.split("/")
    if len(parts) == 4 and parts[0].endswith("layers") and parts[2] in (
        "attention", "self_attention", "cross_attention", "mlp"):
      key = (parts[0], int(parts[1]), parts[2])
      if parts[3].endswith("_bias"):
        continue  # checked with its matrix below
      out[key][1].add(parts[3])
      if p in frozen:
        out[key][0].add(parts[3])
  return out


@pytest.mark.parametrize("name,overrides", [("decoder_test", {"num_layers": 5}),
                                            ("decoder_test", {"qkv_bias": True}),
                                            ("t5_test", {"num_encoder_layers": 3}),
                                            ("t5_test", {"feed_forward": "relu"})])
def test_each_layer_freezes_half_its_matrices_as_the_paper_says(name, overrides):
  paths = _paths(name, **overrides)
  frozen = hft.select(paths, seed=3)
  groups = _groups(paths, frozen)
  assert groups
  ffn_two = collections.Counter()
  for (stack, _, module), (off, members) in groups.items():
    if module != "mlp":  # attention: 2 of {query, key, value, out}, every layer
      assert members >= {"query", "key", "value", "out"} and len(off) == 2, (stack, off)
      assert off <= {"query", "key", "value", "out"}
    elif len(members) == 3:  # gate/up/down or wi_0/wi_1/wo: 2 in half the layers, 1 in others
      assert len(off) in (1, 2)
      ffn_two[stack] += len(off) == 2
    else:  # T5 v1.0 (wi_0, wo): 1 of 2
      assert len(off) == 1
  for stack, n in ffn_two.items():  # floor(L / 2) layers of each stack freeze two
    depth = len({i for (s, i, m) in groups if s == stack and m == "mlp"})
    assert n == depth // 2, (stack, n, depth)
  # A bias goes with its matrix; norms, embeddings, head and relative positions all train.
  for p in paths:
    if p.endswith("_bias"):
      assert (p in frozen) == (p[:-len("_bias")] in frozen)
    if "norm" in p or "embed" in p or "lm_head" in p or "relpos" in p:
      assert p not in frozen


def test_the_draw_is_a_function_of_seed_and_round():
  paths = _paths("decoder_test", num_layers=8)
  a = hft.select(paths, seed=0)
  assert a == hft.select(list(reversed(paths)), seed=0)  # order does not matter
  assert hft.select(paths, seed=1) != a and hft.select(paths, seed=0, round=1) != a
  assert len({hft.select(paths, seed=s) for s in range(6)}) == 6
  # The filter spec: `hft` is round 0 of train.seed, `hft:2` round 2; the trainable set is the rest.
  params = {"x": 0}
  model = registry.build(registry.config("decoder_test", num_layers=8), rngs=nnx.Rngs(0))
  params = nnx.state(model).to_pure_dict()
  for spec, seed, rnd in (("hft", 5, 0), (["hft:2"], 5, 2)):
    chosen = {filters.path_str(p) for p in filters.trainable_paths(params, spec, seed=seed)}
    assert chosen == set(paths) - hft.select(paths, seed=seed, round=rnd)
  # The regexes reproduce the draw through the plain regex filter (a hand-written schedule).
  regexes = hft.regexes(paths, seed=4)
  chosen = {filters.path_str(p) for p in filters.trainable_paths(params, regexes)}
  assert chosen == set(paths) - hft.select(paths, seed=4)
  record = filters.describe(params, "hft", seed=4)
  assert set(record["frozen"]) == hft.select(paths, seed=4) and record["seed"] == 4
  assert record["num_frozen"] + record["num_trainable"] == sum(
      v.size for v in jax.tree.leaves(params))


def test_scanned_layers_and_lora_are_refused():
  with pytest.raises(errors.ConfigError, match="scan_layers"):
    hft.select(_paths("decoder_test", scan_layers=True))
  with pytest.raises(errors.ConfigError, match="lora"):
    hft.select(_paths("decoder_test", lora_rank=2))


def test_an_hft_run_leaves_the_frozen_half_bit_identical_with_no_optimizer_state(
    tmp_path, synthetic_cache):
  """A few AdamW steps of decoder_test from a known start (train.init_from a saved model).
  The loop draws with train.seed (0 here, also the default when a loop passes no seed)."""
  start = registry.build(registry.config("decoder_test"), rngs=nnx.Rngs(7))
  store.save(start, str(tmp_path / "start"))
  before = {filters.path_str(p): np.asarray(v) for p, v in
            traverse_util.flatten_dict(nnx.state(start).to_pure_dict()).items()}
  cfg = schema.RunConfig(
      run_dir=str(tmp_path / "run"),
      data=schema.DataConfig(mixture="synthetic_compare", cache_dir=synthetic_cache,
                             inputs_length=32, targets_length=8, batch_size=8,
                             feature_converter="decoder_only"),
      model=schema.ModelConfig(preset="decoder_test"),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2),
      train=schema.TrainConfig(steps=3, log_every=3, checkpoint_every=3, seed=0,
                               trainable=("hft",), init_from=str(tmp_path / "start")),
      eval=schema.EvalConfig(at_end=False), mesh=schema.MeshConfig(data=8))
  from mtjax.train import loop

  loop.train(cfg, progress=False)
  frozen = hft.select(before, seed=0)
  assert 0 < len(frozen) < len(before)
  step_dir = os.path.join(cfg.run_dir, "checkpoints", "3")
  after = {filters.path_str(p): np.asarray(v) for p, v in traverse_util.flatten_dict(
      nnx.state(store.load_any(step_dir)).to_pure_dict()).items()}
  for path, value in before.items():
    if path in frozen:
      np.testing.assert_array_equal(after[path], value, err_msg=path)
    else:
      assert not np.array_equal(after[path], value), path  # the other half trained
  opt = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "opt_state"))
  opt = getattr(getattr(opt, "item_metadata", opt), "tree", opt)
  in_state = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(
      opt, is_leaf=lambda x: hasattr(x, "shape"))[0]:
    keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    # AdamW's `mu` / `nu` trees hold the parameters' paths below their own key.
    in_state |= {"/".join(keys[i:]) for i in range(len(keys))} & set(before)
  assert in_state == set(before) - frozen  # moments of the trainable half only
  record = os.path.join(cfg.run_dir, "trainable.json")
  if os.path.exists(record):  # written by the loop (mtjax.train): the same draw
    assert set(json.load(open(record))["frozen"]) == frozen
