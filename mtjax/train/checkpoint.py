"""Orbax checkpoints of a run: params, optimizer state, Grain iterator state, metadata.

One `CheckpointManager` per run directory. Saves are asynchronous and atomic (Orbax writes to a
temporary folder and commits it), so a crash during a save leaves the previous checkpoint as the
latest complete one. Restoring takes abstract targets carrying shardings, so a checkpoint can be
restored onto whatever mesh the new run uses. Retention: the newest `keep`, plus (with a
`best_metric`) the best one by that metric.

Resuming (`Checkpointer.resume`) first decides whether the checkpoints can continue under the
current config (`resume_differences`, one table of what may not change, plus a parameter-shape
check); only then restores. A checkpoint that fails to restore while an older one restores
(truncated, missing or garbled files) is set aside as `<step>.corrupt-<time>` — kept, never
deleted — so the run continues from the older one and can save that step number again. A full
disk is one errors.DiskFullError, checked before a local save starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from mtjax import errors, fs
from mtjax.parallel import distributed
from mtjax.train import data_state

log = logging.getLogger(__name__)

# What a run may not change when it resumes from its own checkpoints: everything that shapes the
# parameters (model structure, LoRA, soft prompt), the optimizer state, or the data stream. Listed
# per section: `"*"` means every field except those in RESUMABLE_CHANGES. The rest may change on
# resume (documented in docs/DESIGN.md, "The run directory"): train.steps (the learning-rate
# schedule is recomputed for the new length), logging, checkpointing, eval, the mesh shape and the
# number of processes (checkpoints re-shard on restore), data.cache_dir (a moved cache).
FIXED_ON_RESUME = {
    "model": "*",
    "optimizer": "*",
    "data": ("mixture", "tokenizer", "inputs_length", "targets_length", "batch_size", "pack",
             "packer", "packing_bins", "seed", "feature_converter", "rate_stages", "worker_count"),
    "train": ("trainable", "seed"),
}
# Fields of a "*" section that may change: compute-only model options and prompt *init* options
# (they only matter for a fresh start), the task-routed adapters' default task (evaluation only),
# the learning rate and its warmup.
RESUMABLE_CHANGES = {
    "model": ("dtype", "remat", "attention", "dropout_rate", "prompt_init", "prompt_init_range",
              "prompt_init_vocab", "prompt_labels", "adapter_default_task"),
    "optimizer": ("learning_rate", "warmup_steps"),
}


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding of every array: the restore target for that tree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpointer:
  """Saves every `save_every` steps (and on demand); keeps the newest `keep` (+ the best)."""

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True,
               best_metric: str = "", best_mode: str = "min"):
    self.directory = fs.abspath(directory)  # a URL stays one: Orbax writes gs:// itself
    _drop_callbacks_into_closed_loops()  # before any read of a possibly damaged checkpoint
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.save_every = max(save_every, 1)
    if best_mode not in ("min", "max"):
      raise ValueError(f"train.best_mode must be 'min' or 'max', got {best_mode!r}")
    retention = {"max_to_keep": keep}
    if best_metric:
      retention = {"preservation_policy": policies.AnyPreservationPolicy([
          policies.LatestN(n=keep),
          policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                         n=1, keep_checkpoints_without_metrics=False)])}
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=max(save_every, 1), enable_async_checkpointing=async_save,
            **retention),
        item_handlers={
            "params": ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "data_iter": data_state.DataIterHandler(),  # Grain's files; any process count
            "meta": ocp.JsonCheckpointHandler(),
        },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Every `save_every` steps exactly (Orbax alone would also save a run's first step)."""
    return step % self.save_every == 0

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, params, opt_state, data_iter, meta: dict,
           metrics: dict | None = None) -> bool:
    """`metrics` (e.g. the last eval) rank the checkpoint for `best_metric`."""
    if self.best_metric:
      metrics = metrics if metrics and self.best_metric in metrics else None
    if metrics:  # kept in the metadata too, so `best_step` works after the run
      meta = dict(meta, metrics={k: float(v) for k, v in metrics.items()})
    items = {"params": ocp.args.StandardSave(params),
             "data_iter": data_state.DataIterSave(data_iter),
             "meta": ocp.args.JsonSave(meta)}
    if jax.tree.leaves(opt_state):  # stateless optimizers (plain SGD) have nothing to save
      items["opt_state"] = ocp.args.StandardSave(opt_state)
    self._check_space(step, (params, opt_state))
    with self._disk_errors(step):
      return self.manager.save(step, args=ocp.args.Composite(**items),
                               metrics=metrics if self.best_metric else None,
                               force=True)  # when to save is decided here and by the loop

  def _check_space(self, step: int, trees) -> None:
    """A local checkpoint needs about the bytes of its arrays (this process's shards) plus
    slack; refuse before writing anything if the file system has less, so a full disk is one
    line and no half-written step (earlier checkpoints are untouched)."""
    if fs.is_url(self.directory):
      return
    need = sum(_local_bytes(x) for x in jax.tree.leaves(trees)) + (1 << 20)
    probe = self.directory
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
      probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if free < need:
      raise errors.DiskFullError(
          f"no space left for checkpoint step {step} in {self.directory}: it needs about "
          f"{_size(need)}, the file system has {_size(free)} free; earlier checkpoints are "
          "intact", hint="free some space (or set train.keep_checkpoints lower) and rerun: the "
                         "run resumes from its newest checkpoint")

  @contextlib.contextmanager
  def _disk_errors(self, step: int | None):
    """An ENOSPC from Orbax/TensorStore (surfacing at a save, a wait or close) becomes one
    errors.DiskFullError naming the directory and the free space."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not _disk_full(e):
        raise
      free = "unknown"
      if not fs.is_url(self.directory) and os.path.exists(self.directory):
        free = _size(shutil.disk_usage(self.directory).free)
      at = f"checkpoint step {step}" if step is not None else "a checkpoint"
      raise errors.DiskFullError(
          f"no space left on the device writing {at} to {self.directory} ({free} free); "
          "earlier checkpoints are intact (a half-written step is never committed)",
          hint="free some space and rerun: the run resumes from its newest checkpoint"
      ) from None

  def restore(self, step: int, params_like, opt_state_like, data_iter):
    """Restores onto the shardings of `*_like`; sets `data_iter`'s state in place."""
    items = {"params": ocp.args.StandardRestore(abstract(params_like)),
             "data_iter": data_state.DataIterRestore(data_iter),
             "meta": ocp.args.JsonRestore()}
    if jax.tree.leaves(opt_state_like):
      items["opt_state"] = ocp.args.StandardRestore(abstract(opt_state_like))
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["params"], restored.get("opt_state", opt_state_like), restored["meta"]

  def meta(self, step: int) -> dict | None:
    """The run metadata saved with `step` (None if unreadable)."""
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # noqa: BLE001  # pylint: disable=broad-except
      return None

  def best_step(self, metric: str | None = None, mode: str | None = None) -> int | None:
    """The kept step whose saved `metric` (default `best_metric`) is best; None if no kept
    checkpoint recorded it. Ties go to the later step (as Orbax's BestN keeps)."""
    metric = metric or self.best_metric
    mode = mode or self.best_mode
    scored = []
    for step in self.all_steps():
      value = ((self.meta(step) or {}).get("metrics") or {}).get(metric)
      if value is not None:
        scored.append((value if mode == "min" else -value, -step))
    return -min(scored)[1] if scored else None

  def restore_latest(self, params_like, opt_state_like, data_iter):
    """(step, params, opt_state, meta) of the newest checkpoint that restores, or None.

    A checkpoint that fails (a truncated or corrupted file) while an older one restores is set
    aside (renamed `<step>.corrupt-<time>`, never deleted) with one warning, so the run can save
    that step number again. If none restores, nothing is moved: errors.RunDirError. A user error
    raised while restoring (e.g. the data stream cannot continue on this many processes) is
    raised as is: it is not corruption.
    """
    failed = []
    for step in reversed(self.all_steps()):
      try:
        restored = self.restore(step, params_like, opt_state_like, data_iter)
      except Exception as e:  # noqa: BLE001  # pylint: disable=broad-except
        user = _user_error(e)
        if user is not None:
          raise user from None
        failed.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"))
        continue
      self._set_aside(failed)
      return (step,) + restored
    if failed:
      raise errors.RunDirError(
          f"no checkpoint in {self.directory} can be restored (" +
          "; ".join(f"step {s}: {why}" for s, why in failed) + "); they are left in place",
          hint="if they are damaged, move them out of the way and restart (or use a new "
               "run_dir); if the config changed, restore it")
    return None

  def resume(self, params_like, opt_state_like, data_iter, config: dict):
    """Restores the newest good checkpoint for a run with `config` (a schema.to_dict dict), or
    returns None when there is none. First decides, before anything is restored or written,
    whether the checkpoints can continue under `config` (resume_differences over the newest
    checkpoint whose metadata reads, and the parameter shapes against the newest readable
    parameter metadata); a difference is errors.ConfigError listing each one."""
    steps = self.all_steps()
    if not steps:
      return None
    diffs = []
    for step in reversed(steps):
      saved = self.meta(step)
      if saved is not None:
        diffs += resume_differences(saved.get("config") or {}, config)
        break
    if not diffs:
      diffs += self._shape_differences(steps, params_like)
    if diffs:
      raise errors.ConfigError(
          f"{self.directory} holds checkpoints of another config, which this run cannot "
          "continue: " + "; ".join(diffs[:20]) + (f"; and {len(diffs) - 20} more"
                                                  if len(diffs) > 20 else ""),
          hint="restore those settings, or use a new run_dir (train.init_from=<this run> starts "
               "a new run from its weights)")
    return self.restore_latest(params_like, opt_state_like, data_iter)

  def _shape_differences(self, steps, params_like) -> list[str]:
    """Parameter paths whose shape or dtype differ from the newest readable checkpoint's (a
    safety net under resume_differences: a structural option it does not list)."""
    key = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    ours = {key(p): v for p, v in jax.tree_util.tree_flatten_with_path(params_like)[0]}
    for step in reversed(steps):
      try:
        tree = _to_dict(self.manager.item_metadata(step)["params"])
      except Exception:  # noqa: BLE001  # pylint: disable=broad-except  (unreadable: older one)
        continue
      if tree is None:
        continue
      saved = {key(p): m for p, m in jax.tree_util.tree_flatten_with_path(
          tree, is_leaf=lambda x: hasattr(x, "shape"))[0]}
      diffs = [f"parameter {k}: checkpoint {tuple(saved[k].shape)}, model {tuple(v.shape)}"
               for k, v in ours.items() if k in saved and tuple(saved[k].shape) != v.shape]
      diffs += [f"parameter {k}: in the model, not in the checkpoint"
                for k in sorted(set(ours) - set(saved))]
      diffs += [f"parameter {k}: in the checkpoint, not in the model"
                for k in sorted(set(saved) - set(ours))]
      return diffs
    return []

  def _set_aside(self, failed: list[tuple[int, str]]) -> None:
    """Renames the step folders of `failed` to `<step>.corrupt-<UTC time>` (process 0; the
    others wait), so their step numbers can be saved again; Orbax ignores such names."""
    if not failed:
      return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if jax.process_index() == 0:
      for step, why in failed:
        src = fs.join(self.directory, str(step))
        dst = f"{src}.corrupt-{stamp}"
        fs.rename(src, dst)
        log.warning("checkpoint %s/%d cannot be restored (%s); moved it aside to %s and "
                    "resuming from the previous one", self.directory, step, why, dst)
    distributed.barrier("checkpoint-set-aside")
    if fs.is_url(self.directory):
      fs.forget_listings(self.directory)
    self.manager.reload()

  def restore_params(self, step: int, params_like):
    restored = self.manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract(params_like))))
    return restored["params"]

  def wait(self) -> None:
    with self._disk_errors(None):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      with self._disk_errors(None):
        self.manager.wait_until_finished()
    finally:
      self.manager.close()


