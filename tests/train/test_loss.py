"""Loss against closed-form numpy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtjax.train import loss as loss_lib


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_cross_entropy_equals_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 3))
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  task_ids = np.array([[0, 0, 0], [1, 1, 1]])
  loss, m = loss_lib.loss_and_metrics(jnp.array(logits), jnp.array(targets), jnp.array(weights),
                                      jnp.array(task_ids), num_tasks=2)
  nll = -np.take_along_axis(_log_softmax(logits), targets[..., None], -1)[..., 0]
  assert float(loss) == pytest.approx((nll * weights).sum() / 3, rel=1e-6)
  np.testing.assert_allclose(m["task_loss_sum"], [nll[0, :2].sum(), nll[1, 0]], rtol=1e-6)
  np.testing.assert_allclose(m["task_token_sum"], [2, 1])


def test_label_smoothing_and_z_loss_formula():
  logits = np.array([[[2.0, 0.5, -1.0, 0.0]]], np.float32)
  target = np.array([[0]])
  s, z = 0.1, 1e-3
  per_tok, _ = loss_lib.token_cross_entropy(jnp.array(logits), jnp.array(target), s, z)
  logp = _log_softmax(logits)[0, 0]
  q = np.full(4, s / 3)
  q[0] = 1 - s
  cross = -(q * logp).sum()
  entropy = -(q * np.log(q)).sum()
  lse = np.log(np.exp(logits[0, 0]).sum())
  assert float(per_tok[0, 0]) == pytest.approx(cross - entropy + z * lse**2, rel=1e-5)
