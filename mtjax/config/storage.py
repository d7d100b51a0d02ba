"""The config keys that name storage, and the check that each can be used before any work.

Any of them may be a URL (`gs://bucket/...`, see mtjax/fs.py). A typo'd bucket, missing
credentials or an unreachable endpoint must surface as one line naming the key and the path
before the model is built or compiled, not minutes later inside Orbax or TensorBoard.
"""

from __future__ import annotations

from mtjax import fs
from mtjax.config import schema

# (config key, what must exist there already: False for outputs)
PATH_KEYS = (("run_dir", False), ("data.cache_dir", False), ("train.init_from", True),
             ("train.init_prompt_from", True), ("model.hf_checkpoint", True))


def _get(cfg: schema.RunConfig, key: str) -> str:
  value = cfg
  for part in key.split("."):
    value = getattr(value, part)
  return value or ""


def check(cfg: schema.RunConfig) -> None:
  """Raises fs.StorageError (one line: the key, the path, the cause) for a URL in the config
  whose bucket cannot be listed, or an input (`train.init_from`, ...) that does not exist."""
  for key, is_input in PATH_KEYS:
    path = _get(cfg, key)
    if not path or not fs.is_url(path):
      continue
    fs.check_usable(path, key)
    if is_input and not fs.exists(path):
      raise fs.StorageError(f"{key} {path}: no such file or directory")
