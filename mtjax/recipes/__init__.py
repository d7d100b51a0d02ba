"""Multi-stage programs built from train/eval: ProMoT, mixture ablations (not built yet)."""
