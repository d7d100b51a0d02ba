"""Multi-stage programs built from train/eval: ProMoT (`promot`), mixture ablations (`ablate`)."""
