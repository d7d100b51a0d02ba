"""The documentation site's reference pages, generated from the code when `mkdocs build` runs.

mkdocs.yml names this file as a hook (`hooks:`); `on_files` adds the pages below to the build,
so they never go stale and are never committed:

- `reference/cli.md`: every `mtjax` command and flag, read from the command's own argparse
  parser (each command's handler is run with `parse_args` intercepted: the parser it builds is
  the one documented, groups and defaults included), plus the options every command takes
  (`mtjax.cli.GLOBAL_OPTIONS`);
- `reference/config.md`: every `RunConfig` key with its type, default and documentation. A key's
  documentation is its comment in `mtjax/config/schema.py`: the comment lines right above the
  field and/or the comment at the end of its line (continued on lines that start `#   `). A key
  without one is an error, so a strict build (`make test`) fails until it is documented;
- `reference/api/<module>.md`: the public modules (`API_MODULES`), rendered by mkdocstrings.

`command_problems(text)` checks the `mtjax ...` command lines of a Markdown page against those
parsers and the config keys (tests/test_docs.py runs it over the docs and the README).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import os
import re
import shlex
import tokenize
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, "mtjax", "config", "schema.py")

# Modules a user writes code against (task registration, metrics, hooks, configs, models,
# merging); each gets an API page. A module that disappears fails the strict build.
API_MODULES = {
    "Configuration": ["mtjax.config.schema"],
    "Tasks and data": ["mtjax.data.file_tasks", "mtjax.data.few_shot", "mtjax.data.promptsource",
                       "mtjax.data.templates", "mtjax.data.chat", "mtjax.data.vocabularies",
                       "mtjax.data.hf_vocab", "mtjax.data.rates", "mtjax.data.cache"],
    "Collections": ["mtjax.collections.hf_datasets", "mtjax.collections.hf_tasks",
                    "mtjax.collections.t0"],
    "Evaluation": ["mtjax.eval.metrics", "mtjax.eval.metrics_text", "mtjax.eval.metrics_rank"],
    "Training": ["mtjax.recipes.train", "mtjax.train.hooks", "mtjax.train.trackers"],
    "Models": ["mtjax.models.registry", "mtjax.models.hf", "mtjax.models.store"],
    "Parameter-efficient tuning and merging": ["mtjax.peft.prompts", "mtjax.peft.lora",
                                               "mtjax.merge.methods"],
    "Utilities": ["mtjax.errors", "mtjax.fs", "mtjax.progress"],
}


class UndocumentedKeys(ValueError):
  pass


# ------------------------------------------------------------------------------- config keys


@dataclasses.dataclass(frozen=True)
class Key:
  name: str  # dotted: train.steps
  gin: str  # TrainConfig.steps
  type: str
  default: str
  doc: str


def _field_comments(path: str = SCHEMA) -> dict[tuple[str, str], str]:
  """(class name, field name) -> its comment text (leading block + trailing, continuations)."""
  with open(path, encoding="utf-8") as f:
    source = f.read()
  comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      alone = not tok.line[:tok.start[1]].strip()
      comments[tok.start[0]] = (tok.string[1:], alone)
  docs = {}
  for node in ast.parse(source).body:
    if not isinstance(node, ast.ClassDef):
      continue
    for item in node.body:
      if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
        continue
      line = item.lineno
      leading, i = [], line - 1
      while i in comments and comments[i][1] and not comments[i][0].startswith("   "):
        leading.insert(0, comments[i][0].strip())
        i -= 1
      trailing = []
      if item.end_lineno in comments and not comments[item.end_lineno][1]:
        trailing.append(comments[item.end_lineno][0].strip())
        j = item.end_lineno + 1
        while j in comments and comments[j][1] and comments[j][0].startswith("   "):
          trailing.append(comments[j][0].strip())
          j += 1
      text = " ".join(leading + trailing).strip()
      if text:
        docs[(node.name, item.target.id)] = text
  return docs


def _default(field: dataclasses.Field) -> str:
  if field.default is not dataclasses.MISSING:
    value = field.default
  elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
    value = field.default_factory()  # type: ignore[misc]
  else:
    return "(required)"
  return repr(value)


def config_keys() -> list[Key]:
  """Every key of `RunConfig`, in declaration order; `UndocumentedKeys` names those without a
  comment."""
  from mtjax.config import schema

  docs = _field_comments()
  keys, missing = [], []
  for section in dataclasses.fields(schema.RunConfig):
    if section.default_factory is dataclasses.MISSING:  # a plain key (run_dir)
      fields, prefix, cls = [section], "", schema.RunConfig
    else:
      cls = section.default_factory
      fields, prefix = dataclasses.fields(cls), f"{section.name}."
    for f in fields:
      doc = docs.get((cls.__name__, f.name), "")
      if not doc:
        missing.append(f"{prefix}{f.name}")
      keys.append(Key(f"{prefix}{f.name}", f"{cls.__name__}.{f.name}", str(f.type),
                      _default(f), doc))
  if missing:
    raise UndocumentedKeys(
        f"config keys without documentation: {', '.join(missing)}: add a comment to the field "
        "in mtjax/config/schema.py (above it, or at the end of its line)")
  return keys


def _cell(text: str) -> str:
  """Text for a table cell: pipes escaped, and `<`, `>`, `&` outside code spans as entities (a
  placeholder like <dir> is text, not HTML)."""
  parts = text.replace("|", "\\|").replace("\n", " ").split("`")
  for i in range(0, len(parts), 2):
    parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
  return "`".join(parts)


def _code(text: str) -> str:
  """A Markdown code span of `text` (its backticks and table pipes kept)."""
  ticks = "``" if "`" in text else "`"
  pad = " " if "`" in text else ""
  return f"{ticks}{pad}{text}{pad}{ticks}".replace("|", "\\|")


def config_page() -> str:
  from mtjax.config import schema

  keys = config_keys()
  out = ["# Configuration keys", "",
         "Every key of `RunConfig` (`mtjax/config/schema.py`), generated from the code when the "
         "site is built. Set a key with `--set KEY=VALUE` after `--config=...`, or in gin as "
         "`Class.field = VALUE` (second column) after `--gin_file=...`; a misspelled key is an "
         "error that names it. Tuples are written `a,b` with `--set` and `('a', 'b')` in gin.",
         ""]
  sections = [("", "The run", None)] + [
      (f.name + ".", f"`{f.name}`", f.default_factory) for f in dataclasses.fields(
          schema.RunConfig) if f.default_factory is not dataclasses.MISSING]
  for prefix, title, cls in sections:
    rows = [k for k in keys if (k.name.startswith(prefix) if prefix else "." not in k.name)]
    out += [f"## {title}", ""]
    if cls is not None and cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
      out += [" ".join(cls.__doc__.split()), ""]
    out += ["| key | gin | type | default | what it does |", "|---|---|---|---|---|"]
    out += [f"| {_code(k.name)} | {_code(k.gin)} | {_code(k.type)} | {_code(k.default)} | "
            f"{_cell(k.doc)} |" for k in rows]
    out.append("")
  return "\n".join(out)


# ------------------------------------------------------------------------------------- CLI


class _Captured(Exception):
  def __init__(self, parser: argparse.ArgumentParser):
    super().__init__(parser.prog)
    self.parser = parser


@contextlib.contextmanager
def _intercepted() -> Iterator[None]:
  def capture(self, *args, **kwargs):
    raise _Captured(self)

  saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
  argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
  argparse.ArgumentParser.parse_known_args = capture  # type: ignore[method-assign]
  try:
    yield
  finally:
    argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = saved


def parsers() -> dict[str, argparse.ArgumentParser]:
  """Command name -> the parser its handler builds (`mtjax.cli`)."""
  from mtjax import cli

  found = {}
  with _intercepted():
    for name in cli.COMMANDS:
      try:
        cli._main([name])  # pylint: disable=protected-access
      except _Captured as e:
        found[name] = e.parser
      else:
        raise RuntimeError(f"mtjax {name} parsed no arguments: cannot document its flags")
  return found


def _flag_names(parser: argparse.ArgumentParser) -> set[str]:
  return {s for a in parser._actions for s in a.option_strings}  # pylint: disable=protected-access


def _action_row(action: argparse.Action) -> str | None:
  # pylint: disable=protected-access
  if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
    return None
  if action.option_strings:
    flag = ", ".join(action.option_strings)
    takes_value = action.nargs != 0
    if takes_value:
      metavar = action.metavar or (action.dest.upper() if not action.choices else
                                   "{" + ",".join(map(str, action.choices)) + "}")
      flag += f" {metavar if isinstance(metavar, str) else ' '.join(metavar)}"
  else:
    flag = action.metavar or action.dest
  default = action.default
  if (default is None or default is False or default == [] or default == ""
      or default == argparse.SUPPRESS):
    shown = ""
  else:
    shown = _code(repr(default) if not isinstance(default, str) else default)
  if action.required:
    shown = "required"
  help_text = (action.help or "") % {"default": action.default, "prog": ""} if action.help else ""
  if action.choices and "{" not in flag:
    help_text += f" (one of: {', '.join(map(str, action.choices))})"
  return f"| {_code(flag)} | {shown} | {_cell(help_text)} |"


def cli_page() -> str:
  from mtjax import cli

  out = ["# Command line", "",
         "Every `mtjax` command and its flags, generated from the commands' own argument parsers "
         "when the site is built (`mtjax <command> --help` prints the same).", "",
         "## Options of every command", "",
         "Accepted anywhere on the command line, before or after the command.", "",
         "| option | what it does |", "|---|---|"]
  out += [f"| {_code(flag)} | {_cell(text)} |" for flag, text in cli.GLOBAL_OPTIONS.items()]
  out.append("")
  for name, parser in parsers().items():
    out += [f"## mtjax {name}", "", _cell(cli.COMMANDS[name]) + ".", ""]
    if parser.description and parser.description != cli.COMMANDS[name]:
      out += [parser.description, ""]
    for group in parser._action_groups:  # pylint: disable=protected-access
      actions = group._group_actions  # pylint: disable=protected-access
      rows = [r for r in map(_action_row, actions) if r]
      if not rows:
        continue
      title = group.title if group.title not in ("options", "optional arguments") else "flags"
      out += [f"**{title}**" + (f": {group.description}" if group.description else ""), "",
              "| flag | default | what it does |", "|---|---|---|", *rows, ""]
    if parser.epilog:
      out += ["```text", parser.epilog.strip("\n"), "```", ""]
  return "\n".join(out)


# ------------------------------------------------------------------------------ API pages


def api_pages() -> dict[str, str]:
  """`reference/api/<module>.md` -> its page, and `reference/api/index.md`."""
  pages, index = {}, ["# Python API", "",
                      "The modules a user's code calls: task registration, metrics, hooks, "
                      "configs, models, merging. Generated from their docstrings when the site "
                      "is built.", ""]
  for group, modules in API_MODULES.items():
    index += [f"## {group}", ""]
    for module in modules:
      pages[f"reference/api/{module}.md"] = (
          f"# `{module}`\n\n::: {module}\n    options:\n      show_root_heading: false\n")
      index.append(f"- [`{module}`]({module}.md)")
    index.append("")
  pages["reference/api/index.md"] = "\n".join(index)
  return pages


def pages() -> dict[str, str]:
  return {"reference/cli.md": cli_page(), "reference/config.md": config_page(), **api_pages()}


# ------------------------------------------------------------------- commands in the docs


_FENCE = re.compile(r"^(```|~~~)")
# a command line: `mtjax ...`, maybe after `$ `, `!` (notebooks) or VAR=value assignments
_COMMAND = re.compile(r"^(?:\$\s+|!)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(mtjax\s+\S.*)$")


def command_lines(text: str) -> list[str]:
  """The `mtjax ...` command lines of a Markdown text's code blocks (continuations joined,
  comments dropped)."""
  lines, inside, pending = [], False, ""
  for raw in text.splitlines():
    if _FENCE.match(raw.strip()):
      inside, pending = not inside, ""
      continue
    if not inside:
      continue
    line = raw.split(" # ")[0].rstrip() if " # " in raw else raw.rstrip()
    line = (pending + " " + line.strip()) if pending else line.strip()
    if line.endswith("\\"):
      pending = line[:-1].strip()
      continue
    pending = ""
    match = _COMMAND.match(line)
    if match and not match.group(1).split()[1].endswith(":"):
      lines.append(match.group(1))
  return lines


def command_problems(text: str, where: str = "") -> list[str]:
  """What is wrong with the `mtjax` command lines of a Markdown text: an unknown command, a flag
  its parser does not take, a `--set` key RunConfig lacks."""
  from mtjax import cli

  known = parsers()
  globals_ = {flag.split("=")[0] for flag in cli.GLOBAL_OPTIONS}
  keys = {k.name for k in config_keys()}
  problems = []
  for line in command_lines(text):
    try:
      words = shlex.split(line.split(" | ")[0].split(" > ")[0].split(" && ")[0])
    except ValueError:
      problems.append(f"{where}: cannot split {line!r}")
      continue
    words = [w for w in words if not w.startswith("$(")]
    if len(words) < 2 or words[1] in ("-h", "--help", "help"):
      continue
    command, args = words[1], words[2:]
    if command not in known:
      problems.append(f"{where}: {line!r}: no command {command!r}")
      continue
    flags = _flag_names(known[command]) | globals_
    in_set = False
    for arg in args:
      if arg.startswith("--"):
        flag = arg.split("=")[0]
        in_set = flag == "--set"
        if flag.startswith("--gin."):
          continue
        if flag not in flags:
          problems.append(f"{where}: {line!r}: mtjax {command} takes no {flag}")
        if flag == "--set" and "=" in arg:
          arg, in_set = arg.split("=", 1)[1], True
        else:
          continue
      if in_set and "=" in arg and not arg.startswith(("[", "<", ".", "/")):
        key = arg.split("=")[0]
        if "." in key and re.fullmatch(r"[a-z_]+\.[a-z_0-9]+|run_dir", key) and key not in keys:
          problems.append(f"{where}: {line!r}: no config key {key!r}")
  return problems


# ------------------------------------------------------------------------ the mkdocs hook


def on_files(files, config):  # mkdocs hook: adds the generated pages
  from mkdocs.structure.files import File

  for path, content in pages().items():
    files.append(File.generated(config, path, content=content))
  return files
