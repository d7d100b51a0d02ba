"""Learning-rate schedules against their formulas; FLOPs and MFU arithmetic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtjax.train import flops, optimizers


@pytest.mark.parametrize("name,formula", [
    ("constant", lambda t: 0.1),
    ("linear", lambda t: 0.1 * (1 - (t - 10) / 90)),
    ("cosine", lambda t: 0.1 * 0.5 * (1 + math.cos(math.pi * (t - 10) / 90))),
    # T5X: lr * rsqrt(max(step, warmup)), scaled so the rate is continuous at the warmup's end.
    ("rsqrt", lambda t: 0.1 * math.sqrt(10) / math.sqrt(t)),
])
def test_schedules_after_linear_warmup(name, formula):
  lr = optimizers.schedule(name, 0.1, total_steps=100, warmup_steps=10)
  for t in (0, 5):
    np.testing.assert_allclose(lr(t), 0.1 * t / 10, rtol=1e-6)  # linear warmup from 0
  for t in (10, 37, 99):
    np.testing.assert_allclose(lr(t), formula(t), rtol=1e-5, atol=1e-8)


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match="optimizer.schedule"):
    optimizers.schedule("step", 0.1, 10)
  with pytest.raises(ValueError, match="optimizer.name"):
    optimizers.make("lion", 0.1)


def test_flops_and_mfu():
  params = {"encoder_layers": {"w": jnp.zeros((10, 10))}, "decoder_layers": {"w": jnp.zeros((5,))},
            "token_embed": jnp.zeros((3,))}
  class Cfg:  # pylint: disable=too-few-public-methods
    num_heads, d_kv, num_encoder_layers, num_decoder_layers = 2, 4, 1, 1
  f = flops.step_flops(params, Cfg, batch_size=2, inputs_length=6, targets_length=3)
  attn = 12 * 8 * (1 * 12 * 6 + 1 * 6 * (3 + 6))
  assert f == 6 * (100 * 12 + 8 * 6) + attn
  assert flops.mfu(f, 2.0, 4, peak=1e6) == f * 2 / 4e6
  assert flops.mfu(f, 2.0, 4, peak=None) is None
  assert flops.device_peak_flops() is None  # CPU: no MFU


def _steps(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    upd, state = tx.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, upd)
    out.append(params)
  return out


def test_adafactor_exempting_nothing_equals_optax():
  """The rebuilt chain (used when some parameters skip the scaling) is optax's Adafactor."""
  rng = np.random.default_rng(0)
  params = {"k": jnp.asarray(rng.normal(size=(6, 130)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
           for _ in range(3)]
  for wd in (0.0, 0.01):
    ours = _steps(optimizers.make("adafactor", 0.01, wd, unscaled=lambda path: False),
                  params, grads)
    ref = _steps(optimizers.make("adafactor", 0.01, wd), params, grads)
    for a, b in zip(ours, ref):
      jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_lora_factors_skip_adafactors_parameter_scale():
  """A zero-initialised LoRA `b` moves by ~lr per step, not lr * 1e-3 (Adafactor's floor).

  First Adafactor step on an unfactored leaf: v = g^2, so the update is g / |g| = +-1 per entry
  (RMS 1, clipping inactive), times lr, times max(RMS(param), 1e-3) where scaled.
  """
  lr = 0.01
  params = {"q_lora": {"a": jnp.full((4, 2), 0.5), "b": jnp.zeros((2, 4))},
            "q": {"kernel": jnp.full((4, 4), 2.0)}}
  grads = [{"q_lora": {"a": jnp.ones((4, 2)), "b": -jnp.ones((2, 4))},
            "q": {"kernel": jnp.ones((4, 4))}}]
  from mtjax.peft import lora  # pylint: disable=g-import-not-at-top
  (after,) = _steps(optimizers.make("adafactor", lr, unscaled=lora.is_adapter_path), params, grads)
  np.testing.assert_allclose(after["q_lora"]["b"], lr, rtol=1e-5)          # was lr * 1e-3
  np.testing.assert_allclose(after["q_lora"]["a"], 0.5 - lr, rtol=1e-5)   # not scaled by 0.5
  np.testing.assert_allclose(after["q"]["kernel"], 2.0 - lr * 2.0, rtol=1e-5)  # scaled by RMS 2
  (old,) = _steps(optimizers.make("adafactor", lr), params, grads)
  np.testing.assert_allclose(old["q_lora"]["b"], lr * 1e-3, rtol=1e-5)
