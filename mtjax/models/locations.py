"""What a `--checkpoint` path names: an mtjax model directory or a training run's checkpoint.

Paths only (no model code): `mtjax.models.store` loads what they name and `mtjax.models.hf_meta`
reads what was recorded next to it, both through `locate`, so they find the same place.
`store` re-exports these names.
"""

from __future__ import annotations

import dataclasses
import os

from mtjax import fs

MODEL_FILE = "model.json"  # marks an mtjax model directory (`mtjax.models.store.save`)


@dataclasses.dataclass(frozen=True)
class Location:
  """What a `--checkpoint` path names: a model dir, or a run's checkpoint (step None: latest)."""
  model_dir: str | None = None
  run_dir: str | None = None
  ckpt_dir: str | None = None
  step: int | None = None


def locate(path: str) -> Location:
  """Where `path` (a model dir, a run dir, its `checkpoints/` dir or one step's dir) lives, so
  that the weights and what was recorded next to them (`mtjax.models.hf_meta`) are found the
  same way."""
  path = fs.abspath(path)
  if fs.exists(os.path.join(path, MODEL_FILE)):
    return Location(model_dir=path)
  if fs.isdir(os.path.join(path, "checkpoints")):
    return Location(run_dir=path, ckpt_dir=os.path.join(path, "checkpoints"))
  if os.path.basename(path).isdigit():
    return Location(run_dir=os.path.dirname(os.path.dirname(path)), ckpt_dir=os.path.dirname(path),
                    step=int(os.path.basename(path)))
  return Location(run_dir=os.path.dirname(path), ckpt_dir=path)


def latest_step(ckpt_dir: str) -> int:
  """The newest step of a run's `checkpoints/` dir (`mtjax.models.store.load_any` loads it)."""
  steps = [int(d) for d in fs.listdir(ckpt_dir) if d.isdigit()] if fs.isdir(ckpt_dir) else []
  if fs.is_url(ckpt_dir):  # a bucket step folder exists while it uploads: committed ones only
    steps = [s for s in steps if fs.exists(os.path.join(ckpt_dir, str(s), "commit_success.txt"))]
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  return max(steps)
