"""T5 model: position buckets against hand-computed values, packing and padding invariance."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtjax.models import t5
from mtjax.parallel.rules import axis_names


def test_relative_position_buckets_match_hand_computed_values():
  rel = jnp.array([-200, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 200])
  bidir = t5.relative_position_bucket(rel, True, num_buckets=32, max_distance=128)
  # bidirectional: 16 buckets per direction, 8 exact; key after query (rel > 0) -> +16.
  # n = -rel; for n >= 8: 8 + floor(log(n/8)/log(128/8) * 8), capped at 15.
  def large(n):
    return min(8 + int(np.log(n / 8) / np.log(16) * 8), 15)
  want_bidir = [large(200), large(20), large(9), 8, 7, 1, 0, 16 + 1, 16 + 7, 16 + large(8),
                16 + large(9), 16 + large(20), 16 + 15]
  np.testing.assert_array_equal(bidir, want_bidir)
  uni = t5.relative_position_bucket(rel, False, num_buckets=32, max_distance=128)
  # causal: only keys before the query get distinct buckets (32 buckets, 16 exact).
  def large_uni(n):
    return min(16 + int(np.log(n / 16) / np.log(8) * 16), 31)
  want_uni = [large_uni(200), large_uni(20), 9, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0]
  np.testing.assert_array_equal(uni, want_uni)


def _model():
  return t5.T5(t5.preset("t5_test"), rngs=nnx.Rngs(0))


def _jitted(model):
  """The model's forward under jit (eager op-by-op dispatch is slow on 8 fake devices)."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, batch: nnx.merge(graphdef, s)(batch))
  return lambda batch: forward(state, batch)


def test_packed_row_gives_the_same_logits_as_separate_examples():
  model = _jitted(_model())
  a_in, a_tg = [11, 12, 13, 1], [21, 22, 1]
  b_in, b_tg = [31, 32, 1], [41, 1]
  pad = lambda x, n: np.array(x + [0] * (n - len(x)), np.int32)[None]
  separate = []
  for inp, tgt in ((a_in, a_tg), (b_in, b_tg)):
    batch = {"encoder_input_tokens": pad(inp, 10),
             "decoder_input_tokens": pad([0] + tgt[:-1], 6)}
    separate.append(np.asarray(model(batch))[0, :len(tgt)])
  packed = {
      "encoder_input_tokens": pad(a_in + b_in, 10),
      "encoder_segment_ids": pad([1] * 4 + [2] * 3, 10),
      "decoder_input_tokens": pad([0] + a_tg[:-1] + [0] + b_tg[:-1], 6),
      "decoder_segment_ids": pad([1] * 3 + [2] * 2, 6),
  }
  logits = np.asarray(model(packed))[0]
  np.testing.assert_allclose(logits[:3], separate[0], atol=1e-5)
  np.testing.assert_allclose(logits[3:5], separate[1], atol=1e-5)


def test_padding_does_not_change_logits():
  model = _jitted(_model())
  short = {"encoder_input_tokens": np.array([[5, 6, 7, 1]]),
           "decoder_input_tokens": np.array([[0, 9, 8]])}
  long = {"encoder_input_tokens": np.array([[5, 6, 7, 1, 0, 0, 0]]),
          "decoder_input_tokens": np.array([[0, 9, 8, 0, 0]])}
  np.testing.assert_allclose(np.asarray(model(long))[0, :3], np.asarray(model(short))[0],
                             atol=1e-5)


def test_every_parameter_has_logical_axis_names():
  state = nnx.state(_model(), nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert leaves
  for path, var in leaves:
    names = axis_names(var)
    assert names is not None and len(names) == var.get_value().ndim, jax.tree_util.keystr(path)


def test_mesh_forward_equals_single_device_forward():
  from mtjax.parallel import mesh as mesh_lib
  from mtjax.parallel import rules as rules_lib

  model = _model()
  batch = {"encoder_input_tokens": np.arange(1, 41, dtype=np.int32).reshape(4, 10) % 300,
           "decoder_input_tokens": np.arange(0, 24, dtype=np.int32).reshape(4, 6)}
  single = np.asarray(_jitted(model)(batch))
  mesh = mesh_lib.make_mesh(2, 2, 2)  # data x fsdp x tensor
  graphdef, state = nnx.split(model)

  def place(var):  # each parameter onto the sharding its logical axis names give
    spec = rules_lib.logical_to_spec(axis_names(var), rules_lib.DEFAULT_RULES)
    return jax.device_put(var.get_value(), jax.sharding.NamedSharding(mesh, spec))

  sharded_model = nnx.merge(graphdef, jax.tree.map(
      place, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  assert len(sharded_model.decoder_layers[0].mlp.wo[...].sharding.device_set) == 8
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules_lib.DEFAULT_RULES):
    sharded = np.asarray(_jitted(sharded_model)(batch))
  np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_remat_gives_the_same_gradients():
  batch = {"encoder_input_tokens": np.array([[5, 6, 7, 1, 0]]),
           "decoder_input_tokens": np.array([[0, 9, 8]])}

  def grads(remat):
    m = t5.T5(t5.preset("t5_test", remat=remat), rngs=nnx.Rngs(0))
    loss = lambda m: jnp.sum(m(batch) ** 2)
    return jax.tree.leaves(nnx.state(nnx.jit(nnx.grad(loss))(m)))

  for a, b in zip(grads("none"), grads("full")):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