def resume_differences(saved: dict, current: dict) -> list[str]:
  """Each setting (FIXED_ON_RESUME) that differs between the config a checkpoint was written with
  and the current one, as `key: checkpoint X, config Y`. Empty: the run may resume."""
  diffs = []
  for section, keys in FIXED_ON_RESUME.items():
    a, b = (saved or {}).get(section) or {}, (current or {}).get(section) or {}
    if keys == "*":
      keys = sorted((set(a) | set(b)) - set(RESUMABLE_CHANGES.get(section, ())))
      keys = [k for k in keys if k in a]  # a field added to mtjax after the checkpoint: new
    for k in keys:
      if k in a and _norm(a.get(k)) != _norm(b.get(k)):
        diffs.append(f"{section}.{k}: checkpoint {a.get(k)!r}, config {b.get(k)!r}")
  return diffs


def check_resumable(saved: dict, current: dict) -> None:
  """Raises errors.ConfigError listing every setting the checkpoints cannot continue with."""
  diffs = resume_differences(saved, current)
  if diffs:
    raise errors.ConfigError(
        "the run directory's checkpoints were written with another config: " + "; ".join(diffs),
        hint="restore those settings, or use a new run_dir (train.init_from=<this run> starts "
             "a new run from its weights)")


def _norm(value):
  if isinstance(value, (tuple, list)):
    return [_norm(v) for v in value]
  if isinstance(value, dict):
    return {k: _norm(v) for k, v in value.items()}
  return value


