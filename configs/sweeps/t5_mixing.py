"""T5's mixing study (Raffel et al. 2020, Sec. 3.5.2, Table 11) at small scale, on the suite
`synthetic_sizes` (mtjax.mixtures.synthetic_sizes: 20,000 / 2,000 / 200 / 200 training examples).

  mtjax ablate --config=configs/quickstart.py --sweep=configs/sweeps/t5_mixing.py --parallel 2 \
      --set data.mixture=synthetic_sizes data.modules=mtjax.mixtures.synthetic_sizes

(`scripts/repro_mixing.py` runs exactly this and writes docs/results/mixing.md.)

Variants, each over the four supervised tasks (the general task and the two train-set probes are
excluded, so they are evaluated as held-out tasks):
- `proportional`: examples-proportional, no cap (T5's K = 2**21 is above every task size);
- `prop_K2000`: examples-proportional with cap K = 2000, `min(n, K)`;
- `T2`, `T4`, `T8`: temperature-scaled, `min(n, 2**21) ** (1/T)` (T = 1 is `proportional`);
- `equal`: every task the same rate;
- `T2_general25`: T = 2 over the supervised tasks plus the general task `sizes_copy` fixed at
  25% of the draws (the `general` share of mtjax.recipes.variants).
"""

PROBES = ["sizes_shift_trainset", "sizes_double_trainset"]
GENERAL = "sizes_copy"
K_T5 = 2 ** 21


def variants() -> list[dict]:
  not_trained = [GENERAL, *PROBES]
  out = [{"name": "proportional", "rate_fn": "examples_proportional", "maximum": K_T5,
          "exclude": not_trained},
         {"name": "prop_K2000", "rate_fn": "examples_proportional", "maximum": 2000,
          "exclude": not_trained}]
  for t in (2, 4, 8):
    out.append({"name": f"T{t}", "rate_fn": "examples_proportional", "maximum": K_T5,
                "temperature": float(t), "exclude": not_trained})
  out.append({"name": "equal", "rate_fn": "uniform", "exclude": not_trained})
  out.append({"name": "T2_general25", "rate_fn": "examples_proportional", "maximum": K_T5,
              "temperature": 2.0, "exclude": PROBES,
              "general": {"tasks": [GENERAL], "fraction": 0.25}})
  return out


def get_sweep() -> dict:
  return {
      "name": "t5_mixing",
      "seeds": [0, 1, 2],
      # Rows of 40 input / 24 target tokens, packed: ~2 examples a row, so ~32 examples a step
      # and ~12,800 draws in 400 steps (less than the 22,400 supervised training examples).
      "set": ["train.steps=400", "train.log_every=100", "train.checkpoint_every=400",
              "train.keep_checkpoints=1", "eval.max_examples=200", "data.batch_size=16",
              "data.inputs_length=40", "data.targets_length=24"],
      "variants": variants(),
  }
