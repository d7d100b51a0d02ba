"""The Pallas flash attention kernel (interpret mode on CPU) against XLA's reference, and the
models with `attention=pallas` against `attention=xla`.

The reference is `jax.nn.dot_product_attention` with the equivalent dense mask and bias, with
rows that see no key set to zero: the kernel's defined output there (XLA gives the mean of all
values, which no loss ever uses).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtjax.models import decoder, layers, t5
from mtjax.models.flash_attention import BlockSizes, flash_attention

BLOCKS = BlockSizes(block_q=32, block_k=16, block_q_bwd=16, block_k_bwd=32)


def _packing(rng, b, length, pad_row=None):
  """Random packings: segments of random lengths, trailing padding, optionally a row of
  pure padding."""
  rows = []
  for i in range(b):
    row, seg = [], 1
    fill = rng.randint(length // 2, length + 1)
    while len(row) < fill:
      row += [seg] * rng.randint(1, length // 3)
      seg += 1
    row = (row[:fill] + [0] * length)[:length]
    rows.append([0] * length if i == pad_row else row)
  return np.array(rows, np.int32)


def _reference(q, k, v, bias, q_seg, kv_seg, causal, prefix, scale):
  b, t, _, _ = q.shape
  s = k.shape[1]
  mask = jnp.ones((b, 1, t, s), bool)
  if q_seg is not None:
    mask &= ((q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0))[:, None]
  elif kv_seg is not None:
    mask &= (kv_seg != 0)[:, None, None, :]
  if causal:
    vis = jnp.tril(jnp.ones((t, s), bool))[None, None]
    if prefix is not None:
      pre = prefix.astype(bool)
      vis = vis | (pre[:, None, :, None] & pre[:, None, None, :])
    mask &= vis
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale,
                                     implementation="xla")
  seen = jnp.any(mask, axis=-1)[:, 0]  # [B, T]
  return jnp.where(seen[:, :, None, None], out, 0.0), seen


CASES = {
    # name: (T, S, N, K, H, segments, causal, prefix, bias shape ("" / "1" / "B" / "3d"))
    "packed_causal_bias_gqa": (64, 64, 4, 2, 8, "both", True, False, "1"),  # T5 decoder self
    "packed_encoder_batched_bias": (64, 64, 2, 1, 16, "both", False, False, "B"),  # T5 encoder
    "prefix_lm_packed_gqa": (64, 64, 4, 2, 8, "both", True, True, ""),  # decoder prefix-LM
    "prefix_lm_bias_unaligned": (40, 40, 2, 2, 12, "", True, True, "3d"),
    "cross_packed": (48, 64, 2, 2, 8, "both", False, False, ""),  # T5 cross-attention
    "cross_key_padding_bias": (32, 64, 2, 2, 8, "kv", False, False, "1"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_forward_and_gradients_equal_xla(name):
  t, s, n, kh, h, segments, causal, use_prefix, bias_kind = CASES[name]
  rng = np.random.RandomState(sorted(CASES).index(name))
  b = 2
  q = jnp.asarray(rng.randn(b, t, n, h), jnp.float32)
  k = jnp.asarray(rng.randn(b, s, kh, h), jnp.float32)
  v = jnp.asarray(rng.randn(b, s, kh, h), jnp.float32)
  q_seg = kv_seg = prefix = bias = None
  if segments:
    # Self-attention shares one packing; cross-attention pairs a decoder and an encoder packing
    # with the same segment numbers. Row 1 is pure padding (on the query side for cross).
    kv_seg = _packing(rng, b, s, pad_row=None if t != s else 1)
    if segments == "both":
      q_seg = kv_seg if t == s else np.minimum(_packing(rng, b, t, pad_row=1), kv_seg.max())
      q_seg = jnp.asarray(q_seg)
    kv_seg = jnp.asarray(kv_seg)
  if use_prefix:
    base = np.asarray(q_seg) if q_seg is not None else np.ones((b, t), np.int32)
    # The first few positions of every segment are its inputs.
    starts = np.concatenate([np.ones((b, 1), bool), base[:, 1:] != base[:, :-1]], axis=1)
    pos = np.zeros((b, t), np.int32)
    for i in range(b):
      for j in range(t):
        pos[i, j] = 0 if starts[i, j] else pos[i, j - 1] + 1
    prefix = jnp.asarray((pos < rng.randint(1, 8, (b, 1))) & (base > 0), jnp.int32)
  if bias_kind:
    shape = {"1": (1, n, t, s), "B": (b, n, t, s), "3d": (n, t, s)}[bias_kind]
    bias = jnp.asarray(rng.randn(*shape), jnp.float32)
  scale = h ** -0.5
  cotangent = jnp.asarray(rng.randn(b, t, n, h), jnp.float32)

  def kernel(q, k, v, bias):
    return flash_attention(q, k, v, bias=bias, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                           causal=causal, prefix=prefix, scale=scale, block_sizes=BLOCKS)

  def reference(q, k, v, bias):
    return _reference(q, k, v, bias, q_seg, kv_seg, causal, prefix, scale)[0]

  def forward_and_grads(f):
    @jax.jit
    def run(q, k, v, bias):
      out, pull = jax.vjp(f, q, k, v, bias)
      return out, pull(cotangent)
    return run(q, k, v, bias)

  out, grads = forward_and_grads(kernel)
  want, grads_want = forward_and_grads(reference)
  np.testing.assert_allclose(out, want, atol=2e-6, rtol=1e-5)
  names = ("dq", "dk", "dv", "dbias")
  for name_, got, exp in zip(names, grads, grads_want):
    if exp is None:
      assert got is None
      continue
    assert got.shape == exp.shape, name_
    np.testing.assert_allclose(got, exp, atol=1e-5, rtol=1e-5, err_msg=name_)

  if q_seg is not None:
    seen = np.asarray(_reference(q, k, v, bias, q_seg, kv_seg, causal, prefix, scale)[1])
    assert not seen.all()  # the case has rows of padding: they are zeros, with zero dq
    np.testing.assert_array_equal(np.asarray(out)[~seen], 0.0)
    np.testing.assert_array_equal(np.asarray(grads[0])[~seen], 0.0)


def test_mask_dense_is_the_decoders_make_mask():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  ca = jnp.asarray([[1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
  for s, c in ((seg, ca), (seg, None), (None, ca)):
    got = layers.Mask(q_segment_ids=s, kv_segment_ids=s, prefix=c, causal=True).dense(6, 6)
    np.testing.assert_array_equal(got, decoder.make_mask(6, s, c))
  assert layers.Mask(causal=True).dense(6, 6) is None


def test_auto_picks_xla_on_cpu_and_the_kernels_on_gpu(monkeypatch):
  q16, q32 = jnp.zeros((1, 8, 2, 64), jnp.bfloat16), jnp.zeros((1, 8, 2, 64), jnp.float32)
  packed = layers.Mask(q_segment_ids=jnp.ones((1, 8)), kv_segment_ids=jnp.ones((1, 8)),
                       causal=True)
  plain = layers.Mask(causal=True)
  pick = layers.attention_implementation
  assert pick(q16, mask=packed) == "xla"  # the test machine: CPU
  assert pick(q16, mask=packed, requested="pallas") == "pallas"
  assert pick(q16, mask=jnp.ones((1, 1, 8, 8), bool), requested="pallas") == "xla"  # KV cache
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert pick(q16, mask=plain) == "cudnn"
  assert pick(q16, mask=None) == "cudnn"
  assert pick(q16, mask=packed) == "pallas"
  assert pick(q32, mask=plain, bias=jnp.zeros((1, 2, 8, 8))) == "pallas"  # T5
  assert pick(q32, mask=plain) == "xla"  # float32 plain attention: unchanged
  assert pick(q16, mask=jnp.ones((1, 1, 8, 8), bool)) == "xla"
  assert pick(q16, mask=packed, requested="xla") == "xla"


def _grads_and_logits(model, batch, weights):
  graphdef, state = nnx.split(model)

  def loss(state):
    logits = nnx.merge(graphdef, state)(batch)
    return jnp.sum(jnp.sin(logits) * weights[:, :, None]), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
  return np.asarray(logits), jax.tree.leaves(grads)


def _compare(make, batch, weights):
  """Logits at real positions and every parameter gradient of a loss over real positions."""
  logits, grads = _grads_and_logits(make("xla"), batch, weights)
  logits_p, grads_p = _grads_and_logits(make("pallas"), batch, weights)
  real = np.asarray(weights) > 0
  np.testing.assert_allclose(logits_p[real], logits[real], atol=2e-5, rtol=1e-5)
  assert len(grads) == len(grads_p)
  for a, b in zip(grads, grads_p):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=5e-5, rtol=1e-4)


def test_packed_prefix_lm_decoder_with_pallas_equals_xla():
  seg = np.array([[1] * 7 + [2] * 6 + [3] * 3 + [0] * 4, [1] * 12 + [0] * 8], np.int32)
  pos = np.zeros_like(seg)
  for i in range(2):
    for j in range(1, 20):
      pos[i, j] = 0 if seg[i, j] != seg[i, j - 1] else pos[i, j - 1] + 1
  tokens = np.where(seg > 0, np.random.RandomState(0).randint(2, 300, seg.shape), 0)
  batch = {"decoder_input_tokens": tokens.astype(np.int32), "decoder_segment_ids": seg,
           "decoder_positions": pos,
           "decoder_causal_attention": ((pos < 3) & (seg > 0)).astype(np.int32)}
  make = lambda impl: decoder.Decoder(decoder.preset("decoder_test", attention=impl),
                                      rngs=nnx.Rngs(0))
  _compare(make, batch, jnp.asarray(seg > 0, jnp.float32))


def test_packed_t5_with_pallas_equals_xla():
  rng = np.random.RandomState(1)
  enc_seg = np.array([[1] * 9 + [2] * 11 + [0] * 4, [1] * 20 + [0] * 4], np.int32)
  dec_seg = np.array([[1] * 4 + [2] * 5 + [0] * 3, [1] * 10 + [0] * 2], np.int32)
  batch = {"encoder_input_tokens": np.where(enc_seg > 0, rng.randint(2, 300, enc_seg.shape), 0),
           "encoder_segment_ids": enc_seg,
           "decoder_input_tokens": np.where(dec_seg > 0, rng.randint(2, 300, dec_seg.shape), 0),
           "decoder_segment_ids": dec_seg}
  make = lambda impl: t5.T5(t5.preset("t5_test", attention=impl), rngs=nnx.Rngs(0))
  _compare(make, batch, jnp.asarray(dec_seg > 0, jnp.float32))


def test_pallas_under_a_mesh_runs_per_shard_and_equals_xla():
  """A Pallas call is opaque to XLA's partitioner: layers.attention runs it per shard
  (shard_map: batch over data x fsdp, heads over tensor)."""
  from mtjax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mtjax.parallel import rules as rules_lib  # pylint: disable=g-import-not-at-top

  seg = np.array([[1] * 7 + [2] * 6 + [0] * 3, [1] * 12 + [0] * 4] * 2, np.int32)
  batch = {"decoder_input_tokens": np.where(seg > 0, 5 + np.arange(16)[None], 0),
           "decoder_segment_ids": seg}
  make = lambda impl: decoder.Decoder(decoder.preset("decoder_test", attention=impl),
                                      rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda m, b: m(b))
  want = np.asarray(forward(make("xla"), batch))
  model = make("pallas")
  with jax.set_mesh(mesh_lib.make_mesh(2, 2, 2)), nnx.logical_axis_rules(
      rules_lib.DEFAULT_RULES):
    assert "shard_map" in str(jax.make_jaxpr(lambda b: model(b))(batch))
    got = np.asarray(forward(model, batch))
  np.testing.assert_allclose(got[seg > 0], want[seg > 0], atol=2e-5, rtol=1e-5)
