"""Learning-rate schedules against their formulas; FLOPs and MFU arithmetic."""

import math

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
