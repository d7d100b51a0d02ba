"""A sweep as Python (`get_sweep()` returns what a YAML sweep holds): rate functions, caps,
temperatures and a general-instruction share on the synthetic suite, two seeds each.

  mtjax ablate --config=configs/quickstart.py --sweep=configs/sweeps/synthetic_rates.py

Python is handy when variants are generated, e.g. a grid of caps x temperatures below.
"""


def get_sweep() -> dict:
  variants = [{"name": "uniform", "rate_fn": "uniform"}]
  for cap in (2000, 8000):  # T5's examples-proportional mixing, capped, with temperature
    for temperature in (1.0, 2.0):
      variants.append({"name": f"cap{cap}_T{temperature:g}", "rate_fn": "examples_proportional",
                       "maximum": cap, "temperature": temperature})
  # `copy` plays the general-instruction data: 10% and 50% of the draws.
  for fraction in (0.1, 0.5):
    variants.append({"name": f"general{int(fraction * 100)}",
                     "general": {"tasks": ["synthetic_copy"], "fraction": fraction}})
  return {
      "name": "synthetic_rates",
      "seeds": [0, 1],
      "set": ["train.steps=300", "train.log_every=100", "train.checkpoint_every=100"],
      "variants": variants,
  }