def _user_error(e: BaseException) -> BaseException | None:
  """The errors.UserError in `e`'s chain (Orbax wraps handler errors), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, errors.UserError):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def _disk_full(e: BaseException) -> bool:
  seen = set()
  while e is not None and id(e) not in seen:
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e):
      return True
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return False


def find_step_dir(path: str) -> str:
  """A run dir, its `checkpoints` dir, or one step dir -> the newest complete step dir."""
  path = fs.abspath(path)
  if fs.isdir(os.path.join(path, "params")):
    return path
  if fs.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = sorted(int(d) for d in fs.listdir(path) if d.isdigit()) if fs.isdir(path) else []
  if fs.is_url(path):  # in a bucket a step folder exists while it uploads; done once committed
    steps = [s for s in steps if fs.exists(os.path.join(path, str(s), "commit_success.txt"))]
  if not steps:
    raise FileNotFoundError(f"train.init_from: no checkpoint under {path}")
  return os.path.join(path, str(steps[-1]))


def init_params(source: str, params: Any) -> tuple[Any, list[str], list[str]]:
  """Parameters of a pretrained mtjax checkpoint, on `params`' shardings; params it lacks keep
  their fresh init. Returns (params, restored paths, fresh paths)."""
  item = os.path.join(find_step_dir(source), "params")
  handler = ocp.StandardCheckpointer()
  metadata = _to_dict(handler.metadata(item))
  key = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  ours = {key(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  saved = {key(p): m for p, m in jax.tree_util.tree_flatten_with_path(
      metadata, is_leaf=lambda x: hasattr(x, "shape"))[0]}
  mismatched = [f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(v.shape)}"
                for k, v in ours.items() if k in saved and tuple(saved[k].shape) != v.shape]
  if mismatched:
    raise ValueError(f"train.init_from={source}: shapes differ: " + "; ".join(mismatched))
  some = next(iter(ours.values())).sharding  # parameters we lack: replicated, then dropped
  replicated = (jax.sharding.NamedSharding(some.mesh, jax.P())
                if isinstance(some, jax.sharding.NamedSharding) else some)

  def target(path, m):
    k = key(path)
    if k in ours:
      return jax.ShapeDtypeStruct(ours[k].shape, ours[k].dtype, sharding=ours[k].sharding)
    return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=replicated)

  restored = handler.restore(item, jax.tree_util.tree_map_with_path(
      target, metadata, is_leaf=lambda x: hasattr(x, "shape")))
  handler.close()
  restored = {key(p): v for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
  merged = jax.tree_util.tree_map_with_path(lambda p, v: restored.get(key(p), v), params)
  return merged, sorted(set(ours) & set(saved)), sorted(set(ours) - set(saved))


def _to_dict(tree):
  """Orbax metadata trees may use other mapping types; plain nested dicts are easier to walk."""
  if hasattr(tree, "item_metadata"):  # StepMetadata -> TreeMetadata
    tree = tree.item_metadata
  if hasattr(tree, "tree"):
    tree = tree.tree
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def _drop_callbacks_into_closed_loops() -> None:
  """When one array of a checkpoint fails to read, Orbax's restore returns at once and closes its
  event loop while TensorStore still completes the other reads; each completion then calls
  `loop.call_soon_threadsafe` on the closed loop, and TensorStore prints the RuntimeError as a
  traceback (from C++, past Python's hooks): dozens of tracebacks for one damaged file. Such a
  callback has nowhere to go, so it is dropped: this makes `call_soon_threadsafe` on a closed
  loop return None instead of raising (on an open loop nothing changes). Installed once, when
  the first Checkpointer is made (before any read of a possibly damaged checkpoint)."""
  import asyncio  # pylint: disable=g-import-not-at-top

  original = asyncio.BaseEventLoop.call_soon_threadsafe
  if getattr(original, "mtjax_patched", False):
    return

  def call_soon_threadsafe(self, callback, *args, **kwargs):
    if self.is_closed():
      return None
    return original(self, callback, *args, **kwargs)

  call_soon_threadsafe.mtjax_patched = True
  asyncio.BaseEventLoop.call_soon_threadsafe = call_soon_threadsafe


def _local_bytes(x) -> int:
  """Bytes of the shards of `x` this process writes (replicas are written once)."""
  shards = getattr(x, "addressable_shards", None)
  if shards is None:
    return int(getattr(x, "nbytes", 0))
  seen, total = set(), 0
  for shard in shards:
    key = str(shard.index)
    if key not in seen:
      seen.add(key)
      total += int(shard.data.nbytes)
  return total


def _size(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n} B"
