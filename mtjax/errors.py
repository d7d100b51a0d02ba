"""Errors that are the user's to fix (config, data, task registry, mesh, paths, checkpoints,
disk), as opposed to bugs in mtjax.

The CLI prints a `UserError` as one `error: <message>` line (plus its `hint`, if any) and exits
with status 2; anything else keeps its traceback, because it is a bug to report. `--debug` or
`MTJAX_DEBUG=1` shows the traceback of user errors too. The subclasses derive from the built-in
type code already catches (ValueError, FileNotFoundError, ...), so raising one where a plain
ValueError was raised before changes no caller.
"""

from __future__ import annotations


class UserError(Exception):
  """Something the user can fix; `hint` (optional) says how, on a second line."""

  def __init__(self, message: str, hint: str = ""):
    super().__init__(message)
    self.hint = hint


class ConfigError(UserError, ValueError):
  """A config value that cannot work (names the key)."""


class DataError(UserError, ValueError):
  """Bad or missing data: a task, a file, a line, an empty split (names it)."""


class MissingError(UserError, FileNotFoundError):
  """A path the user gave does not exist or holds nothing usable."""


class RunDirError(UserError, RuntimeError):
  """The run directory cannot be used as asked: locked by another writer, or its checkpoints
  come from an incompatible config."""


class DiskFullError(UserError, OSError):
  """No space left where a checkpoint or log goes (names the directory and the free space)."""


class ModuleError(UserError, ImportError):
  """A module named in the config (data.modules, --module) cannot be imported."""


class ConfigKeyError(UserError, KeyError):
  """An unknown config key, or a section set as if it were a field (names the key)."""

  def __str__(self) -> str:  # the message itself, not KeyError's repr() of it
    return str(self.args[0]) if self.args else ""
