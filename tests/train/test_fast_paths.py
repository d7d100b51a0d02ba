"""Speed paths that must not change the maths: chunked logits + loss, and the mask-free causal
attention path of unpacked decoder batches (cuDNN's flash kernel on GPU, XLA here)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtjax.models import layers, registry
from mtjax.train import loss as loss_lib
from mtjax.train import step as step_lib


def _decoder(**overrides):
  return registry.build(registry.config("decoder_test", **overrides), rngs=nnx.Rngs(params=0))


def _batch(b=4, t=12, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, 384, (b, t + 1)).astype(np.int32)
  weights = np.ones((b, t), np.float32)
  weights[1, 7:] = 0.0  # a right-padded row
  task_ids = np.tile(np.arange(b, dtype=np.int32)[:, None] % 2, (1, t))
  return {"decoder_input_tokens": jnp.asarray(tokens[:, :-1]),
          "decoder_target_tokens": jnp.asarray(tokens[:, 1:]),
          "decoder_loss_weights": jnp.asarray(weights), "task_ids": jnp.asarray(task_ids)}


@pytest.mark.parametrize("chunk", [4, 5])  # 5 does not divide 12: the padded last chunk
def test_chunked_logits_give_the_same_step(chunk):
  """One SGD step with chunked logits == the same step with all logits at once (loss,
  metrics, updated parameters), with label smoothing, z-loss and focal weighting on."""
  model = _decoder()
  graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  tx = optax.sgd(1.0)  # the update is the gradient itself
  outs = []
  for logits_chunk in (0, chunk):
    opts = step_lib.LossOptions(label_smoothing=0.1, z_loss=1e-3, focal_gamma=1.0,
                                logits_chunk=logits_chunk)
    step = step_lib.make_train_step(graphdef, tx, num_tasks=2, loss_options=opts, donate=False)
    outs.append(step(params, tx.init(params), _batch(), 0))
  (p0, _, m0), (p1, _, m1) = outs
  for key in m0:
    np.testing.assert_allclose(m1[key], m0[key], rtol=1e-5, atol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), p0, p1)


def test_chunked_token_stats_equal_the_full_ones():
  rng = np.random.default_rng(1)
  hidden = jnp.asarray(rng.normal(size=(2, 7, 8)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(8, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (2, 7)), jnp.int32)
  full = loss_lib.token_stats(hidden @ head, targets, 0.1, 1e-3)
  chunked = loss_lib.chunked_token_stats(hidden, lambda h: h @ head, targets, 3, 0.1, 1e-3)
  for a, b in zip(full, chunked):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_unpacked_batches_take_the_mask_free_causal_path():
  """No segment ids (causal flag, no mask) == all-ones segment ids (dense mask); right padding
  changes no real token's logits, so unpacked batches may drop their segment ids."""
  model = _decoder()
  batch = _batch()
  free = model(batch)
  seg = jnp.ones(batch["decoder_input_tokens"].shape, jnp.int32)
  dense = model(dict(batch, decoder_segment_ids=seg))
  np.testing.assert_allclose(free, dense, rtol=1e-5, atol=1e-5)
  padded = dict(batch, decoder_segment_ids=seg.at[1, 7:].set(0))
  np.testing.assert_allclose(free[1, :7], model(padded)[1, :7], rtol=1e-5, atol=1e-5)


def test_attention_implementation_choice():
  q = jnp.zeros((1, 4, 2, 8), jnp.bfloat16)
  on_gpu = jax.default_backend() == "gpu"
  assert layers.attention_implementation(q) == ("cudnn" if on_gpu else "xla")
  assert layers.attention_implementation(q, mask=jnp.ones((1, 1, 4, 4), bool)) == "xla"
  assert layers.attention_implementation(q.astype(jnp.float32)) == "xla"
  assert layers.attention_implementation(q, requested="xla") == "xla"
  with pytest.raises(ValueError, match="model.attention"):
    layers.attention_implementation(q, requested="flash")
  with pytest.raises(ValueError, match="model.attention"):
    registry.config("decoder_test", attention="flash")
