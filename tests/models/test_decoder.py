"""Decoder-only family: packing, prefix-LM masks, mesh vs single device, remat and scan,
presets, the soft-prompt hook, and the unchanged train step on prefix-LM features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtjax.models import decoder, hf, registry, t5
from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib
from mtjax.parallel.rules import axis_names


@pytest.fixture(scope="module")
def model():
  return decoder.Decoder(decoder.preset("decoder_test"), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
  """`model` as a HF checkpoint: reloading it (any layout) is cheaper than a fresh init."""
  path = str(tmp_path_factory.mktemp("decoder_test"))
  hf.export(model, path)
  return path


@nnx.jit
def forward(model, batch):
  return model(batch)


def _pad(x, n):
  return np.array(x + [0] * (n - len(x)), np.int32)


def test_packed_row_gives_the_same_logits_as_separate_examples(model):
  a, b = [0, 11, 12, 13, 14], [0, 31, 32]
  separate = [np.asarray(forward(model, {"decoder_input_tokens": _pad(x, 10)[None]}))[0, :len(x)]
              for x in (a, b)]
  packed = {"decoder_input_tokens": _pad(a + b, 10)[None],
            "decoder_segment_ids": _pad([1] * 5 + [2] * 3, 10)[None],
            "decoder_positions": _pad(list(range(5)) + list(range(3)), 10)[None]}
  logits = np.asarray(forward(model, packed))[0]
  np.testing.assert_allclose(logits[:5], separate[0], atol=1e-5)
  np.testing.assert_allclose(logits[5:8], separate[1], atol=1e-5)


def test_prefix_lm_mask_is_bidirectional_over_the_inputs_only():
  # T5X's decoder mask with decoder_causal_attention, written out for inputs of length 3.
  ca = jnp.array([[1, 1, 1, 0, 0]])
  mask = np.asarray(decoder.make_mask(5, None, ca))[0, 0]
  want = np.tril(np.ones((5, 5), bool))
  want[:3, :3] = True
  np.testing.assert_array_equal(mask, want)


def test_prefix_lm_inputs_see_later_inputs_but_targets_do_not_change_them(model):
  tokens = np.array([[0, 5, 6, 7, 8, 9]], np.int32)
  ca = np.array([[1, 1, 1, 1, 0, 0]], np.int32)
  base = np.asarray(forward(model, {"decoder_input_tokens": tokens,
                                    "decoder_causal_attention": ca}))
  changed_input = tokens.copy()
  changed_input[0, 3] = 50  # an input token: every input position may see it
  out = np.asarray(forward(model, {"decoder_input_tokens": changed_input,
                                   "decoder_causal_attention": ca}))
  assert np.abs(out[0, 1] - base[0, 1]).max() > 1e-4
  changed_target = tokens.copy()
  changed_target[0, 5] = 50  # the last target: nothing before it may change
  out = np.asarray(forward(model, {"decoder_input_tokens": changed_target,
                                   "decoder_causal_attention": ca}))
  np.testing.assert_allclose(out[0, :5], base[0, :5], atol=1e-6)


def test_mesh_forward_equals_single_device_forward(model):
  batch = {"decoder_input_tokens": np.arange(1, 33, dtype=np.int32).reshape(4, 8) % 300}
  single = np.asarray(forward(model, batch))
  mesh = mesh_lib.make_mesh(2, 2, 2)  # data x fsdp x tensor
  graphdef, state = nnx.split(model)

  def place(var):  # each parameter onto the sharding its logical axis names give
    spec = rules_lib.logical_to_spec(axis_names(var), rules_lib.DEFAULT_RULES)
    return jax.device_put(var.get_value(), jax.sharding.NamedSharding(mesh, spec))

  sharded_model = nnx.merge(graphdef, jax.tree.map(
      place, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  assert len(sharded_model.layers[0].mlp.up[...].sharding.device_set) == 8
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules_lib.DEFAULT_RULES):
    sharded = np.asarray(forward(sharded_model, batch))
  np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_remat_policies_and_scanned_layers_give_the_same_gradients(exported):
  batch = {"decoder_input_tokens": np.array([[0, 5, 6, 7]], np.int32)}

  def grads(remat, scan=False):
    m = hf.load(exported, remat=remat, scan_layers=scan)  # same weights, either layout
    loss = lambda m: jnp.sum(m(batch) ** 2)
    return nnx.state(nnx.jit(nnx.grad(loss))(m)).to_pure_dict()

  want = grads("dots_saveable")  # per-layer nnx.remat
  scanned = grads("full", scan=True)  # jax.checkpoint inside the scan body  # stacked layers: compare layer i's slice with layer i
  for i in range(2):
    layer = jax.tree.map(lambda x, i=i: x[i], scanned["layers"])
    for a, b in zip(jax.tree.leaves(want["layers"][i]), jax.tree.leaves(layer)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  for key in ("token_embed", "final_norm", "lm_head"):
    for a, b in zip(jax.tree.leaves(want[key]), jax.tree.leaves(scanned[key])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_every_parameter_has_logical_axis_names():
  cfg = decoder.preset("decoder_test", qkv_bias=True)
  state = nnx.state(decoder.Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for path, var in leaves:
    names = axis_names(var)
    assert names is not None and len(names) == var.get_value().ndim, jax.tree_util.keystr(path)


def test_presets_by_name():
  assert registry.config("flan_t5_base") == t5.preset("t5_1_1_base")
  assert registry.config("mt5_small").vocab_size == 250112
  v1 = registry.config("t5_small")
  assert v1.feed_forward == "relu" and v1.tie_word_embeddings
  llama = registry.config("llama_270m")
  assert (llama.num_layers, llama.d_model, llama.d_ff, llama.num_heads, llama.vocab_size) == (
      16, 1024, 2816, 16, 32000)
  assert registry.family(registry.config("t5_quickstart")) is t5
  assert registry.family(llama) is decoder
  with pytest.raises(ValueError, match="flan_t5_base"):
    registry.config("flan_t5_bse")


def test_llama_270m_has_about_270m_parameters():
  m = nnx.eval_shape(lambda: registry.build(registry.config("llama_270m"), rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert 250e6 < n < 290e6, n


class _PrefixPrompt(nnx.Module):
  """A minimal prefix soft prompt, to exercise the hook (the real one lives in mtjax.peft)."""

  def __init__(self, length, d, rngs):
    self.prompt = nnx.Param(jax.random.normal(rngs.params(), (length, d)))

  def __call__(self, x, segment_ids, positions):
    b, p = x.shape[0], self.prompt.shape[0]
    x = jnp.concatenate([jnp.broadcast_to(self.prompt[...], (b, p, x.shape[-1])), x], 1)
    if segment_ids is not None:
      segment_ids = jnp.concatenate([jnp.broadcast_to(segment_ids[:, :1], (b, p)), segment_ids],
                                    1)
    if positions is not None:
      positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (b, p)), positions + p], 1)
    return x, segment_ids, positions


def test_embed_hook_prefix_changes_logits_and_keeps_their_length(exported):
  m = hf.load(exported)
  batch = {"decoder_input_tokens": np.array([[0, 5, 6, 7]], np.int32)}
  base = np.asarray(forward(m, batch))
  m.embed_hook = _PrefixPrompt(3, 32, nnx.Rngs(1))
  out = np.asarray(forward(m, batch))
  assert out.shape == base.shape and np.abs(out - base).max() > 1e-3
  assert "embed_hook" in nnx.state(m, nnx.Param)  # the prompt's parameters are in the state


def test_train_step_trains_a_prefix_lm_decoder_unchanged(model):
  import optax

  from mtjax.train import step as step_lib
  graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  tx = optax.adam(3e-2)
  step_fn = step_lib.make_train_step(graphdef, tx, num_tasks=1, donate=False)
  # SeqIO prefix-LM features: inputs [5, 6, 7], targets [8, 9, 1].
  batch = {"decoder_input_tokens": np.array([[0, 5, 6, 7, 8, 9]], np.int32),
           "decoder_target_tokens": np.array([[5, 6, 7, 8, 9, 1]], np.int32),
           "decoder_loss_weights": np.array([[0, 0, 0, 1, 1, 1]], np.int32),
           "decoder_causal_attention": np.array([[1, 1, 1, 1, 0, 0]], np.int32)}
  opt_state, losses = tx.init(params), []
  for i in range(4):
    params, opt_state, metrics = step_fn(params, opt_state, batch, i)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.5, losses


def test_bfloat16_compute_keeps_float32_params_and_close_logits(model, exported):
  m = hf.load(exported, dtype="bfloat16")
  assert m.layers[0].mlp.up[...].dtype == jnp.float32  # params stay float32
  batch = {"decoder_input_tokens": np.array([[0, 5, 6, 7, 8]], np.int32)}
  low, full = np.asarray(forward(m, batch)), np.asarray(forward(model, batch))
  assert low.dtype == np.float32  # logits always float32
  assert np.abs(low - full).max() < 0.05 * np.abs(full).max()


def test_model_config_preset_builds_either_family_by_name():
  from mtjax.config import schema
  flan = nnx.eval_shape(lambda: registry.create(schema.ModelConfig(preset="flan_t5_base"), seed=0))
  assert isinstance(flan, t5.T5) and flan.cfg.d_model == 768 and not flan.cfg.tie_word_embeddings
  llama = nnx.eval_shape(lambda: registry.create(
      schema.ModelConfig(preset="llama_270m", dtype="bfloat16", remat="full"), seed=0))
  assert isinstance(llama, decoder.Decoder) and llama.cfg.remat == "full"
  assert llama.cfg.dtype == "bfloat16"
