"""Orbax checkpoints of a run: params, optimizer state, Grain iterator state, metadata.

One `CheckpointManager` per run directory. Saves are asynchronous and atomic (Orbax writes to a
temporary folder and commits it), so a crash during a save leaves the previous checkpoint as the
latest complete one. Restoring takes abstract targets carrying shardings, so a checkpoint can be
restored onto whatever mesh the new run uses.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding of every array: the restore target for that tree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the newest `keep`."""

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=max(save_every, 1),
            enable_async_checkpointing=async_save),
        item_handlers={
            "params": ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "data_iter": grain.checkpoint.CheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def save(self, step: int, params, opt_state, data_iter, meta: dict,
           force: bool = False) -> bool:
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            meta=ocp.args.JsonSave(meta),
        ),
        force=force,
    )

  def restore(self, step: int, params_like, opt_state_like, data_iter):
    """Restores onto the shardings of `*_like`; sets `data_iter`'s state in place."""
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(params_like)),
            opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
            data_iter=grain.checkpoint.CheckpointRestore(data_iter),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored["params"], restored["opt_state"], restored["meta"]

  def restore_params(self, step: int, params_like):
    restored = self.manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract(params_like))))
    return restored["params"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
